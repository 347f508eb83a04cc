"""Opt-in execution of generated Python for MBPP pass@1, in a Linux namespace sandbox; off by default.

Each program runs in a fresh interpreter (``python -I``) in a new temporary directory that is deleted
afterwards, with a scrubbed environment and these limits (resource rlimits of the program): CPU time
(timeout + 1 s), address space (``memory_mb``), file size (16 MiB), no core dumps, and ``max_procs``
processes + threads (RLIMIT_NPROC).

With ``isolate=True`` (the default) the program also runs inside new PID, network, mount (only for a
private ``/proc``), IPC and UTS namespaces made by util-linux ``unshare``:

* PID namespace: a small init (pid 1, a Python stub that stays outside the program's control) starts
  the program as pid 2 and exits with it; when pid 1 ends, the kernel kills every process left in the
  namespace, including children that ``setsid``/double-fork away. At the wall-clock timeout the
  evaluator kills pid 1 and waits until the namespace is empty, so nothing the program started
  outlives ``run_python``. The program sees only the processes of its namespace (``/proc`` is
  remounted), so it cannot see or signal the evaluator or anything else on the host; ``kill(-1)``
  reaches only its own children.
* Network namespace: no interface but a down loopback, so every connect fails (even to 127.0.0.1).
* User: when the evaluator runs as root, the program runs as uid/gid 65534 (``nobody``/``nogroup``)
  with no supplementary groups, no capabilities and ``no_new_privs`` (setuid binaries gain nothing);
  its temp dir is chowned to that user. RLIMIT_NPROC (ignored for root) then bounds fork bombs; it
  counts all processes of uid 65534 on the machine, so concurrent sandboxes share the budget. A root
  evaluator needs CAP_SYS_ADMIN (a VM, or a container allowed to create namespaces). When the evaluator
  is not root, the namespaces come from an unprivileged user namespace (``unshare --user
  --map-current-user``): the program keeps the evaluator's uid, and RLIMIT_NPROC counts only the
  processes inside that user namespace.
* The program's interpreter must be runnable by the sandbox user. If ``sys.executable`` is not (for
  example a pyenv/venv under ``/root``, mode 0700), a system ``python3`` is used instead (probed once
  per process; pass ``python=`` to choose).
* If the evaluator itself dies, the sandbox is killed with it (parent-death signal via util-linux
  ``setpriv --pdeathsig``; without setpriv it runs on until the program ends or hits its CPU limit).

What it does NOT isolate: the file system. The program can read every file that is world-readable
(uid 65534) or readable by the evaluator's user (non-root), and write to world-writable places such as
``/tmp``, ``/var/tmp`` and ``/dev/shm`` (the files stay after the run); it shares the host kernel
(a kernel bug is an escape), CPU and memory beyond the rlimits (no cgroup), and ``/sys``. That is why
`mbpp_pass_at_1` refuses to run unless called with ``allow_code_execution=True``, and why the MBPP
task's default metric is ``exact_match``: a fit reports ``pass_at_1`` only with ``execute_code: true``
(`Task.with_code_execution`). Prefer a throw-away container or VM all the same.

When the platform cannot provide the isolation (no ``unshare``, namespaces not permitted, no
interpreter the sandbox user can run), ``run_python`` raises `SandboxUnavailable` naming what is
missing and the fix. ``isolate=False`` opts out knowingly: the program then runs as the evaluator's
user in its own session with the rlimits only; descendants that leave the process group survive the
run, and the program can signal the evaluator.
"""

from __future__ import annotations

import functools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

SANDBOX_UID = SANDBOX_GID = 65534  # nobody / nogroup on Debian, Ubuntu, Fedora, Alpine
_TOOL_PATH = "/usr/bin:/bin:/usr/sbin:/sbin:/usr/local/bin"
_STDERR_KEEP = 64 << 10  # bytes of the program's stderr kept in memory (the tail)
_TAIL_CHARS = 500

