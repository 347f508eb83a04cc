"""The wings of `pipeline/` import only downward, and nothing imports in a circle.

    core      config, tasks, data, evaluation, metrics, backbones, resolve, ...   imports no other wing
    tracking  MLflow, the only place that talks to it                           core
    worker    the Ray Train worker: recipe, setup, engine, checkpoints          core, tracking
    serving   the registered model: registry, pyfunc, serving config            core, tracking
    driver    checks before Ray, launching fits and sweeps                      core, tracking, worker, serving
    cli       what the jobs share                                               anything

Imports are read from the source (top-level and inside functions alike), so a lazy import cannot hide an edge.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

pytestmark = pytest.mark.house

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = {
    "core": {"core"},
    "tracking": {"core", "tracking"},
    "worker": {"core", "tracking", "worker"},
    "serving": {"core", "tracking", "serving"},
    "driver": {"core", "tracking", "worker", "serving", "driver"},
    "cli": {"core", "tracking", "worker", "serving", "driver", "cli"},
}


def modules() -> dict[str, Path]:
    found = {}
    for package in ("pipeline", "adept"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports (relative imports resolved; `from pkg import mod` counts as pkg.mod)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # a name inside a module: the module
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def wing(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "pipeline" or len(parts) == 1:
        return None
    return "cli" if parts[1] == "cli" else parts[1]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def test_every_module_of_pipeline_imports():
    for name in modules():
        if name.startswith("pipeline") and not name.endswith("__main__"):
            importlib.import_module(name)


def test_every_pipeline_module_lives_in_a_wing():
    loose = [n for n in modules() if n.startswith("pipeline.") and wing(n) not in ALLOWED]
    assert not loose, f"modules outside the wings {sorted(ALLOWED)}: {loose}"


def test_wings_import_only_downward(graph):
    upward = [f"{a} -> {b}" for a, targets in graph.items() for b in targets
              if wing(a) and wing(b) and wing(b) not in ALLOWED[wing(a)]]
    assert not upward, "imports against the layering:\n" + "\n".join(sorted(upward))


def test_adept_imports_nothing_of_the_pipeline(graph):
    assert not [f"{a} -> {b}" for a, targets in graph.items() if a.startswith("adept")
                for b in targets if b.startswith("pipeline")]


def test_no_import_cycles(graph):
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            # a package's __init__ importing its own submodules is how packages re-export, not a cycle
            if target.startswith(node + "."):
                continue
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, [*path, target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The checker itself: a core module importing the driver, inside a function, is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from pipeline.driver.launch import prepare\n    return prepare\n")
    targets = imports_of("pipeline.core.bad", bad, {"pipeline.driver.launch", "pipeline.core.bad"})
    assert targets == {"pipeline.driver.launch"} and wing("pipeline.driver.launch") not in ALLOWED["core"]
