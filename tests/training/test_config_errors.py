"""Every bad configuration fails with a clear message before Ray starts a worker."""

import pytest
import ray

from jobs.train_adept import main
from pipeline.core.config import TrainConfig

pytestmark = pytest.mark.usefixtures("no_ray")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "learning_rate=0.3"], "unknown config key"),
        (["--batch-size", "10", "--num-workers", "3"], "not divisible"),
        (["--budget", "4", "--m", "4"], "impossible budget"),
        (["--set", "precision=fp16"], "fp16"),
        (["--zero-stage", "5"], "zero_stage"),
        (["--set", "zero3_live_params=-1"], "zero3_live_params=-1 must be an integer >= 0"),
        (["--eval-steps", "50", "--max-steps", "10"], "never evaluate"),
        (["--method", "prompt", "--r", "8"], "method='prompt' has no r"),
        (["--set", "eval_mode=beam"], "eval_mode"),
        (["--mlflow-uri", "http://127.0.0.1:9"], "not reachable"),
    ],
)
def test_bad_config_fails_before_ray(extra, message, synthetic_task, tiny_backbone, tmp_path, capsys):
    r = [] if "--budget" in extra or "prompt" in extra else ["--r", "8"]
    argv = ["--task", str(synthetic_task), "--backbone", str(tiny_backbone), *r,
            "--storage-path", str(tmp_path / "runs"), "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}", *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not ray.is_initialized()
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_missing_task_file_and_backbone_folder(tmp_path, tiny_backbone, capsys):
    assert main(["--task", str(tmp_path / "nope.yaml"), "--backbone", str(tiny_backbone), "--r", "8"]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    assert main(["--task", "movie-sentiment", "--backbone", str(tmp_path / "no-model"), "--r", "8"]) == 2
    assert "no-model" in capsys.readouterr().err
    assert not ray.is_initialized()


def test_yaml_values_are_coerced_and_overrides_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: adept\nr: 19\nprompt_lr: 3e-1\noffset_lr: 1\nmax_steps: 100.0\neval_steps: 50\n")
    cfg = TrainConfig.load(path, ["offset_lr=5e-3", "name=my-run"])
    assert cfg.prompt_lr == 0.3 and cfg.offset_lr == 0.005 and cfg.max_steps == 100 and cfg.name == "my-run"
    with pytest.raises(ValueError, match="key=value"):
        TrainConfig.load(None, ["oops"])
