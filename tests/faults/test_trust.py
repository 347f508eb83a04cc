"""A sweep resume unpickles Tune's state (`tuner.pkl`, cloudpickle inside `experiment_state-*.json`, searcher and
callback state, trials' `error.pkl`), so it is checked before Ray starts (`pipeline/driver/tune/trust.py`): every
file the driver's manifest does not vouch for, or that another account could have written, is refused by name."""

import os
import pickle
import stat

import pytest
import ray
import yaml
from hostile import Payload

from jobs.tune_adept import main as tune_main
from pipeline.core.errors import UserError
from pipeline.driver.tune import trust

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("no_ray")]


def tune_folder(storage):
    """What Tune leaves in a sweep folder (names as Ray 2.x writes them), beside our trials/ and summary/."""
    storage.mkdir(parents=True)
    (storage / "tuner.pkl").write_bytes(pickle.dumps({"honest": True}))
    (storage / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": []}')
    (storage / "basic-variant-state-2026-01-01_00-00-00.json").write_bytes(pickle.dumps({"state": 1}))
    (storage / "adept_sweep.json").write_text("{}")
    trial = storage / "abc12_00000"
    trial.mkdir()
    (trial / "params.pkl").write_bytes(pickle.dumps({"m": 4}))
    (trial / "result.json").write_text("{}\n")
    for ours in ("trials/s-abc12_00000/step_00000010", "summary"):
        (storage / ours).mkdir(parents=True)
        (storage / ours / "x.json").write_text("{}")
    return storage


def test_an_honest_folder_resumes_and_our_own_folders_are_not_tune_state(tmp_path):
    storage = tune_folder(tmp_path / "runs" / "s")
    trust.write_manifest(storage)
    assert trust.check_resume(storage, "s")
    (storage / "trials" / "s-abc12_00000" / "step_00000020").mkdir()  # a trial's Train run goes on: not Tune's
    (storage / "summary" / "summary.csv").write_text("a\n")
    assert trust.check_resume(storage, "s")
    files, _ = trust.tune_files(storage)
    assert {p.name for p in files} >= {"tuner.pkl", "params.pkl", trust.MANIFEST}
    assert not any(part in ("trials", "summary") for p in files for part in p.relative_to(storage).parts)


def test_nothing_to_unpickle_without_tuner_pkl(tmp_path):
    storage = tmp_path / "runs" / "s"
    storage.mkdir(parents=True)
    (storage / "adept_sweep.json").write_text("{}")  # a driver killed before Tune wrote anything: Tune starts afresh
    assert trust.check_resume(storage, "s") is False


@pytest.mark.parametrize(("damage", "kind", "named"), [
    ("planted-tuner", "changed", "tuner.pkl"),
    ("planted-error", "added", "error.pkl"),
    ("newer-state", "added", "experiment_state-2099-01-01_00-00-00.json"),
    ("removed", "missing", "params.pkl"),
])
def test_a_file_the_driver_did_not_leave_is_refused_by_name_and_never_unpickled(tmp_path, damage, kind, named):
    storage = tune_folder(tmp_path / "runs" / "s")
    trust.write_manifest(storage)
    evil = pickle.dumps(Payload(tmp_path / "pwned"))
    if damage == "planted-tuner":
        (storage / "tuner.pkl").write_bytes(evil)
    elif damage == "planted-error":
        (storage / "abc12_00000" / "error.pkl").write_bytes(evil)
    elif damage == "newer-state":
        (storage / named).write_bytes(evil)
    else:
        (storage / "abc12_00000" / "params.pkl").unlink()
    with pytest.raises(UserError, match=rf"^sweep name: .*{kind} \[.*{named}.*--trust-storage"):
        trust.check_resume(storage, "s")
    assert trust.check_resume(storage, "s", trust=True)  # the user's explicit word, after reading the message
    assert not (tmp_path / "pwned").exists()


def test_a_driver_killed_left_no_manifest_so_only_trust_storage_resumes(tmp_path):
    storage = tune_folder(tmp_path / "runs" / "s")
    trust.write_manifest(storage)
    trust.forget_manifest(storage)  # what _run_tuner does before Tune touches its files
    with pytest.raises(UserError, match=r"did not stop cleanly .*tuner\.pkl.*--trust-storage"):
        trust.check_resume(storage, "s")
    assert trust.check_resume(storage, "s", trust=True)


@pytest.mark.parametrize("problem", ["other-writable", "group-writable", "foreign-owner", "symlink", "open-parent"])
def test_files_another_account_could_have_written_are_refused_even_with_trust(tmp_path, monkeypatch, problem):
    storage = tune_folder(tmp_path / "runs" / "s")
    trust.write_manifest(storage)
    if problem == "other-writable":
        os.chmod(storage / "abc12_00000" / "params.pkl", 0o646)
        match = r"params\.pkl' is writable by other accounts \(mode -rw-r--rw-\)"
    elif problem == "group-writable":
        monkeypatch.setattr(trust, "_private_group", lambda gid, uid: False)  # a shared group, not the user's own
        os.chmod(storage / "abc12_00000", 0o775)
        match = r"abc12_00000' is writable by other accounts"
    elif problem == "foreign-owner":
        monkeypatch.setattr(trust.os, "geteuid", lambda: os.getuid() + 4242)  # the files now belong to someone else
        match = "belongs to"
    elif problem == "symlink":
        target = tmp_path / "elsewhere.pkl"
        target.write_bytes(pickle.dumps(Payload(tmp_path / "pwned")))
        (storage / "tuner.pkl").unlink()
        (storage / "tuner.pkl").symlink_to(target)
        match = r"tuner\.pkl' is a symlink"
    else:
        os.chmod(tmp_path / "runs", 0o777)  # anyone could rename the sweep folder away and put theirs in its place
        match = r"runs' \(a folder above the sweep\) is writable by other accounts"
    for trusted in (False, True):
        with pytest.raises(UserError, match=match) as err:
            trust.check_resume(storage, "s", trust=trusted)
        assert "chmod -R go-w" in str(err.value)
    assert not (tmp_path / "pwned").exists()
    if problem == "open-parent":
        os.chmod(tmp_path / "runs", 0o777 | stat.S_ISVTX)  # sticky, as /tmp: others cannot rename our folders
        assert trust.check_resume(storage, "s")


@pytest.mark.parametrize("manifest", [True, False])
def test_the_job_refuses_a_planted_tuner_pkl_before_ray_starts(tmp_path, synthetic_task, tiny_backbone, capsys,
                                                               manifest):
    config = {"task": str(synthetic_task), "backbone": str(tiny_backbone), "r": 8, "max_steps": 20, "eval_steps": 10,
              "storage_path": str(tmp_path / "runs"), "mlflow_uri": f"sqlite:///{tmp_path / 'm.db'}",
              "sweep": {"space": {"m": [2, 4]}, "scheduler": "fifo"}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    storage = tune_folder(tmp_path / "runs" / "planted")
    (storage / "adept_sweep.json").unlink()  # else the settings differ first (that check reads JSON only)
    if manifest:
        trust.write_manifest(storage)
    (storage / "tuner.pkl").write_bytes(pickle.dumps(Payload(tmp_path / "pwned")))
    rc = tune_main(["--config", str(path), "--name", "planted"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    assert line.startswith("error: sweep name: ") and str(storage / "tuner.pkl") in line, err
    assert not (tmp_path / "pwned").exists() and not ray.is_initialized()
