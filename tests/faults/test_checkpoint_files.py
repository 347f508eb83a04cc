"""A checkpoint is loaded only after its manifest checks out: a planted, changed, missing or partial file is
refused with its path named, and the run falls back to its newest earlier checkpoint that verifies."""

import json
import pickle

import pytest
import torch
from hostile import Payload
from hostile import write_checkpoint as write

from pipeline.worker import checkpoint as ckpt

pytestmark = pytest.mark.faults


def test_a_written_checkpoint_verifies_and_reads_back(tmp_path):
    folder = write(tmp_path / "step_00000010", 10)
    state, tensors = ckpt.read(folder)
    assert state["step"] == 10 and torch.equal(tensors["param/prompt.weight"], torch.ones(2, 3))
    assert ckpt.rank_rng(state, tensors, 0) is not None and ckpt.rank_rng(state, tensors, 1) is None
    manifest = json.loads((folder / ckpt.MANIFEST).read_text())
    assert set(manifest["files"]) == {"adapter/adept_config.json", ckpt.TENSORS, ckpt.STATE}


def test_a_planted_pickle_is_named_and_never_loaded(tmp_path):
    folder = write(tmp_path / "step_00000020", 20)
    planted = folder / "engine" / "state" / "mp_rank_00_model_states.pt"
    planted.parent.mkdir(parents=True)
    planted.write_bytes(pickle.dumps(Payload(tmp_path / "pwned")))
    with pytest.raises(ckpt.CheckpointError, match="mp_rank_00_model_states.pt"):
        ckpt.verify(folder)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("damage", ["changed", "missing", "no-manifest", "bad-manifest"])
def test_damaged_checkpoints_are_refused_with_the_file_named(tmp_path, damage):
    folder = write(tmp_path / "step_00000030", 30)
    if damage == "changed":
        (folder / ckpt.STATE).write_text('{"step": 99999}\n')
        match = ckpt.STATE
    elif damage == "missing":
        (folder / ckpt.TENSORS).unlink()
        match = ckpt.TENSORS
    elif damage == "no-manifest":
        (folder / ckpt.MANIFEST).unlink()
        match = "partial"
    else:
        (folder / ckpt.MANIFEST).write_text("{not json")
        match = "unreadable"
    with pytest.raises(ckpt.CheckpointError, match=match):
        ckpt.read(folder)


def test_latest_good_falls_back_to_the_newest_earlier_checkpoint(tmp_path):
    run = tmp_path / "run"
    write(run / "step_00000010", 10)
    write(run / "step_00000020", 20)
    latest = write(run / "step_00000030", 30)
    (latest / ckpt.TENSORS).write_bytes(b"garbage")
    (run / "step_00000020" / ckpt.MANIFEST).unlink()  # partial
    assert ckpt.latest_good(latest) == run / "step_00000010"
    (run / "step_00000010" / ckpt.STATE).write_text("{}")
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint of this run verifies"):
        ckpt.latest_good(latest)
