"""Opt-in execution of generated Python for MBPP pass@1. NOT a sandbox; off by default.

What it does for each program: a fresh interpreter (``python -I``) in its own session, in a
new temporary directory that is deleted afterwards, with a scrubbed environment, a wall-clock
timeout (the whole process group is killed), CPU / address-space / file-size limits, and, when
``isolate_network=True`` (default), inside a new network namespace (``unshare --net``, so no
interface but a down loopback: every connect fails).

What it does NOT do: stop the program from reading or writing files outside the temp dir that
the user running it can reach. That is why `mbpp_pass_at_1` refuses to run unless called with
``allow_code_execution=True``, and why the MBPP task's default metric is ``exact_match``. Run it
only inside a throw-away container or VM.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ExecResult:
    passed: bool
    returncode: int | None
    timed_out: bool
    stderr_tail: str


def network_isolation_available() -> bool:
    """Whether ``unshare --net`` works for this user (root, or unprivileged user namespaces)."""
    exe = shutil.which("unshare")
    if exe is None:
        return False
    for args in (["--net"], ["--net", "--map-root-user"]):
        try:
            if subprocess.run([exe, *args, "true"], capture_output=True, timeout=10).returncode == 0:
                return True
        except (OSError, subprocess.TimeoutExpired):
            continue
    return False


def _unshare_prefix() -> list[str]:
    exe = shutil.which("unshare")
    for args in (["--net"], ["--net", "--map-root-user"]):
        if exe and subprocess.run([exe, *args, "true"], capture_output=True, timeout=10).returncode == 0:
            return [exe, *args]
    raise RuntimeError(
        "isolate_network=True but 'unshare --net' does not work here; run in a container that allows it, "
        "or pass isolate_network=False knowingly"
    )


def _limits(cpu_s: int, memory_mb: int):
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def run_python(program: str, *, timeout_s: float = 10.0, memory_mb: int = 1024, isolate_network: bool = True) -> ExecResult:
    """Run ``program`` in a separate limited interpreter; passed = exit code 0 before the timeout."""
    prefix = _unshare_prefix() if isolate_network else []
    with tempfile.TemporaryDirectory(prefix="adept-exec-") as tmp:
        path = os.path.join(tmp, "program.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(program)
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "PYTHONHASHSEED": "0", "LANG": "C.UTF-8"}
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-I", path], cwd=tmp, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
            preexec_fn=_limits(max(1, int(timeout_s) + 1), memory_mb),
        )
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return ExecResult(False, None, True, "timeout")
        tail = err.decode("utf-8", "replace")[-500:]
        return ExecResult(proc.returncode == 0, proc.returncode, False, tail)


def mbpp_pass_at_1(
    predictions: Sequence[str],
    test_lists: Sequence[Sequence[str]],
    setup_codes: Sequence[str] | None = None,
    *,
    allow_code_execution: bool = False,
    timeout_s: float = 10.0,
    isolate_network: bool = True,
) -> float:
    """pass@1 ×100 with one greedy sample per problem: program = prediction + setup + the asserts."""
    if not allow_code_execution:
        raise PermissionError(
            "mbpp_pass_at_1 runs model-generated code, which is not sandboxed against file access; "
            "call it with allow_code_execution=True only inside a disposable container or VM"
        )
    if len(predictions) != len(test_lists):
        raise ValueError(f"predictions has {len(predictions)} items but test_lists has {len(test_lists)}")
    setup_codes = setup_codes or [""] * len(predictions)
    passed = 0
    for code, tests, setup in zip(predictions, test_lists, setup_codes, strict=True):
        program = "\n".join([code, setup, *tests, ""])
        passed += run_python(program, timeout_s=timeout_s, isolate_network=isolate_network).passed
    return 100.0 * passed / len(predictions) if predictions else 0.0
