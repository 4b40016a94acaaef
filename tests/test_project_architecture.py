"""The house rules of ARCHITECTURE.md, checked on the source: each folder imports only the folders
below it (no import circles), no module over 500 lines, at most 8 modules at the top, and every
folder's ``__init__.py`` opens with a docstring that says what it may import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tda_utils as tu

PKG = Path(tu.__file__).resolve().parent
CORE = {"config", "devices", "cache"}
#: folder -> the folders (and core) it may import; the order is the data flow
ALLOWED = {
    "core": set(),
    "data": set(),
    "models": {"data"},
    "linalg": {"data", "models"},
    "final": {"data", "models", "linalg"},
    "gold": {"data", "models", "linalg", "final"},
    "methods": {"data", "models", "linalg", "final"},
    "analysis": {"data", "models", "linalg", "final", "gold", "methods"},
    "figures": {"data", "models", "linalg", "final", "gold", "methods", "analysis"},
    "bench": {"data", "models", "linalg", "final", "gold", "methods", "analysis", "figures", "run"},
    "run": {"data", "models", "linalg", "final", "gold", "methods", "analysis", "figures"},
}
ENTRY_POINTS = {"__init__", "reproduce", "gallery"}  # the package's face: may import anything


def _modules() -> dict[str, Path]:
    return {
        ".".join(p.relative_to(PKG).with_suffix("").parts): p
        for p in PKG.rglob("*.py")
        if "__pycache__" not in p.parts
    }


def _room(module: str) -> str:
    head = module.split(".")[0]
    return "core" if head in CORE else head


def _imports(module: str, path: Path) -> set[str]:
    """Every tda_utils module ``module`` imports (relative or absolute, at any depth)."""
    is_pkg = path.name == "__init__.py"
    parts = module.split(".")
    if is_pkg:
        parts = parts[:-1]  # "data.__init__" -> package "data"
    package = parts if is_pkg else parts[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "tda_utils":
                target = node.module.split(".")[1:]
            else:
                continue
            out.add(".".join(target))
            if not node.module or node.level:  # "from . import x": x may be a module
                out.update(".".join(target + [a.name]) for a in node.names)
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("tda_utils.")]
            out.update(".".join(n.split(".")[1:]) for n in names)
    return {t for t in out if t}


def test_folders_import_only_the_folders_below_them():
    problems = []
    for module, path in _modules().items():
        if module.split(".")[0] in ENTRY_POINTS and "." not in module:
            continue
        room = _room(module)
        assert room in ALLOWED, f"{module}: folder {room!r} is not in ARCHITECTURE.md's rule"
        for target in _imports(module, path):
            other = _room(target)
            if other in (room, "core") or other in ALLOWED[room]:
                continue
            problems.append(f"{module} imports {target} ({room}/ may not import {other}/)")
    assert not problems, "\n".join(sorted(problems))


def test_no_import_circles_between_modules():
    modules = _modules()
    names = {m.removesuffix(".__init__") for m in modules}
    graph = {}
    for module, path in modules.items():
        key = module.removesuffix(".__init__")
        graph[key] = {t for t in _imports(module, path) if t in names and t != key}
    # a package importing its own submodules (re-exports) is not a circle
    for key in graph:
        graph[key] = {t for t in graph[key] if not t.startswith(key + ".")}
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, set())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_over_500_lines_and_at_most_8_at_the_top():
    long = {m: n for m, p in _modules().items() if (n := len(p.read_text().splitlines())) > 500}
    assert not long, f"modules over 500 lines: {long}"
    top = sorted(p.name for p in PKG.glob("*.py"))
    assert len(top) <= 8, f"{len(top)} modules directly in tda_utils/: {top}"


@pytest.mark.parametrize("folder", sorted(set(ALLOWED) - {"core"}))
def test_every_folder_says_what_it_is_for_and_what_it_may_import(folder):
    init = PKG / folder / "__init__.py"
    if folder == "bench" and not init.exists():
        pytest.skip("no bench/ folder")
    doc = ast.get_docstring(ast.parse(init.read_text()))
    assert doc and len(doc.splitlines()[0]) > 20, f"{folder}/__init__.py has no opening docstring"
    assert "import" in doc, f"{folder}/__init__.py does not say what it may import"


def test_the_checker_sees_a_forbidden_import(tmp_path, monkeypatch):
    """The rule test can fail: a data/ module importing gold/ is reported."""
    fake = tmp_path / "data" / "bad.py"
    fake.parent.mkdir()
    fake.write_text("from ..gold import further_train\n")
    assert "gold" in _imports("data.bad", fake)
    assert "gold" not in ALLOWED["data"]


@pytest.mark.parametrize(
    "old, new",
    [
        ("further_training", "gold.further_training"),
        ("grads", "linalg.grads"),
        ("pipeline", "analysis.pipeline"),
        ("paper", "figures.paper"),
        ("training", "final.training"),
        ("costing", "run.costing"),
    ],
)
def test_old_module_paths_still_import(old, new):
    import importlib

    module = importlib.import_module(f"tda_utils.{new}")
    assert importlib.import_module(f"tda_utils.{old}") is module
    assert getattr(tu, old) is module