# The namespace's pid 1 (or, with isolate=False, a plain wrapper): forks the program with its limits and
# credentials, reaps orphans, and reports the program's exit code on a pipe. argv: status_fd uid gid
# max_procs cpu_s memory_bytes fsize_bytes python program_path ("-" uid: keep the current user).
_BOOTSTRAP = r"""
import ctypes, os, resource, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)  # a handler would make pid 1 signalable from inside
status_fd, uid, gid, nproc, cpu, mem, fsize, python, path = sys.argv[1:10]
status_fd = int(status_fd)
libc = ctypes.CDLL(None, use_errno=True)
if os.getpid() != 1:  # isolate=False: die with the evaluator
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)
child = os.fork()
if child == 0:
    try:
        os.close(status_fd)
        if uid != "-":
            os.setgroups([])
            os.setgid(int(gid))
            os.setuid(int(uid))
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG, after the uid change that clears it
        R = resource
        for res, value in ((R.RLIMIT_CPU, cpu), (R.RLIMIT_AS, mem), (R.RLIMIT_FSIZE, fsize),
                           (R.RLIMIT_CORE, 0), (R.RLIMIT_NPROC, nproc)):
            hard = resource.getrlimit(res)[1]
            value = int(value) if hard == resource.RLIM_INFINITY else min(int(value), hard)
            resource.setrlimit(res, (value, value))
        if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        os.execve(python, [python, "-I", path], os.environ)
    except BaseException as e:
        os.write(2, ("sandbox: cannot start %s: %r\n" % (python, e)).encode())
        os._exit(127)
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        os._exit(1)
    if pid == child:
        code = os.waitstatus_to_exitcode(status)
        os.write(status_fd, str(code).encode())
        os._exit(0 if code == 0 else 1)
"""

# What the probe program reports; `_check_probe` compares it with what the sandbox promises.
_PROBE = """import json, os, socket, sys
procs = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())[:8]  # short: it must fit the stderr tail
ifaces = sorted(name for _, name in socket.if_nameindex())
print(json.dumps(dict(pid=os.getpid(), ppid=os.getppid(), uid=os.getuid(), gid=os.getgid(),
                      groups=os.getgroups(), procs=procs, ifaces=ifaces)), file=sys.stderr)
"""


class SandboxUnavailable(RuntimeError):
    """The isolation `run_python(isolate=True)` promises cannot be set up on this machine."""


@dataclass(frozen=True)
class ExecResult:
    passed: bool  # exit code 0 before the timeout
    returncode: int | None  # the program's exit code (-N: killed by signal N); None after a timeout
    timed_out: bool
    stderr_tail: str


@dataclass(frozen=True)
class _Launcher:
    prefix: tuple[str, ...]  # setpriv / unshare before the bootstrap; () with isolate=False
    uid: int | None  # drop the program to this uid/gid (root evaluator); None: keep the current user
    gid: int | None
    python: str  # interpreter of the program

    @property
    def isolated(self) -> bool:
        return bool(self.prefix)


def _tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=_TOOL_PATH)


