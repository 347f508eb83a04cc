"""A refused checkpoint is evidence: it is moved to `<run>/quarantine/<name>-<time>/` with its files intact, never
deleted, and leaves a stub that Ray Train's own records still point at (its retention deletes the stub, not the
evidence); a step reported again gets a fresh folder instead of the stub's."""

import json
import pickle

import pytest
from hostile import Payload
from hostile import write_checkpoint as write

from pipeline.worker import checkpoint as ckpt

pytestmark = pytest.mark.faults


def files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_refused_checkpoints_are_quarantined_intact_and_leave_a_stub(tmp_path):
    run = tmp_path / "run"
    good = write(run / "step_00000010", 10)
    changed = write(run / "step_00000020", 20)
    planted = write(run / "step_00000030", 30)
    (changed / ckpt.STATE).write_text('{"step": 99999}\n')
    (planted / "engine.pt").write_bytes(pickle.dumps(Payload(tmp_path / "pwned")))
    before = {p.name: files(p) for p in (changed, planted)}

    refused = []
    assert ckpt.latest_good(planted, refused) == good and refused == [planted, changed]
    moved = ckpt.quarantine(refused)
    assert [p.parent for p in moved] == [run / ckpt.QUARANTINE] * 2
    assert ckpt.quarantined(run) == sorted(moved)
    for target in moved:
        name = target.name.rsplit("-", 1)[0]
        assert files(target) == before[name]  # every file, byte for byte (the planted one too)
        stub = run / name
        assert ckpt.is_stub(stub) and json.loads((stub / ckpt.STUB).read_text())["moved_to"] == str(target)
    assert not (tmp_path / "pwned").exists()

    # A later resume (Ray still names the stub as its latest) skips the stubs without refusing them again.
    again = []
    assert ckpt.latest_good(planted, again) == good and again == []
    assert ckpt.quarantine([run / "step_00000030"]) == []  # a stub is never quarantined twice
    assert len(ckpt.quarantined(run)) == 2


def test_a_step_reported_again_after_a_fallback_gets_a_folder_of_its_own(tmp_path):
    run = tmp_path / "run"
    write(run / "step_00000010", 10)
    stub = write(run / "step_00000020", 20)
    (stub / ckpt.TENSORS).write_bytes(b"cut short")
    ckpt.quarantine([stub])
    name = ckpt.free_name(run, "step_00000020")
    assert name == "step_00000020-2" and ckpt.free_name(run, "step_00000030") == "step_00000030"
    write(run / name, 20)
    (run / "step_00000020-3").mkdir()
    assert ckpt.free_name(run, "step_00000020") == "step_00000020-4"
    # newest first: the re-reported step after its stub, before the next step and the final one
    assert sorted(["step_00000030", "step_00000020_final", name, "step_00000020"]) == [
        "step_00000020", name, "step_00000020_final", "step_00000030"]
    latest = write(run / "step_00000030", 30)
    (latest / "planted.bin").write_bytes(b"x")
    assert ckpt.latest_good(latest) == run / name


def test_when_no_checkpoint_verifies_nothing_is_moved(tmp_path):
    run = tmp_path / "run"
    only = write(run / "step_00000010", 10)
    (only / ckpt.STATE).write_text("{}")
    refused = []
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint of this run verifies"):
        ckpt.latest_good(only, refused)
    assert (only / ckpt.MANIFEST).is_file() and ckpt.quarantined(run) == []  # the recipe quarantines after a good read
