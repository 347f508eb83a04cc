"""One owner per framework: only `pipeline/tracking/` talks to MLflow (issue 18).

Every .py file under pipeline/, jobs/ and benchmarks/ is parsed (not imported) and searched for an import of
mlflow - `import mlflow...`, `from mlflow... import ...`, `importlib.import_module("mlflow...")` or
`__import__("mlflow...")` - at any depth: module level, inside functions, under `if TYPE_CHECKING`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.house

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("pipeline", "jobs", "benchmarks")
OWNER = ROOT / "pipeline" / "tracking"


def _is_mlflow(module: str | None) -> bool:
    return module is not None and (module == "mlflow" or module.startswith("mlflow."))


def mlflow_imports(source: str, name: str) -> list[str]:
    """`name:line: module` for each import of mlflow in the source text."""
    found = []
    for node in ast.walk(ast.parse(source, filename=name)):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names if _is_mlflow(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _is_mlflow(node.module):
            modules = [node.module]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str) \
                    and _is_mlflow(node.args[0].value):
                modules = [node.args[0].value]
        found += [f"{name}:{node.lineno}: {module}" for module in modules]
    return found


def scanned_files() -> list[Path]:
    return sorted(p for folder in SCANNED for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def test_only_tracking_imports_mlflow():
    files = scanned_files()
    assert any(p.is_relative_to(OWNER) for p in files) and len(files) > 20  # the scan sees the tree
    offenders = [hit for p in files if not p.is_relative_to(OWNER)
                 for hit in mlflow_imports(p.read_text(), str(p.relative_to(ROOT)))]
    assert not offenders, ("MLflow is pipeline/tracking's alone; call a function of pipeline.tracking instead "
                           "(see pipeline/tracking/models.py):\n  " + "\n  ".join(offenders))


def test_the_scan_finds_every_form():
    source = ("import os, mlflow.pyfunc\nfrom mlflow import MlflowClient\nfrom .mlflow import x\n"
              "def f():\n    from mlflow.models import Model\n    import importlib\n"
              "    importlib.import_module('mlflow.artifacts')\n    __import__('mlflow')\n    import mlflowx\n")
    hits = mlflow_imports(source, "sample.py")
    assert sorted(hits) == ["sample.py:1: mlflow.pyfunc", "sample.py:2: mlflow", "sample.py:5: mlflow.models",
                            "sample.py:7: mlflow.artifacts", "sample.py:8: mlflow"]


def test_tracking_imports_without_mlflow_until_a_model_needs_it():
    """`import pipeline.tracking` stays light (jobs' --help, workers); PythonModel is MLflow's own class."""
    code = ("import sys, pipeline.tracking as t\nassert 'mlflow' not in sys.modules, 'mlflow imported eagerly'\n"
            "import mlflow.pyfunc\nassert t.PythonModel is mlflow.pyfunc.PythonModel\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
