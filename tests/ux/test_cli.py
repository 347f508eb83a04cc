"""Every job answers --help without importing torch, Ray or MLflow, and takes --quiet / --log-level."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ux
ROOT = Path(__file__).resolve().parents[2]
JOBS = ["train_adept", "tune_adept", "register_best", "predict"]
HEAVY = ("torch", "ray", "mlflow", "transformers", "datasets", "deepspeed", "pandas")


@pytest.mark.parametrize("job", JOBS)
def test_help_imports_nothing_heavy(job):
    probe = (f"import runpy, sys\nsys.argv = ['jobs/{job}.py', '--help']\n"
             f"try:\n    runpy.run_path('jobs/{job}.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             f"print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert "--log-level" in proc.stdout and "--quiet" in proc.stdout
    assert "LOADED []" in proc.stderr, proc.stderr[-2000:]


def test_log_levels_reach_the_project_logger_and_workers(monkeypatch):
    import logging

    from pipeline.core import logs

    monkeypatch.delenv(logs.LEVEL_ENV, raising=False)
    logs.configure("warning")
    assert logging.getLogger("adept").getEffectiveLevel() == logging.WARNING
    import os

    assert os.environ[logs.LEVEL_ENV] == "warning"  # ADEPT_* variables follow the job to its Ray workers
    assert logging.getLogger("transformers").getEffectiveLevel() == logging.ERROR
    logs.configure("debug")
    assert logging.getLogger("adept").getEffectiveLevel() == logging.DEBUG


def test_quiet_means_warning():
    import argparse

    from pipeline.core import logs

    parser = argparse.ArgumentParser()
    logs.add_arguments(parser)
    assert logs.level_from_args(parser.parse_args(["--quiet"])) == "warning"
    assert logs.level_from_args(parser.parse_args(["--log-level", "error"])) == "error"
    assert logs.level_from_args(parser.parse_args([])) == "info"


def test_each_warning_once_and_resource_warnings_hidden(monkeypatch):
    """'once' for the job's warnings must not switch on what Python hides by default (ResourceWarning: a
    library's unclosed file or still-running subprocess, seen 5 times in a sweep's output)."""
    import warnings

    from pipeline.core import logs

    monkeypatch.delenv(logs.LEVEL_ENV, raising=False)
    with warnings.catch_warnings(record=True) as seen:
        logs.configure("info")
        for _ in range(3):
            warnings.warn("unclosed file <_io.TextIOWrapper>", ResourceWarning, stacklevel=1)
            warnings.warn("the job's own warning", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["the job's own warning"]
