"""Resume is exact and unpickled: an engine restored from a snapshot (safetensors-able tensors + JSON) continues
with the same losses, weights and AdamW moments as the engine that never stopped - DDP and DeepSpeed ZeRO 0-3."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.faults
WORKER = Path(__file__).with_name("resume_worker.py")


@pytest.mark.parametrize(("deepspeed", "stage", "precision", "accum"), [
    (0, 0, "fp32", 1), (0, 0, "fp32", 2), (1, 0, "fp32", 1), (1, 1, "fp32", 1), (1, 2, "fp32", 2), (1, 3, "fp32", 1),
    (1, 2, "bf16", 1)])
def test_restored_engine_continues_exactly(deepspeed, stage, precision, accum):
    path = os.pathsep.join(filter(None, [str(WORKER.parents[1]), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, str(WORKER), str(deepspeed), str(stage), precision, str(accum)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": path})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result["moments_nonzero"]  # the snapshot really carries AdamW state
    assert result["restore_diff"] == 0.0  # what was saved is what the fresh engine holds after restore()
    tol = 0.0 if precision == "fp32" else 1e-2  # bf16: the working copy is re-rounded from the fp32 master
    assert result["loss_diff"] <= tol and result["state_diff"] <= max(tol, 1e-6)
    assert result["lrs"][0] == result["lrs"][1]
