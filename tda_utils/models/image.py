"""Image models: ``cnn`` (small, CPU-sized, for 28x28 MNIST-like data) and ``resnet9`` (CIFAR-10).

Public: ``cnn``, ``resnet9`` (registered in ``models.MODELS``), ``SmallCNN``, ``ResNet9``.

Both take inputs (n, C, H, W) and return logits (n, n_classes); C comes from the data and
n_classes from ``splits.n_outputs``. Neither uses BatchNorm (optional GroupNorm only), so the
output of one sample does not depend on the rest of its batch: per-sample gradients
(``grads.per_sample_grads``) and the vectorized further-training engine
(``vmap(functional_call(model, params, inputs))`` over stacked parameters) are exact, and the
model has no buffers. Layers are created in the order they are applied, after the
``torch.manual_seed(seed)`` of ``build_model``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..config import check_positive
from ..data.registry import Splits
from .registry import register_model


def _input_shape(splits: Splits) -> tuple[int, int, int]:
    """(C, H, W) of the training inputs; ValueError unless they are (n, C, H, W) images."""
    x = splits.train.tensors[0]
    if x.ndim != 4:
        raise ValueError(
            f"image models need inputs of shape (n, C, H, W); dataset {splits.name!r} "
            f"has inputs of shape {tuple(x.shape)}"
        )
    return int(x.shape[1]), int(x.shape[2]), int(x.shape[3])


def _conv_stage(c_in: int, c_out: int, kernel_size: int, norm: str, groups: int) -> list[nn.Module]:
    """conv(c_in -> c_out, k) [- GroupNorm] - ReLU - maxpool 2 (no placeholder modules)."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel_size)]
    if norm == "group":
        layers.append(nn.GroupNorm(min(groups, c_out), c_out))
    return layers + [nn.ReLU(), nn.MaxPool2d(2)]


def _check_norm(norm: str) -> None:
    if norm not in ("none", "group"):
        raise ValueError(
            f"norm={norm!r} is not valid; allowed values: 'none', 'group' "
            "(BatchNorm is excluded: it couples the samples of a batch)"
        )


class SmallCNN(nn.Module):
    """conv(C->c1, k) - [GN] - ReLU - maxpool 2 - conv(c1->c2, k) - [GN] - ReLU - maxpool 2 -
    flatten - linear(-> hidden) - ReLU - linear(hidden -> n_classes).

    Input (n, C, H, W), output (n, n_classes). Default on 28x28: 1->8->16 channels, 5x5
    kernels, 16*4*4 = 256 features, hidden 64: 20,522 parameters.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        n_classes: int,
        channels: Sequence[int] = (8, 16),
        kernel_size: int = 5,
        hidden: int = 64,
        norm: str = "none",
        groups: int = 4,
    ):
        super().__init__()
        c, h, w = in_shape
        c1, c2 = channels
        self.features = nn.Sequential(
            *_conv_stage(c, c1, kernel_size, norm, groups),
            *_conv_stage(c1, c2, kernel_size, norm, groups),
            nn.Flatten(),
        )
        for _ in range(2):
            h, w = (h - kernel_size + 1) // 2, (w - kernel_size + 1) // 2
        if h < 1 or w < 1:
            raise ValueError(
                f"inputs of size {in_shape[1]}x{in_shape[2]} are too small for "
                f"kernel_size={kernel_size} (two conv + 2x2 pool stages)"
            )
        self.classifier = nn.Sequential(
            nn.Linear(c2 * h * w, hidden), nn.ReLU(), nn.Linear(hidden, n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(n, n_classes)`` of images ``x`` of shape ``(n, C, H, W)``."""
        return self.classifier(self.features(x))


