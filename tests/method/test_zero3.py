import json
import math
import os
import subprocess
import sys
from pathlib import Path


def test_adapter_under_deepspeed_zero3():
    """Prompt init, training, saving and the folded table all see gathered weights under ZeRO-3."""
    worker = Path(__file__).with_name("zero3_worker.py")
    # The worker imports the shared test helpers (tests/tiny.py) as the tests do: tests/ on its PYTHONPATH, and
    # this checkout's adept/pipeline (the repo root first: an editable install may point at another checkout).
    path = os.pathsep.join(filter(None, [str(worker.parents[2]), str(worker.parents[1]), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, str(worker)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": path})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result["embedding_shape"] == [0]  # the backbone is partitioned
    assert len(result["prompt_init"]) == 4 and len(result["prompt_init"][0]) == 32
    assert result["prompt_init"] == result["prompt_init_unsharded"]  # text init gathered the partitioned vocabulary
    assert any(v != 0 for row in result["prompt_init"] for v in row)
    losses = result["losses"]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert result["saved_shapes"] == {"prompt.weight": [4, 32], "ffn.w1": [32, 3], "ffn.b1": [3], "ffn.w2": [3, 32],
                                      "ffn.b2": [32]}
    assert result["folded_table_shape"] == [37, 32]
    assert result["fold_error"] is not None and "ZeRO-3 has partitioned" in result["fold_error"]
    assert set(result["reloaded"]) == set(result["saved"]) == set(result["saved_shapes"])
    for name, values in result["saved"].items():  # the saved adapter reloads bit for bit into a plain model
        assert result["reloaded"][name] == values, name
    assert Path(result["adept_file"]).parents[1] == worker.parents[2]  # the worker ran this checkout's adept
    # the fast paths under ZeRO-3 (partitioned backbone): LM head at labelled positions, one-pass rank scoring
    assert math.isfinite(result["loss_full"]) and abs(result["loss_only"] - result["loss_full"]) <= 1e-5
    one_pass, reference = result["scores_one_pass"], result["scores_reference"]
    assert len(one_pass) == len(reference) == 3 and all(len(row) == 2 for row in one_pass + reference)
    assert max(abs(a - b) for ra, rb in zip(one_pass, reference, strict=True) for a, b in zip(ra, rb, strict=True)) <= 1e-4
