"""What the real-fit tests of this folder share: the job's arguments for the synthetic task, its checkpoints."""


def args(task, backbone, tmp_path, *extra):
    return ["--task", str(task), "--backbone", str(backbone), "--m", "4", "--r", "8", "--batch-size", "16",
            "--prompt-lr", "0.3", "--offset-lr", "0.03", "--storage-path", str(tmp_path / "runs"),
            "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--set", "warmup_steps=0", "--set", "log_steps=10", "--set", "max_source_length=32",
            "--set", "max_target_length=4", *extra]


def checkpoints(tmp_path, name):
    return sorted((tmp_path / "runs" / name).glob("step_*"))
