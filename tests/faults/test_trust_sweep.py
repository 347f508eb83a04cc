"""A real sweep: its driver records Tune's files when Tune stops; a `tuner.pkl` planted afterwards is refused by
name on the re-run (exit 2, never unpickled); a driver killed mid-sweep left no record, so the sweep resumes only
with `--trust-storage`, and then records Tune's files again."""

import json
import pickle

import pytest
import yaml
from hostile import Payload

from jobs.tune_adept import main
from pipeline.driver.tune import trust

pytestmark = [pytest.mark.slow, pytest.mark.faults]


def test_a_sweep_resumes_only_from_the_state_its_driver_left(synthetic_task, tiny_backbone, tmp_path, capsys):
    data = {"task": str(synthetic_task), "backbone": str(tiny_backbone), "num_virtual_tokens": 4, "r": 8,
            "prompt_lr": 0.3, "offset_lr": 0.03, "warmup_steps": 0, "max_steps": 10, "eval_steps": 10, "log_steps": 10,
            "batch_size": 16, "max_source_length": 32, "max_target_length": 4, "deepspeed": False,
            "storage_path": str(tmp_path / "runs"), "mlflow_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "experiment": "sweeps", "sweep": {"name": "guarded", "space": {"m": [4]}, "num_samples": 1,
                                              "scheduler": "fifo"}}
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(data))
    assert main(["--config", str(config)]) == 0
    storage = tmp_path / "runs" / "guarded"
    listed = json.loads((storage / trust.MANIFEST).read_text())["files"]
    assert "tuner.pkl" in listed and any(f.startswith("experiment_state-") for f in listed), sorted(listed)
    tune_pickles = {str(p.relative_to(storage)) for p in storage.rglob("*.pkl")
                    if p.relative_to(storage).parts[0] not in trust.NOT_TUNE}
    assert tune_pickles <= set(listed), sorted(tune_pickles - set(listed))

    honest = (storage / "tuner.pkl").read_bytes()
    (storage / "tuner.pkl").write_bytes(pickle.dumps(Payload(tmp_path / "pwned")))
    capsys.readouterr()
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    assert line.startswith("error: sweep name: ") and f"changed ['{storage / 'tuner.pkl'}']" in line, err
    assert not (tmp_path / "pwned").exists()

    (storage / "tuner.pkl").write_bytes(honest)
    (storage / trust.MANIFEST).unlink()  # as a driver SIGKILLed while Tune ran leaves it
    assert main(["--config", str(config)]) == 2
    assert "did not stop cleanly" in capsys.readouterr().err
    assert main(["--config", str(config), "--trust-storage"]) == 0
    assert "resuming sweep 'guarded'" in capsys.readouterr().out
    assert trust.check_resume(storage, "guarded")  # recorded again when Tune stopped: the next re-run needs no flag
