"""The fault tests' job watchers end: a job that never exits fails the test with its log's tail (CI once spent
its whole budget on a wait with no end) and leaves no process behind."""

import subprocess
import sys

import pytest
from fit_helpers import finish, watch

pytestmark = pytest.mark.faults


def hung_job(tmp_path):
    log = tmp_path / "job.log"
    code = "import time; print('the last words of a hung job', flush=True); time.sleep(600)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    return proc, log


def test_watch_gives_up_with_the_log_tail_and_cleans_up(tmp_path):
    proc, log = hung_job(tmp_path)
    with pytest.raises(AssertionError, match=r"still ran 2 s later(.|\n)*the last words of a hung job"):
        watch(proc, log, timeout_s=2)
    assert proc.wait(timeout=10) is not None  # watch's cleanup killed the job's session


def test_finish_gives_up_with_the_log_tail(tmp_path):
    proc, log = hung_job(tmp_path)
    try:
        with pytest.raises(AssertionError, match=r"still ran 2 s later(.|\n)*the last words of a hung job"):
            finish(proc, 2, log)
    finally:
        proc.kill()
        proc.wait()
