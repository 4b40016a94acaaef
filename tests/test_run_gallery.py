"""The results gallery: HTML reports and an index whose every link and image resolves."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import matplotlib
import nbformat
import pytest
from nbclient import NotebookClient

from tda_utils.analysis.records import RunResults
from tda_utils.run import gallery
from tda_utils.run import reproduce

matplotlib.use("Agg")


class _Refs(HTMLParser):
    """Collects every href/src and every element id of a page."""

    def __init__(self):
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        for key in ("href", "src"):
            if a.get(key) is not None:
                self.links.append((tag, a[key]))


def _refs(page: Path) -> _Refs:
    p = _Refs()
    p.feed(page.read_text(encoding="utf-8"))
    return p


def _broken(page: Path) -> list[str]:
    """Relative links and images of ``page`` that do not resolve (anchors must exist in it)."""
    refs = _refs(page)
    bad = []
    for tag, url in refs.links:
        parsed = urlparse(url)
        if parsed.scheme in ("http", "https", "data", "mailto"):
            continue
        if parsed.scheme or url.startswith("/"):
            bad.append(f"{tag}: {url} (not relative)")
        elif not parsed.path:
            if parsed.fragment and parsed.fragment not in refs.ids:
                bad.append(f"{tag}: {url} (no such anchor)")
        elif not (page.parent / unquote(parsed.path)).exists():
            bad.append(f"{tag}: {url} (missing)")
    return bad


@pytest.fixture(scope="module")
def fake_profile(tmp_path_factory):
    """A tiny reports/ + figures/ + results/ tree: one executed notebook with a figure, one
    failed run, a multi-panel PNG + PDF, a panel PNG, summary.csv and reproduced.csv."""
    import matplotlib.pyplot as plt

    root = tmp_path_factory.mktemp("repo")
    reports, figures, results = (
        root / "reports" / "fake",
        root / "figures" / "fake",
        root / "results",
    )
    for d in (reports, figures, results):
        d.mkdir(parents=True)
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell(
                "# A tiny report\n\nWith a [section link](#A-tiny-report)."
            ),
            nbformat.v4.new_code_cell(
                "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
                "plt.plot([1, 2, 3]); plt.show()\nprint('hello from the report')"
            ),
        ]
    )
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    nbformat.write(nb, reports / "01_fake__tiny.ipynb")
    nbformat.write(nbformat.v4.new_notebook(), reports / "02_fake__broken.ipynb")
    for name in ("fig2_all_datasets", "fig10_all_datasets", "fig2_cos_sim_epochs_sgd_tiny"):
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [1, 0])
        fig.savefig(figures / f"{name}.png")
        if name != "fig10_all_datasets":
            fig.savefig(figures / f"{name}.pdf")
        plt.close(fig)
    (figures / "summary.csv").write_text(
        "run,method,first,best\n01_fake__tiny,Grad-Dot,0.91234,0.95\n"
    )
    (results / "reproduced.csv").write_text("claim,reproduced\nGrad-Dot first,yes\n")
    RunResults(
        notebook="01_fake", dataset="tiny", profile="fake", time_unit="epoch", times={},
        agreement={}, seeds={}, sorted_scores={}, wall_time={}, final_eval={},
        final_model="final model: shipped, trained on a test CPU (cpu, torch 2.14.1)",
    ).save(results)
    rows = [
        {"run": "01_fake__tiny", "status": "ok", "wall_s": 12.5, "detail": ""},
        {
            "run": "02_fake__broken",
            "status": "FAILED",
            "wall_s": 3.0,
            "detail": "cell 4: ValueError: boom",
        },
        {
            "run": "03_fake__skipped",
            "status": "skipped",
            "wall_s": 0.0,
            "detail": "no data at data_path='x'",
        },
    ]
    prov = {
        "python": "3.11.0",
        "versions": {"torch": "2.14.1"},
        "git_commit": "abc123",
        "device": "cpu: test",
        "torch_threads": 2,
        "cpu_count": 2,
        "platform": "test",
        "time": "2026-01-01T00:00:00+00:00",
    }
    index = gallery.build_gallery(
        "fake",
        rows,
        root=root,
        reports_dir=reports,
        figures_dir=figures,
        results_dir=results,
        prov=prov,
    )
    return index, reports, figures


def test_every_link_and_image_resolves(fake_profile):
    index, reports, _ = fake_profile
    assert index == reports / "index.html"
    refs = _refs(index)
    images = {Path(u).name for t, u in refs.links if t == "img"}
    assert images == {
        "fig2_all_datasets.png",
        "fig10_all_datasets.png",
        "fig2_cos_sim_epochs_sgd_tiny.png",
    }
    hrefs = {Path(urlparse(u).path).name for t, u in refs.links if t == "a" and urlparse(u).path}
    assert {
        "01_fake__tiny.html",
        "01_fake__tiny.ipynb",
        "fig2_all_datasets.pdf",
        "summary.csv",
        "reproduced.csv",
    } <= hrefs
    assert "fig10_all_datasets.pdf" not in hrefs  # no PDF, no link
    assert _broken(index) == []
    assert _broken(reports / "01_fake__tiny.html") == []


def test_index_shows_status_runtime_provenance_and_tables(fake_profile):
    index, reports, _ = fake_profile
    text = index.read_text()
    for needle in (
        "FAILED",
        "cell 4: ValueError: boom",
        "skipped",
        "12.5 s",
        "abc123",
        "cpu: test",
        "2 of 2",
        "2.14.1",
        "Grad-Dot",
        "0.912",
        "Reproduced?",
        "Grad-Dot first",
        "<td>shipped, trained on a test CPU (cpu, torch 2.14.1)</td>",
    ):
        assert needle in text, needle
    # multi-panel figures in figure order (fig2 before fig10), above the summary
    assert (
        text.index("fig2_all_datasets.png")
        < text.index("fig10_all_datasets.png")
        < text.index('id="summary"')
    )
    report = (reports / "01_fake__tiny.html").read_text()
    assert "hello from the report" in report and "data:image/png;base64" in report
    recorded = json.loads((reports / "runs.json").read_text())
    assert [r["run"] for r in recorded] == ["01_fake__tiny", "02_fake__broken", "03_fake__skipped"]
    assert all(r["provenance"]["git_commit"] == "abc123" for r in recorded)


def test_rerun_of_one_run_keeps_the_others(fake_profile, tmp_path):
    index, reports, figures = fake_profile
    gallery.build_gallery(
        "fake",
        [{"run": "02_fake__broken", "status": "ok", "wall_s": 1.0, "detail": ""}],
        root=tmp_path,
        reports_dir=reports,
        figures_dir=figures,
        results_dir=tmp_path,
        prov={"git_commit": "def456"},
    )
    recorded = {r["run"]: r for r in json.loads((reports / "runs.json").read_text())}
    assert recorded["02_fake__broken"]["status"] == "ok"
    assert recorded["02_fake__broken"]["provenance"]["git_commit"] == "def456"
    assert recorded["01_fake__tiny"]["provenance"]["git_commit"] == "abc123"
    assert "boom" not in index.read_text()


def test_provenance_names_versions_commit_device_threads():
    p = gallery.provenance()
    assert p["versions"]["torch"].startswith("2.14.1")
    assert p["git_commit"] != "" and p["device"].split(":")[0] in ("cpu", "cuda")
    assert isinstance(p["torch_threads"], int) and p["torch_threads"] >= 1


def test_broken_link_checker_can_fail(tmp_path):
    page = tmp_path / "p.html"
    page.write_text(
        '<a href="missing.html">x</a><img src="/abs.png"><a href="#nowhere">y</a>'
        '<a href="https://arxiv.org/abs/2412.03906">ok</a>'
    )
    assert len(_broken(page)) == 3


def test_runner_builds_the_gallery(monkeypatch, tmp_path, capsys):
    """``python -m tda_utils.reproduce`` ends by building the gallery and printing its path."""
    calls = {}
    monkeypatch.setattr(
        reproduce,
        "run",
        lambda runs, profile, **kw: [
            {"run": "x", "status": "ok", "wall_s": 0.0, "report": "x", "detail": ""}
        ],
    )
    monkeypatch.setattr(
        reproduce,
        "build_gallery",
        lambda profile, rows: calls.setdefault("index", tmp_path / profile / "index.html"),
    )
    assert reproduce.main(["--profile", "smoke", "--only", "05_paper_figures"]) == 0
    assert f"gallery (open in a browser): {calls['index']}" in capsys.readouterr().out
