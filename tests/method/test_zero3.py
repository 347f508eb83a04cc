import json
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
    assert result["partitioned"]
    assert result["prompt_init_matches_unsharded"]
    assert result["losses"][-1] < result["losses"][0]
    assert result["saved_shapes"] == {"prompt.weight": [4, 32], "ffn.w1": [32, 3], "ffn.b1": [3], "ffn.w2": [3, 32],
                                      "ffn.b2": [32]}
    assert result["folded_table_shape"] == [37, 32]
    assert result["fold_refused"]
    assert result["reload_matches"]
    assert result["worker_imports_this_checkout"]
    # the fast paths under ZeRO-3 (partitioned backbone): LM head at labelled positions, one-pass rank scoring
    assert result["loss_only_abs_diff"] <= 1e-5
    assert result["one_pass_max_abs_diff"] <= 1e-4
