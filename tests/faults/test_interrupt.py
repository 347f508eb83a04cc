"""Ctrl-C of a fit (issue 21, item 8): the job says at which step it stopped and that the same command resumes,
exits 130 (128 + SIGINT), and the same command does resume. The fit runs beside a second local Ray cluster (as
another job or test on the host would), which used to add Ray's "Found multiple active Ray instances" traceback
(its placement-group cleaner scanning the host for clusters) to every job's output."""

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fault_hooks import hooks, sleep_each_step
from fit_helpers import ROOT, fit_args, journal, kill_tree, start_fit, wait_for

from pipeline.core.ray_compat import registered_checkpoints

pytestmark = [pytest.mark.faults, pytest.mark.slow]
NOISE = ("Found multiple active Ray instances", "PlacementGroupCleanerMonitor")


@pytest.fixture
def second_ray_cluster(tmp_path):
    """Another local Ray cluster on this host for the duration of the test, in its own session."""
    log = tmp_path / "other-cluster.log"
    code = ("import time\nfrom pipeline.driver.ray_setup import init_ray\ninit_ray(1, num_cpus=1)\n"
            "print('UP', flush=True)\ntime.sleep(3600)\n")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_for(lambda: "UP" in log.read_text(), 300, "a second local Ray cluster", proc)
        yield
    finally:
        kill_tree(proc)


def interrupted_at(out: str) -> int:
    """N of the job's last line, `interrupted at step N; re-run the same command to resume`."""
    last = out.rstrip().splitlines()[-1]
    match = re.fullmatch(r"interrupted at step (\d+); re-run the same command to resume", last)
    assert match, out[-4000:]
    return int(match.group(1))


def interrupt(proc: subprocess.Popen, log: Path) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)  # the job's own process, as a terminal's Ctrl-C reaches the driver
    try:
        rc = proc.wait(90)
    except subprocess.TimeoutExpired:
        rc = None
    return rc, log.read_text()


def test_ctrl_c_says_where_to_resume_and_the_same_command_does(second_ray_cluster, synthetic_task, tiny_backbone,
                                                             tmp_path):
    storage, uri, name = tmp_path / "runs", f"sqlite:///{tmp_path / 'mlflow.db'}", "ctrl-c"
    args = [*fit_args(synthetic_task, tiny_backbone, storage, uri, name, "--max-steps", "400", "--eval-steps", "5",
                      "--set", "log_steps=1"), *hooks(sleep_each_step(0.2))]
    first_log, again_log = tmp_path / "first.log", tmp_path / "again.log"
    proc = start_fit(args, log=first_log)
    try:
        # registered by Ray Train, not only written by the worker: a Ctrl-C between the two leaves nothing to resume
        wait_for(lambda: registered_checkpoints(storage / name), 600, "the first registered checkpoint", proc)
        rc, out = interrupt(proc, first_log)
    finally:
        kill_tree(proc)
    assert rc == 130, out[-4000:]
    step = interrupted_at(out)
    assert step >= 5 and (storage / name / f"step_{step:08d}").is_dir(), out[-4000:]
    assert "Traceback" not in out and not any(noise in out for noise in NOISE), out[-6000:]

    proc = start_fit(args, log=again_log)  # the same command
    try:
        wait_for(lambda: any(e["attempt"] >= 1 for e in journal(storage, name)), 600, "the resumed fit's first step",
                 proc)
        rc, out = interrupt(proc, again_log)
    finally:
        kill_tree(proc)
    resumed = [e["step"] for e in journal(storage, name) if e["attempt"] >= 1]
    assert min(resumed) == step + 1, (step, resumed)  # from the step the message named, not from step 0
    assert rc == 130 and interrupted_at(out) >= step, out[-4000:]
    assert not any(noise in out for noise in NOISE), out[-6000:]