def _namespace_prefixes() -> list[tuple[str, ...]]:
    """Candidate launchers, most preferred first (raises SandboxUnavailable without unshare)."""
    unshare = _tool("unshare")
    if unshare is None:
        raise SandboxUnavailable(
            "run_python(isolate=True) needs util-linux 'unshare' (PID + network namespaces), which is not "
            "on PATH: install util-linux (Debian/Ubuntu: apt-get install util-linux), or pass isolate=False "
            "knowingly (no sandbox: the program can signal the evaluator and leave processes behind)"
        )
    setpriv = _tool("setpriv")
    deathsig = (setpriv, "--pdeathsig", "KILL") if setpriv else ()  # the sandbox dies with the evaluator
    spaces = ("--pid", "--net", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc")
    if os.geteuid() == 0:
        return [(*deathsig, unshare, *spaces)]
    mappings = ("--map-current-user", "--map-root-user")  # util-linux >= 2.38 / older
    return [(*deathsig, unshare, "--user", mapping, *spaces) for mapping in mappings]


def _python_candidates(python: str | None, dropping: bool) -> list[str]:
    if python is not None:
        return [python]
    found = [sys.executable]
    if dropping:  # the evaluator's interpreter may live where uid 65534 cannot go (/root/.pyenv)
        minor = f"python3.{sys.version_info.minor}"
        found += [shutil.which(minor, path=_TOOL_PATH), shutil.which("python3", path=_TOOL_PATH)]
    return list(dict.fromkeys(p for p in found if p))


def _check_probe(launcher: _Launcher, result: ExecResult) -> str | None:
    """None if the probe ran as promised, else what is wrong."""
    if not result.passed:
        return f"the probe program failed (exit {result.returncode}): {result.stderr_tail.strip()[-300:]}"
    try:
        seen = json.loads(result.stderr_tail.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return f"unreadable probe output: {result.stderr_tail[-300:]!r}"
    problems = []
    if (seen["pid"], seen["ppid"]) != (2, 1) or not set(seen["procs"]) <= {1, 2}:
        problems.append(f"not in a fresh PID namespace (pid {seen['pid']}, sees pids {seen['procs']}...)")
    if seen["ifaces"] != ["lo"]:
        problems.append(f"network interfaces visible: {seen['ifaces']}")
    ids = (seen["uid"], seen["gid"], seen["groups"])
    if launcher.uid is not None and ids != (launcher.uid, launcher.gid, []):
        problems.append(f"runs as uid {ids[0]} gid {ids[1]} groups {ids[2]}, not {launcher.uid}")
    return "; ".join(problems) or None


@functools.lru_cache(maxsize=8)
def _sandbox(python: str | None) -> _Launcher:
    """The isolated launcher that works here, found by running a probe program through it (cached)."""
    dropping = os.geteuid() == 0
    uid, gid = (SANDBOX_UID, SANDBOX_GID) if dropping else (None, None)
    failures = []
    for prefix in _namespace_prefixes():
        for interpreter in _python_candidates(python, dropping):
            launcher = _Launcher(prefix, uid, gid, interpreter)
            probe = _launch(launcher, _PROBE, timeout_s=30.0, memory_mb=1024, max_procs=8)
            problem = _check_probe(launcher, probe)
            if problem is None:
                return launcher
            failures.append(f"[{' '.join(prefix)} ... {interpreter}]: {problem}")
            if "unshare:" in problem or "setpriv:" in problem:
                break  # the namespaces themselves fail: another interpreter will not help
    who = f"uid {SANDBOX_UID} (the evaluator runs as root)" if dropping else f"uid {os.geteuid()}"
    fix = (
        "as root the process needs CAP_SYS_ADMIN to create namespaces (a VM, or e.g. docker run --cap-add "
        "SYS_ADMIN --security-opt seccomp=unconfined --security-opt apparmor=unconfined), and an interpreter "
        f"that {who} can run (a system python3 outside /root, or python=...)"
        if dropping
        else "enable unprivileged user namespaces (sysctl user.max_user_namespaces>0, "
        "kernel.unprivileged_userns_clone=1, kernel.apparmor_restrict_unprivileged_userns=0) "
        "or run as root in a VM"
    )
    raise SandboxUnavailable(
        f"run_python(isolate=True) cannot build its sandbox (PID + network namespaces, {who}) here: "
        + " / ".join(failures) + f". Fix: {fix}; or pass isolate=False knowingly (no sandbox)."
    )


def check_sandbox(python: str | None = None) -> None:
    """Raise `SandboxUnavailable` (what is missing, the fix) unless `run_python(isolate=True)` works here."""
    _sandbox(python)


def isolation_available(python: str | None = None) -> bool:
    """Whether `run_python(isolate=True)` works here (probed once per process)."""
    try:
        check_sandbox(python)
    except SandboxUnavailable:
        return False
    return True


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:  # kernels without CONFIG_PROC_CHILDREN: scan the parent pids
        found = []
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if entry.isdigit() and int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
        return found


def _exited(pid: int) -> bool:
    """Whether the child has exited, without reaping it (its pid and process group stay reserved)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _kill(launcher: _Launcher, proc: subprocess.Popen) -> None:
    """Kill everything the program started and reap the launcher."""
    if launcher.isolated:
        for init in _children(proc.pid):  # pid 1 of the namespace: its death empties the namespace
            try:
                os.kill(init, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=10)  # unshare returns once pid 1 and so every process in the namespace is gone
            return
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and whatever stayed in its process group
    except ProcessLookupError:
        pass
    proc.wait()


def _launch(
    launcher: _Launcher, program: str, *, timeout_s: float, memory_mb: int, max_procs: int
) -> ExecResult:
    with tempfile.TemporaryDirectory(prefix="adept-exec-", ignore_cleanup_errors=True) as tmp:
        path = os.path.join(tmp, "program.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(program)
        os.chmod(path, 0o644)
        if launcher.uid is not None:
            os.chown(tmp, launcher.uid, launcher.gid)
            os.chown(path, launcher.uid, launcher.gid)
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "PYTHONHASHSEED": "0", "LANG": "C.UTF-8"}
        status_r, status_w = os.pipe()
        os.set_blocking(status_r, False)
        uid = "-" if launcher.uid is None else str(launcher.uid)
        gid = "-" if launcher.gid is None else str(launcher.gid)
        limits = [str(max_procs), str(max(1, int(timeout_s) + 1)), str(memory_mb << 20), str(16 << 20)]
        try:
            proc = subprocess.Popen(
                [*launcher.prefix, sys.executable, "-I", "-S", "-c", _BOOTSTRAP,
                 str(status_w), uid, gid, *limits, launcher.python, path],
                cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                start_new_session=True, pass_fds=(status_w,),
            )
        finally:
            os.close(status_w)
        try:
            return _collect(launcher, proc, status_r, timeout_s)
        finally:
            os.close(status_r)


def _collect(launcher: _Launcher, proc: subprocess.Popen, status_r: int, timeout_s: float) -> ExecResult:
    fd = proc.stderr.fileno()
    err, eof = bytearray(), False

    def read(wait: float) -> None:
        nonlocal eof
        if not eof and select.select([fd], [], [], wait)[0]:
            chunk = os.read(fd, 65536)
            eof = not chunk
            err.extend(chunk)
            del err[:-_STDERR_KEEP]
        elif eof:
            time.sleep(wait)

    deadline = time.monotonic() + timeout_s
    while not (exited := _exited(proc.pid)) and (left := deadline - time.monotonic()) > 0:
        read(min(left, 0.05))
    timed_out = not exited
    if timed_out or not launcher.isolated:
        _kill(launcher, proc)  # after a normal exit: stragglers in the process group (isolate=False)
    else:
        proc.wait()  # unshare has returned: pid 1 and so everything in the namespace is gone
    # the namespace is empty now, so stderr is at EOF; with isolate=False a setsid child may still hold it
    grace = time.monotonic() + 1.0
    while not eof and time.monotonic() < grace:
        read(0.05)
    proc.stderr.close()
    try:
        status = os.read(status_r, 64).decode()
    except BlockingIOError:
        status = ""
    code = None if timed_out else int(status) if status.lstrip("-").isdigit() else proc.returncode
    tail = err.decode("utf-8", "replace")[-_TAIL_CHARS:]
    if timed_out:
        tail = (tail + "\n" if tail else "") + f"timeout after {timeout_s:g} s"
    return ExecResult(code == 0, code, timed_out, tail)


def run_python(
    program: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    max_procs: int = 32,
    isolate: bool = True,
    python: str | None = None,
) -> ExecResult:
    """Run ``program`` in the sandbox described in the module docstring; passed = exit code 0 in time.

    ``max_procs`` bounds the processes + threads of the program (RLIMIT_NPROC). ``isolate=False`` runs
    it without namespaces or a user change (not a sandbox). ``python`` is the program's interpreter
    (default: ``sys.executable``, or a system ``python3`` if the sandbox user cannot run that one).
    Raises `SandboxUnavailable` when ``isolate=True`` cannot be honoured here.
    """
    launcher = _sandbox(python) if isolate else _Launcher((), None, None, python or sys.executable)
    return _launch(launcher, program, timeout_s=timeout_s, memory_mb=memory_mb, max_procs=max_procs)


def mbpp_pass_at_1(
    predictions: Sequence[str],
    test_lists: Sequence[Sequence[str]],
    setup_codes: Sequence[str] | None = None,
    *,
    allow_code_execution: bool = False,
    timeout_s: float = 10.0,
    isolate: bool = True,
    python: str | None = None,
) -> float:
    """pass@1 ×100 with one greedy sample per problem: program = prediction + setup + the asserts."""
    if not allow_code_execution:
        raise PermissionError(
            "mbpp_pass_at_1 runs model-generated code; the sandbox isolates processes, network and user but "
            "not file reads or writes to world-writable places; call it with allow_code_execution=True only "
            "inside a disposable container or VM"
        )
    if len(predictions) != len(test_lists):
        raise ValueError(f"predictions has {len(predictions)} items but test_lists has {len(test_lists)}")
    if isolate:
        _sandbox(python)  # fail before running anything if the sandbox cannot be built
    setup_codes = setup_codes or [""] * len(predictions)
    passed = 0
    for code, tests, setup in zip(predictions, test_lists, setup_codes, strict=True):
        program = "\n".join([code, setup, *tests, ""])
        passed += run_python(program, timeout_s=timeout_s, isolate=isolate, python=python).passed
    return 100.0 * passed / len(predictions) if predictions else 0.0
