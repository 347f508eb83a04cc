"""A learnable synthetic sentiment task and a tiny Llama backbone folder, written to disk for real fits."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import yaml
from tiny import tiny_llama, tiny_tokenizer

POSITIVE, NEGATIVE, NEUTRAL = ["good", "great"], ["bad", "awful"], ["movie", "film", "plot", "acting", "the", "a"]


def sentence(rng: random.Random) -> tuple[str, int]:
    label = rng.randint(0, 1)
    words = [rng.choice(POSITIVE if label else NEGATIVE) for _ in range(rng.randint(1, 2))]
    words += [rng.choice(NEUTRAL) for _ in range(rng.randint(2, 4))]
    rng.shuffle(words)
    return " ".join(words), label


def write_task(folder: Path, n_train: int = 256, n_eval: int = 64, seed: int = 0) -> Path:
    """CSV files + a custom-task YAML; returns the YAML path. Chance accuracy is 50%."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("validation", n_eval), ("test", n_eval)):
        with (folder / f"{split}.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["sentence", "label"])
            writer.writerows(sentence(rng) for _ in range(n))
    spec = {
        "name": "synthetic-sentiment", "train": str(folder / "train.csv"),
        "validation": str(folder / "validation.csv"), "test": str(folder / "test.csv"),
        "input_columns": ["sentence"], "label_column": "label", "task_type": "classification",
        "verbalizer": {0: "negative", 1: "positive"}, "metrics": ["accuracy"],
    }
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def write_backbone(folder: Path) -> Path:
    model, tok = tiny_llama(hidden_size=32), tiny_tokenizer()
    tok.padding_side = "right"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
