"""Opt-in MBPP execution: refuses by default; a namespace sandbox (PID, network, unprivileged user),
limits on time, memory, file size and processes, a temp dir and a scrubbed environment."""

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pipeline.core import code_eval
from pipeline.core.code_eval import SandboxUnavailable, isolation_available, mbpp_pass_at_1, run_python
from pipeline.core.tasks import get_task

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def sandbox():
    """The namespace sandbox must work here (it does on Linux as root or with unprivileged user namespaces).

    A contributor on a platform without namespaces (a default Docker container) may set
    ADEPT_ALLOW_NO_SANDBOX=1 to skip these tests knowingly; CI never sets it.
    """
    try:
        code_eval._sandbox(None)
    except SandboxUnavailable as e:
        if os.environ.get("ADEPT_ALLOW_NO_SANDBOX") == "1":
            pytest.skip(f"no namespace sandbox here (ADEPT_ALLOW_NO_SANDBOX=1): {e}")
        pytest.fail(f"{e} (set ADEPT_ALLOW_NO_SANDBOX=1 to skip the sandbox tests on such a platform)")


def _marker() -> str:
    return "adept" + secrets.token_hex(5)  # 15 chars: a whole process name (/proc/PID/comm)


def _alive(marker: str) -> list[int]:
    """Host pids of processes named ``marker`` (the test runs outside the sandbox and sees them all)."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and Path(f"/proc/{pid}/comm").read_text().strip() == marker:
                found.append(int(pid))
        except OSError:
            continue
    return found


def test_refuses_without_explicit_opt_in():
    with pytest.raises(PermissionError, match="allow_code_execution=True"):
        mbpp_pass_at_1(["def f(): return 1"], [["assert f() == 1"]])
    assert get_task("mbpp").metrics == ("exact_match",)  # execution is not a default metric


def test_mbpp_pass_at_1_through_the_task_and_evaluation(sandbox):
    """execute_code's path: Task.with_code_execution -> evaluation.score -> the asserts of each source run."""
    import datasets

    from pipeline.core.errors import UserError
    from pipeline.core.evaluation import score

    rows = [  # raw MBPP rows; the second test has "assert" inside a string: still one statement
        {"text": "Add two values.", "code": "def add(a, b):\n    return a + b",
         "test_list": ["assert add(1, 2) == 3", "assert add('x assert ', 'y') == 'x assert y'"]},
        {"text": "Square a number.", "code": "def sq(n):\n    return n * n", "test_list": ["assert sq(3) == 9"]},
        {"text": "Negate a number.", "code": "def neg(n):\n    return -n", "test_list": ["assert neg(2) == -2"]},
    ]
    predictions = ["def add(x, y):\n    return x + y",  # passes, not the gold text
                   "def sq(n):\n    return n * n",  # the gold text
                   "def neg(n):\n    return n"]  # fails its assert
    task = get_task("mbpp")
    split = datasets.Dataset.from_list([r for row in rows for r in task.format_row(row)])
    assert [task.code_tests(s) for s in split["source"]] == [row["test_list"] for row in rows]
    assert score(task, split, predictions).metrics == pytest.approx({"exact_match": 100 / 3})  # nothing ran

    executing = task.with_code_execution()
    assert executing.metrics == ("exact_match", "pass_at_1") and executing.primary_metric == "exact_match"
    result = score(executing, split, predictions)
    assert result.metrics == pytest.approx({"exact_match": 100 / 3, "pass_at_1": 200 / 3})
    with pytest.raises(UserError, match="execute_code: task 'rte' has no tests"):
        get_task("rte").with_code_execution()


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


@pytest.mark.faults
@pytest.mark.parametrize("isolate", [True, False])
def test_memory_and_file_size_limits_hold(isolate, request):
    if isolate:
        request.getfixturevalue("sandbox")
    memory = run_python("x = bytearray(600 << 20)", memory_mb=256, timeout_s=20, isolate=isolate)
    assert not memory.passed and "MemoryError" in memory.stderr_tail
    big = run_python("open('big', 'wb').write(bytes(17 << 20))", timeout_s=20, isolate=isolate)
    assert not big.passed and "File too large" in big.stderr_tail


@pytest.mark.faults
@pytest.mark.parametrize("main_waits", [True, False], ids=["main-sleeps", "main-exits"])
def test_setsid_grandchild_dies_with_the_sandbox(sandbox, main_waits):
    marker = _marker()
    program = f"""import os, sys, time
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()  # leaves the process group, which used to be all the timeout killed
    if os.fork() == 0:
        open('/proc/self/comm', 'w').write({marker!r})
        os.write(w, b'x')
        time.sleep(60)
    os._exit(0)
os.read(r, 1)
print('daemon started', file=sys.stderr, flush=True)
{"time.sleep(60)" if main_waits else ""}
"""
    start = time.monotonic()
    result = run_python(program, timeout_s=2)
    elapsed = time.monotonic() - start
    assert "daemon started" in result.stderr_tail  # the grandchild did run
    assert (result.timed_out, result.passed) == ((True, False) if main_waits else (False, True))
    assert elapsed < 8, f"run_python took {elapsed:.1f} s for a 2 s timeout"
    assert _alive(marker) == []  # gone by the time run_python returns, not 60 s later