@register_model("cnn")
def cnn(
    splits: Splits,
    channels: Sequence[int] = (8, 16),
    kernel_size: int = 5,
    hidden: int = 64,
    norm: str = "none",
    groups: int = 4,
) -> nn.Module:
    """A small CNN (``SmallCNN``) for (n, C, 28, 28) inputs (other sizes work too).

    ``channels``: the two conv widths; ``norm``: "none" (default) or "group" (GroupNorm with
    ``groups`` groups after each conv). Default: 20,522 parameters on MNIST.
    """
    channels = tuple(channels)
    if len(channels) != 2:
        raise ValueError(f"channels={channels!r} must have two entries (conv1 and conv2 widths)")
    for name, v in (
        ("channels[0]", channels[0]),
        ("channels[1]", channels[1]),
        ("kernel_size", kernel_size),
        ("hidden", hidden),
        ("groups", groups),
    ):
        check_positive(name, v, integer=True)
    _check_norm(norm)
    return SmallCNN(
        _input_shape(splits), splits.n_outputs, channels, kernel_size, hidden, norm, groups
    )


class _ConvBlock(nn.Sequential):
    """conv 3x3 (padding 1, no bias) - GroupNorm - ReLU [- maxpool 2]: (n, c_in, H, W) ->
    (n, c_out, H', W').
    """

    def __init__(self, c_in: int, c_out: int, groups: int, pool: bool = False):
        layers = [
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.GroupNorm(min(groups, c_out), c_out),
            nn.ReLU(),
        ]
        if pool:
            layers.append(nn.MaxPool2d(2))
        super().__init__(*layers)


class _Residual(nn.Module):
    """x + block(x) with block = two ``_ConvBlock`` of constant width."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.block = nn.Sequential(
            _ConvBlock(channels, channels, groups), _ConvBlock(channels, channels, groups)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResNet9(nn.Module):
    """The ResNet-9 of the DAWNBench CIFAR-10 entries, with GroupNorm in place of BatchNorm.

    prep conv(C->w) - layer1 conv(w->2w) + pool + residual(2w) - layer2 conv(2w->4w) + pool -
    layer3 conv(4w->8w) + pool + residual(8w) - global max pool - linear(8w -> n_classes), logits
    multiplied by ``logit_scale``. Input (n, C, H, W) (H, W >= 8), output (n, n_classes).
    Width w = 64: 6,573,130 parameters for CIFAR-10.
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        width: int = 64,
        groups: int = 32,
        logit_scale: float = 0.125,
    ):
        super().__init__()
        w = width
        self.prep = _ConvBlock(in_channels, w, groups)
        self.layer1 = nn.Sequential(
            _ConvBlock(w, 2 * w, groups, pool=True), _Residual(2 * w, groups)
        )
        self.layer2 = _ConvBlock(2 * w, 4 * w, groups, pool=True)
        self.layer3 = nn.Sequential(
            _ConvBlock(4 * w, 8 * w, groups, pool=True), _Residual(8 * w, groups)
        )
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(8 * w, n_classes)
        self.logit_scale = float(logit_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(n, n_classes)`` (times ``logit_scale``) of images ``x`` ``(n, C, H, W)``."""
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return self.linear(self.flatten(self.pool(x))) * self.logit_scale


@register_model("resnet9")
def resnet9(
    splits: Splits, width: int = 64, groups: int = 32, logit_scale: float = 0.125
) -> nn.Module:
    """ResNet-9 with GroupNorm (``ResNet9``) for (n, C, 32, 32) CIFAR-10 inputs (paper profile).

    ``width``: channels of the first conv (doubling per stage); ``groups``: GroupNorm groups
    (capped at the channel count); ``logit_scale``: constant factor on the logits.
    """
    check_positive("width", width, integer=True)
    check_positive("groups", groups, integer=True)
    check_positive("logit_scale", logit_scale)
    c, h, w = _input_shape(splits)
    if h < 8 or w < 8:
        raise ValueError(f"resnet9 needs inputs of at least 8x8 (three 2x2 pools); got {h}x{w}")
    return ResNet9(c, splits.n_outputs, width, groups, logit_scale)
