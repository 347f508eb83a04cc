"""benchmarks/gpu_check.py refuses without a GPU, and its code path (the pipeline's engines, ZeRO-2 and ZeRO-3,
bf16, folded inference) runs end to end on the CPU with the tiny random backbone (`--allow-cpu`)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.scale, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def test_refuses_without_a_gpu():
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "needs a CUDA GPU" in proc.stderr


def test_runs_end_to_end_on_the_tiny_backbone(tmp_path):
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--allow-cpu", "--backbones",
                           "random:llama-tiny", "--length", "16", "--batch", "2", "--steps", "1", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    train = [r for r in rows if r["item"] == "train"]
    assert {(r["stage"], r["method"]) for r in train} == {(s, m) for s in (2, 3) for m in ("adept", "dept", "prompt")}
    assert all(r["tokens_per_s"] > 0 for r in train)
    assert {r["variant"] for r in rows if r["item"] == "infer"} == {"backbone+m", "adept", "adept_folded"}
    assert "| random:llama-tiny | 3 | adept |" in proc.stdout