@pytest.mark.faults
def test_program_cannot_see_or_signal_the_evaluator(sandbox):
    program = """import json, os, signal, sys
pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
cmdlines = []
for p in pids:
    try:
        cmdlines.append(open(f'/proc/{p}/cmdline', 'rb').read().replace(b'\\0', b' ').decode())
    except OSError:
        pass
if os.getpid() > 2:  # safety net for this test: never fire kill(-1) from outside a PID namespace
    sys.exit('NOT IN A PID NAMESPACE')
errors = []
for target, sig in [(os.getppid(), signal.SIGTERM), (os.getppid(), signal.SIGKILL)] + [
        (p, signal.SIGKILL) for p in pids if p != os.getpid()] + [(-1, signal.SIGKILL)]:
    try:
        os.kill(target, sig)
    except OSError as e:
        errors.append(type(e).__name__)
seen = dict(ppid=os.getppid(), pids=pids, evaluator='pytest' in ' '.join(cmdlines))
print(json.dumps(seen), file=sys.stderr)
"""
    result = run_python(program, timeout_s=20)
    assert result.passed, result.stderr_tail  # the evaluator (this process) is alive and got a normal result
    seen = json.loads(result.stderr_tail.strip().splitlines()[-1])
    assert seen["evaluator"] is False and seen["ppid"] == 1 and set(seen["pids"]) <= {1, 2}


@pytest.mark.faults
def test_fork_bomb_hits_the_process_limit_and_is_cleaned_up(sandbox):
    marker, limit = _marker(), 16
    program = f"""import os, sys, time
open('/proc/self/comm', 'w').write({marker!r})  # inherited by every child
forks = failures = 0
for _ in range(200):
    try:
        pid = os.fork()
    except OSError:  # BlockingIOError: EAGAIN from RLIMIT_NPROC
        failures += 1
        continue
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    forks += 1
print(f'forks={{forks}} failures={{failures}}', file=sys.stderr, flush=True)
time.sleep(60)
"""
    start = time.monotonic()
    result = run_python(program, timeout_s=3, max_procs=limit)
    elapsed = time.monotonic() - start
    counts = dict(re.findall(r"(forks|failures)=(\d+)", result.stderr_tail))
    assert result.timed_out and elapsed < 9, (result, elapsed)
    assert 0 < int(counts["forks"]) < limit and int(counts["failures"]) >= 200 - limit, counts
    assert _alive(marker) == []


@pytest.mark.faults
def test_runs_as_an_unprivileged_user(sandbox):
    result = run_python("import os, sys\nprint(os.getuid(), os.getgid(), os.getgroups(), file=sys.stderr)")
    uid, gid, groups = result.stderr_tail.split(" ", 2)
    if os.geteuid() == 0:
        assert (int(uid), int(gid), groups.strip()) == (code_eval.SANDBOX_UID, code_eval.SANDBOX_GID, "[]")
    else:  # an unprivileged evaluator keeps its own uid (a user namespace maps it to itself)
        assert int(uid) == os.getuid()


@pytest.mark.faults
def test_sandbox_dies_with_the_evaluator(sandbox):
    marker = _marker()
    program = f"import time\nopen('/proc/self/comm', 'w').write({marker!r})\ntime.sleep(60)\n"
    # the killed evaluator cannot delete its temp dir: give it one that the test removes (traversable by uid 65534)
    with tempfile.TemporaryDirectory(prefix="adept-test-") as tmp:
        os.chmod(tmp, 0o755)
        evaluator = subprocess.Popen(
            [sys.executable, "-c", f"import pipeline.core.code_eval as ce\nce.run_python({program!r}, timeout_s=60)"],
            cwd=REPO, env={**os.environ, "TMPDIR": tmp},
        )
        try:
            deadline = time.monotonic() + 20
            while not _alive(marker) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _alive(marker), "the sandboxed program never started"
        finally:
            evaluator.send_signal(signal.SIGKILL)
            evaluator.wait()
        deadline = time.monotonic() + 5
        while _alive(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _alive(marker) == []


@pytest.mark.faults
def test_missing_isolation_is_a_clear_error(monkeypatch):
    code_eval._sandbox.cache_clear()
    monkeypatch.setattr(code_eval, "_tool", lambda name: None)
    with pytest.raises(SandboxUnavailable, match="util-linux 'unshare'.*isolate=False"):
        run_python("pass")
    with pytest.raises(SandboxUnavailable, match="util-linux"):  # before running any program
        mbpp_pass_at_1(["x = 1"], [[]], allow_code_execution=True)
    assert not isolation_available()
    assert run_python("pass", isolate=False).passed  # the explicit opt-out still runs
    monkeypatch.undo()
    code_eval._sandbox.cache_clear()
    if isolation_available():
        with pytest.raises(SandboxUnavailable, match="/nonexistent/python3"):
            run_python("pass", python="/nonexistent/python3")
