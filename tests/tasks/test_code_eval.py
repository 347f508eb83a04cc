"""Opt-in MBPP execution: refuses by default; separate process, timeout, temp dir, no network."""

import pytest

from pipeline.code_eval import SandboxUnavailable, isolation_available, mbpp_pass_at_1, run_python
from pipeline.tasks import get_task


def test_refuses_without_explicit_opt_in():
    with pytest.raises(PermissionError, match="allow_code_execution=True"):
        mbpp_pass_at_1(["def f(): return 1"], [["assert f() == 1"]])
    assert get_task("mbpp").metrics == ("exact_match",)  # execution is not a default metric


def test_pass_at_1_counts_programs_whose_asserts_pass():
    preds = ["def add(a, b):\n    return a + b", "def add(a, b):\n    return a - b", "def add(a, b):\n    while True: pass"]
    tests = [["assert add(1, 2) == 3"]] * 3
    isolate = isolation_available()
    # generous limit: a loaded CI machine must not time out the correct program; the infinite loop still does
    assert mbpp_pass_at_1(preds, tests, allow_code_execution=True, timeout_s=8, isolate=isolate) == pytest.approx(100 / 3)


def test_runs_in_a_temp_dir_with_a_scrubbed_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "x")
    program = "import os, sys\nassert 'SECRET_TOKEN' not in os.environ\nassert os.getcwd().split('/')[-1].startswith('adept-exec-')\n"
    assert run_python(program, isolate=False).passed
    result = run_python("import time\ntime.sleep(30)", timeout_s=1, isolate=False)
    assert (result.passed, result.timed_out) == (False, True)


def test_network_namespace_blocks_connections():
    if not isolation_available():
        with pytest.raises(SandboxUnavailable, match="isolate=False"):
            run_python("pass", isolate=True)
        return
    # even loopback is unreachable inside the new namespace (outside, this port would refuse instead)
    result = run_python("import socket\nsocket.create_connection(('127.0.0.1', 9), 2)", isolate=True)
    assert not result.passed and "Network is unreachable" in result.stderr_tail
