"""The layout is the architecture: who may import whom, and how big a module or a folder may grow.

Read from the source (every import, also those inside functions, which would only hide a circle):
the import graph of the farm's own code has no circles; `worker/` (on every GPU node) imports
nothing of the control plane and `proposer/` nothing of either but the sandbox (`worker.sandbox`, a
leaf that imports only itself: everything that runs model-written code uses it); inside `cluster/` no module
imports a higher layer; no module is over 500 lines and no folder holds more than 10 modules.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cluster", "proposer", "worker")
SHARED = "worker.sandbox"  # the one part of the worker a proposer may use (the agent's runs are contained too)
MAX_LINES = 500
MAX_MODULES = 10

# the control plane's layers, lowest first: a module may import its own layer and those below
CLUSTER_LAYERS = (
    ("cluster.errors", "cluster.config", "cluster.records"),  # vocabulary
    ("cluster.store", "cluster.repo"),  # Redis and git
    ("cluster.loop",),  # the controller and its parts
    ("cluster.actors",),  # the loop, workers and proposer as Ray actors
    ("cluster.launch", "cluster.preflight", "cluster.report", "cluster.remote"),  # opening and running a run, looking at one
    ("cluster.cli", "cluster.head"),  # entry points
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports(path: Path, name: str) -> set[str]:
    """The farm's own modules that ``path`` (module ``name``) imports, anywhere in its body."""
    own = modules()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from cluster.loop import judge` imports the module judge; `from x import name`, x
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in own else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in own:  # `from cluster.loop import judge`: the module, else its package
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    return {name: imports(path, name) for name, path in modules().items()}


def layer(name: str) -> int | None:
    for i, members in enumerate(CLUSTER_LAYERS):
        if any(name == m or name.startswith(m + ".") for m in members):
            return i
    return None


def test_the_import_graph_has_no_circles():
    g = graph()
    # a package's __init__ re-exporting its modules is not a circle with them
    edges = {a: {b for b in bs if not (a.startswith(b + ".") and b in g)} for a, bs in g.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                circles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n)
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_lower_layers_import_no_higher_one():
    wrong = []
    for name, deps in graph().items():
        for dep in deps:
            top, dep_top = name.split(".")[0], dep.split(".")[0]
            if top == "worker" and dep_top != "worker":
                wrong.append(f"{name} -> {dep} (the worker imports only itself)")
            elif top == "proposer" and dep_top != "proposer" and not (dep == SHARED or dep.startswith(SHARED + ".")):
                wrong.append(f"{name} -> {dep} (proposers import only themselves and {SHARED})")
            elif (name == SHARED or name.startswith(SHARED + ".")) and not (dep == SHARED or dep.startswith(SHARED + ".")):
                wrong.append(f"{name} -> {dep} (the sandbox imports only itself: proposers import it)")
            elif top == "cluster" and dep_top == "cluster":
                mine, theirs = layer(name), layer(dep)
                if name != "cluster" and (mine is None or theirs is None):
                    wrong.append(f"{name} -> {dep}: a module in no layer of CLUSTER_LAYERS")
                elif name != "cluster" and theirs > mine:
                    wrong.append(f"{name} (layer {mine}) -> {dep} (layer {theirs})")
    assert not wrong, "\n".join(sorted(wrong))


@pytest.mark.parametrize("pkg", PACKAGES)
def test_no_module_over_the_limit_and_no_crowded_folder(pkg):
    big = {str(p.relative_to(ROOT)): n for p in (ROOT / pkg).rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"
    for folder in [ROOT / pkg, *[d for d in (ROOT / pkg).rglob("*") if d.is_dir() and d.name != "__pycache__"]]:
        n = len([p for p in folder.glob("*.py") if p.name != "__init__.py"])
        assert n <= MAX_MODULES, f"{folder.relative_to(ROOT)} holds {n} modules side by side"


def test_the_checker_sees_a_circle_and_a_wrong_way_import(tmp_path, monkeypatch):
    """The checks above can fail: a planted circle and a worker importing the control plane."""
    for rel, text in {"worker/__init__.py": "", "worker/a.py": "from cluster.records import State\n",
                      "cluster/__init__.py": "", "cluster/records.py": "import cluster.loop.x\n",
                      "cluster/loop/__init__.py": "", "cluster/loop/x.py": "from cluster import records\n",
                      "proposer/__init__.py": ""}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    with pytest.raises(AssertionError, match="cluster.loop.x -> cluster.records -> cluster.loop.x"):
        test_the_import_graph_has_no_circles()
    with pytest.raises(AssertionError) as e:
        test_lower_layers_import_no_higher_one()
    assert "worker.a -> cluster.records" in str(e.value) and "cluster.records (layer 0) -> cluster.loop.x" in str(e.value)
