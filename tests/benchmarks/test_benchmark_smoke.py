"""`benchmarks/run.py --quick` runs end to end and its JSON has every row, with positive numbers.

No timing asserts: the numbers depend on the machine and its load; only their presence is checked.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "benchmarks" / "run.py"
METHODS = {"adept", "dept", "prompt"}
LENGTHS = (64,)  # one input length keeps the smoke test short; the benchmark's default is 64,256
VARIANTS = {"backbone+m", "control", "backbone", "adept", "adept_folded", "dept", "prompt"}


def _run(tmp_path, *args, env=None):
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, str(RUN), *args, "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def _positive(stat):
    return stat["median"] > 0 and stat["min"] > 0 and stat["max"] >= stat["min"] and stat["n"] >= 5


@pytest.mark.slow
def test_quick_run_writes_every_row(tmp_path):
    result, stdout = _run(tmp_path, "--quick", "--backbones", "tiny", "--lengths", "64",
                            "--pipeline-runners", "bare,ray1,ray_zero2")
    rows = result["rows"]

    train = {(r["length"], r["method"]): r for r in rows if r["item"] == "train"}
    assert set(train) == {(length, m) for length in LENGTHS for m in METHODS}
    for r in train.values():
        assert r["backbone"] == "tiny" and _positive(r["step_ms"]) and _positive(r["ratio"])
        assert r["peak_mem_delta_mib"] > 0 and r["mem_ratio"] > 0
        assert 0 < r["trainable_params"] <= r["budget_params"] == 100 * 768
    assert {(r["method"], r["r"]) for r in train.values()} == {("adept", 19), ("dept", 30), ("prompt", None)}

    infer = {(r["length"], r["variant"]): r for r in rows if r["item"] == "inference"}
    assert set(infer) == {(length, v) for length in LENGTHS for v in VARIANTS}
    for r in infer.values():
        assert _positive(r["latency_ms"]) and _positive(r["ratio"]) and r["seq_per_s"] > 0
    for length in LENGTHS:
        for v in ("adept", "adept_folded"):
            r = infer[(length, v)]
            assert r["accounted_ratio"] > 0 and _positive(r["input_prep_ms"]) and _positive(r["lookup_ms"])
    assert {(t["length"], t["variant"]) for t in result["targets"]} == {
        (length, v) for length in LENGTHS for v in ("adept", "adept_folded")}
    assert all(t["verdict"] and t["control"]["median"] > 0 for t in result["targets"])

    pipeline = {r["runner"]: r for r in rows if r["item"] == "pipeline"}
    assert set(pipeline) == {"bare", "ray1", "ray_zero2"}
    for r in pipeline.values():
        assert r["startup_s"] > 0 and _positive(r["step_ms"]) and _positive(r["ratio"]) and r["tokens_per_s"] > 0
    assert pipeline["bare"]["ratio"]["median"] == pytest.approx(1.0)
    # the Ray Train workers ran the same work: same model, same first batch, same loss
    for name in ("ray1", "ray_zero2"):
        assert pipeline[name]["notes"]["first_loss"] == pytest.approx(pipeline["bare"]["notes"]["first_loss"], rel=1e-5)

    machine = result["meta"]["machine"]
    assert machine["torch_threads"] >= 1 and machine["torch"] and machine["cpu"]
    for heading in ("### 1. Train step", "### 2. Inference", "#### Targets", "### 3. Pipeline overhead"):
        assert heading in stdout


def test_missing_smollm2_is_skipped_not_downloaded(tmp_path):
    env = {**os.environ, "ADEPT_CACHE_DIR": str(tmp_path / "empty-cache"), "PIP_INDEX_URL": "http://127.0.0.1:9/"}
    result, _ = _run(tmp_path, "--quick", "--backbones", "smollm2-135m", "--items", "infer", env=env)
    assert result["rows"] == [] and result["targets"] == []
    assert any("not in the cache" in note for note in result["meta"]["notes"])
    assert not (tmp_path / "empty-cache").exists()
