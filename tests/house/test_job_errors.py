"""A user's mistake and a bug end a job differently (issue 18, "user errors are a type").

A `UserError` anywhere in a job is `error: <field>: <what>; <fix>` with exit status 2 and no traceback; any other
exception is a bug: its traceback, then one line saying it is a bug, exit status 1. A Ctrl-C (KeyboardInterrupt)
is one line saying how to go on, exit status 130, no traceback."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.core.errors import UserError

pytestmark = [pytest.mark.house, pytest.mark.usefixtures("no_ray")]
ROOT = Path(__file__).resolve().parents[2]
JOBS = ["train_adept", "tune_adept", "register_best", "predict"]
ARGS = {  # the least each job's parser accepts: the failure is raised right after parsing (cli.start)
    "train_adept": [], "tune_adept": [], "register_best": ["--sweep", "s"],
    "predict": ["--model", "m", "--input", "in.csv"],
}


def run_job(job: str, monkeypatch, exc: BaseException) -> int:
    """The job's main(), in-process, with `exc` raised where every job starts (cli.start, after parsing)."""
    def start(args):
        raise exc

    monkeypatch.setattr(cli, "start", start)
    return importlib.import_module(f"jobs.{job}").main(ARGS[job])


@pytest.mark.parametrize("job", JOBS)
@pytest.mark.parametrize("exc", [RuntimeError("boom: an internal invariant broke"), KeyError("internal_key"),
                                 ValueError("a library's own ValueError"), TypeError("f() takes 2 arguments")])
def test_a_bug_shows_its_traceback_and_exits_1(job, exc, monkeypatch, capsys):
    rc = run_job(job, monkeypatch, exc)
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "Traceback (most recent call last):" in err, err
    assert f"{type(exc).__name__}: {exc}" in err, err  # KeyError shows its repr-quoted key, like Python does
    assert "in start" in err, err  # the frame that raised
    assert err.rstrip().splitlines()[-1] == cli.BUG_HINT, err
    assert not any(line.startswith("error: ") for line in err.splitlines()), err


@pytest.mark.parametrize("job", JOBS)
def test_a_user_error_is_one_line_and_exits_2(job, monkeypatch, capsys):
    rc = run_job(job, monkeypatch, UserError("prompt_lr: must be > 0; set prompt_lr=0.3"))
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.splitlines() == ["error: prompt_lr: must be > 0; set prompt_lr=0.3"], err
    assert "Traceback" not in err and cli.BUG_HINT not in err


@pytest.mark.parametrize("job", JOBS)
def test_ctrl_c_is_one_line_and_exits_130(job, monkeypatch, capsys):
    rc = run_job(job, monkeypatch, KeyboardInterrupt())
    err = capsys.readouterr().err
    assert rc == cli.INTERRUPTED == 130, err
    assert err.splitlines() == ["interrupted; re-run the same command to start again"], err
    assert "Traceback" not in err and cli.BUG_HINT not in err


def test_a_tracking_outage_is_an_error_line_not_a_bug(monkeypatch, capsys):
    from pipeline.tracking.store import TrackingOutage

    rc = run_job("tune_adept", monkeypatch, TrackingOutage("MLflow was unreachable for 600 s; relog it later."))
    err = capsys.readouterr().err
    assert rc == 1
    assert err.splitlines() == ["error: MLflow was unreachable for 600 s; relog it later."], err


def test_a_real_user_error_of_the_train_job(synthetic_task, tiny_backbone, tmp_path, capsys):
    from jobs.train_adept import main

    rc = main(["--task", str(synthetic_task), "--backbone", str(tiny_backbone), "--r", "8", "--storage-path",
               str(tmp_path / "runs"), "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}", "--set", "promt_lr=0.3"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.splitlines() == [
        "error: unknown config key(s) ['promt_lr'] (did you mean 'prompt_lr'?); the keys are the fields of "
        "pipeline/core/config.py:TrainConfig."], err


def test_the_process_exit_status_of_a_bug(tmp_path):
    """The real process: `python jobs/train_adept.py` whose config loading hits a bug (a KeyError inside)."""
    probe = ("import runpy, sys\n"
             "from pipeline.core.config import TrainConfig\n"
             "def load(*args, **kwargs):\n"
             "    return {}['num_virtual_tokens']\n"
             "TrainConfig.load = load\n"
             "sys.argv = ['jobs/train_adept.py', '--r', '8', '--quiet']\n"
             "runpy.run_path('jobs/train_adept.py', run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = proc.stderr.rstrip().splitlines()
    assert "Traceback (most recent call last):" in proc.stderr
    assert "KeyError: 'num_virtual_tokens'" in lines, proc.stderr[-3000:]
    assert lines[-1] == cli.BUG_HINT
    assert not any(line.startswith("error: ") for line in lines)


def test_the_process_exit_status_of_a_user_error(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("method: adept\nr: 8\nsweep: {}\nlearning_rate: 0.3\n")
    proc = subprocess.run([sys.executable, "jobs/train_adept.py", "--config", str(config), "--quiet"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [
        "error: unknown config key(s) ['learning_rate']; the keys are the fields of "
        "pipeline/core/config.py:TrainConfig."], proc.stderr
