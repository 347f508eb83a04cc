"""The GPU check runs on the GPU machine's image as it is (issue 20): `benchmarks/gpu_run.sh --tiny` -- the same
command path as the GPU call (wheel install into a target folder, unbuffered check, JSON + log into an output
folder) -- runs every row type on tiny random backbones on the CPU with `ray`, `mlflow` and `datasets` made
unimportable, and writes the JSON schema the README tables are built from. The rest checks the pieces the numbers
come from (FLOP model, peak table, row plan, time budget, targets, tables) without running a model."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import gpu_check
import gpu_packed
import gpu_report
import gpu_rows
import pytest

pytestmark = pytest.mark.gpu_ready
ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("ray", "mlflow", "datasets")
# What makes the three unimportable in every Python the run starts: as on the GPU machine's image, `import ray`
# raises ImportError and importlib.util.find_spec("ray") is None (so libraries' optional imports step aside).
SITECUSTOMIZE = """
import os, sys
for name in {blocked!r}:
    sys.modules[name] = None
with open(os.path.join(os.path.dirname(__file__), "loaded-" + str(os.getpid())), "w") as f:
    f.write("blocked")
"""


def _probe_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel: proves gpu_run.sh installs what is carried into its target folder."""
    folder.mkdir(parents=True)
    path = folder / "adept_gpu_probe-0.0.1-py3-none-any.whl"
    info = "adept_gpu_probe-0.0.1.dist-info"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("adept_gpu_probe.py", "VALUE = 1\n")
        zf.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: adept-gpu-probe\nVersion: 0.0.1\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return path


@pytest.mark.slow
def test_dry_run_of_every_row_type_without_ray_mlflow_datasets(tmp_path):
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(SITECUSTOMIZE.format(blocked=BLOCKED))
    _probe_wheel(tmp_path / "wheels")
    out, site = tmp_path / "out", tmp_path / "site"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_SITE": str(site), "PYTHONPATH": str(block),
           "DS_ACCELERATOR": "cpu"}
    env.pop("OUT", None)
    proc = subprocess.run(["bash", "benchmarks/gpu_run.sh", "--tiny", "--out", str(out), "--wheels",
                           str(tmp_path / "wheels")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert list(block.glob("loaded-*")), "the blocking sitecustomize did not load in the run's Python"
    assert (site / "adept_gpu_probe.py").is_file(), "the carried wheels were not installed into the target folder"
    log = (out / "gpu-check.log").read_text()
    assert "[gpu_run] exit 0" in log and "| random:llama-tiny | 3 | adept |" in log

    report = json.loads((out / "gpu-check.json").read_text())
    assert report["schema"] == gpu_check.SCHEMA and report["complete"] and report["profile"] == "tiny"
    assert report["imported"] == {name: False for name in BLOCKED}
    assert {"device", "gpu", "peak_bf16_tflops", "torch", "transformers", "deepspeed", "flop_model", "budget_s",
            "wall_s", "command"} <= set(report)
    rows = report["rows"]
    train = [r for r in rows if r["item"] == "train"]
    expected = {(b, z, m) for b in ("random:llama-tiny", "shape:t5-tiny")
                for z, m in ((2, "adept"), (2, "dept"), (2, "prompt"), (3, "adept"))}
    assert {(r["backbone"], r["zero"], r["method"]) for r in train} == expected
    for r in train:
        assert r["status"] == "ok", r
        assert r["tokens_per_s"] > 0 and r["flops_per_step"] > 0 and r["step_ms"] > 0 and r["trainable"] > 0
        assert r["attention"] and "mfu" in r and "peak_mib" in r  # None on a CPU: no GPU peak, no GPU memory
    budget = {(r["backbone"], r["method"]): r["trainable"] for r in train if r["zero"] == 2}
    for b in ("random:llama-tiny", "shape:t5-tiny"):  # the same budget: ADePT / DePT <= PT's 100 x d
        assert budget[(b, "adept")] <= budget[(b, "prompt")] and budget[(b, "dept")] <= budget[(b, "prompt")]
    infer = [r for r in rows if r["item"] == "infer"]
    assert {(r["backbone"], r["variant"]) for r in infer} == {
        (b, v) for b in ("random:llama-tiny", "shape:t5-tiny") for v in ("bare+m", "adept", "adept_folded")}
    assert all(r["status"] == "ok" and r["latency_ms"] > 0 for r in infer)
    packed = [r for r in rows if r["item"] == "packed"]  # --tiny: K = 1, 2 on the tiny Llama, 2 x 16 per member
    assert [(r["backbone"], r["packs"]) for r in packed] == [("random:llama-tiny", 1), ("random:llama-tiny", 2)]
    for r in packed:
        assert r["status"] == "ok" and r["engine"] == "torch" and "zero" not in r, r
        assert r["step_ms"] > 0 and r["tokens_per_s"] > 0 and r["flops_per_step"] > 0 and r["finite"]
        assert r["tokens_per_s"] == pytest.approx(r["packs"] * r["batch"] * r["length"] / r["step_ms"] * 1000, rel=1e-2)
        assert r["tokens_per_s_per_member"] == pytest.approx(r["tokens_per_s"] / r["packs"], abs=0.1)
        assert r["pack_rows"] == r["packs"] * r["batch"] and r["label_tokens_per_member"] == r["batch"] * 8
        assert [(p["m"], p["r"]) for p in r["members"]] == [(60, 19), (40, 29)][:r["packs"]]  # d=64, 100-token budget
        assert r["trainable"] <= r["packs"] * 100 * r["d"] and "peak_mib" in r and r["attention"]
    one, two = packed
    assert one["tokens_per_s_vs_k1"] == 1.0 and two["tokens_per_s_vs_k1"] == round(
        two["tokens_per_s"] / one["tokens_per_s"], 3)
    assert two["members"][0]["prompt_lr"] != two["members"][1]["prompt_lr"] and two["pad_fraction"] > 0
    assert "| random:llama-tiny | 2 | (60, 19) x 1, (40, 29) x 1 | 2 x 16 |" in log
    assert {t["target"] for t in report["targets"]} == set(gpu_report.TARGETS)
    assert gpu_report.table(report) in proc.stdout  # the table printed is the one --table rebuilds from the JSON


def test_refuses_without_a_gpu(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out", str(tmp_path / "x.json")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "needs a CUDA GPU" in proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_peak_table_by_device_name():
    peaks = {"NVIDIA H200": 989.0, "NVIDIA H200 NVL": 835.0, "NVIDIA GH200 480GB": 989.0,
             "NVIDIA H100 80GB HBM3": 989.0, "NVIDIA H100 PCIe": 756.0, "NVIDIA H100 NVL": 835.0,
             "NVIDIA A100-SXM4-80GB": 312.0, "NVIDIA A100 80GB PCIe": 312.0, "NVIDIA L40S": 362.0, "NVIDIA L4": 121.0,
             "NVIDIA A10": 125.0, "Tesla T4": None, "NVIDIA GeForce RTX 3090": None}
    assert {name: gpu_report.peak_bf16_tflops(name) for name in peaks} == peaks


def test_flop_model_by_hand():
    causal = gpu_report.step_flops({"body": 10, "encoder": 0, "decoder": 0, "head": 5},
                                   {"d_attn": 4, "layers": 2, "decoder_layers": 2}, "causal", batch=2, length=3, m=1,
                                   head_positions=4)
    # S = 4: linear forward 2*(10*2*4 + 5*4) = 200, twice with the activation-gradient backward; attention forward
    # 2 layers * 4*B*S^2*d = 1024, three times with its backward.
    assert causal == 2 * 200 + 3 * 1024
    assert gpu_report.step_flops({"body": 10, "encoder": 0, "decoder": 0, "head": 5},
                                 {"d_attn": 4, "layers": 2, "decoder_layers": 2}, "causal", 2, 3, 1, 4,
                                 training=False) == 200 + 1024
    seq2seq = gpu_report.step_flops({"body": 0, "encoder": 10, "decoder": 6, "head": 5},
                                    {"d_attn": 4, "layers": 2, "decoder_layers": 1}, "seq2seq", batch=1, length=3, m=1,
                                    head_positions=8)
    # encoder S=4, decoder 8 tokens: linear 2*(10*4 + 6*8 + 5*8) = 256; attention 2*4*16*4 + (4*64*4 + 4*8*4*4)
    assert seq2seq == 2 * 256 + 3 * (512 + 1024 + 512)


def test_linear_weights_of_a_real_backbone():
    model, kind = gpu_rows.build_backbone("random:llama-tiny", "cpu", zero3=False)
    weights = gpu_report.linear_weights(model, kind)
    # 2 layers x (4 x 64 x 64 attention + 3 x 64 x 172 MLP); the untied head 512 x 64
    assert weights == {"body": 2 * (4 * 64 * 64 + 3 * 64 * 172), "encoder": 0, "decoder": 0, "head": 512 * 64}
    assert gpu_report.attention_dims(model.config) == {"d_attn": 64, "layers": 2, "decoder_layers": 2}
    t5, kind = gpu_rows.build_backbone("shape:t5-tiny", "cpu", zero3=False)
    weights = gpu_report.linear_weights(t5, kind)
    assert kind == "seq2seq" and weights["encoder"] == 2 * (4 * 64 * 64 + 2 * 64 * 128)
    assert weights["decoder"] == 2 * (8 * 64 * 64 + 2 * 64 * 128) and weights["head"] == 512 * 64


def test_every_profile_plans_every_row_type():
    for name, profile in gpu_check.PROFILES.items():
        rows = gpu_check.plan(profile)
        assert len({r.id for r in rows}) == len(rows), name
        for backbone in [*profile.backbones, *profile.skipped]:
            mine = {(r.item, r.zero, r.method) for r in rows if r.backbone == backbone and r.item != "packed"}
            assert mine == {("train", 2, "adept"), ("train", 2, "dept"), ("train", 2, "prompt"), ("train", 3, "adept"),
                            ("infer", None, "adept")}, (name, backbone)
        packed = [r for r in rows if r.item == "packed"]
        assert packed and all(r.status == "planned" and r.steps == profile.steps and r.zero is None for r in packed)
        assert [r.packs for r in packed] == [k for _ in profile.packed for k in profile.packs]
        assert profile.packs == ((1, 2) if name == "tiny" else (1, 4, 8, 16))
    full = {r.backbone for r in gpu_check.plan(gpu_check.PROFILES["full"]) if r.status == "planned"}
    assert full == {"random:llama-1b", "shape:llama-7b", "random:t5-base", "shape:smollm2-135m"}
    quick = gpu_check.plan(gpu_check.PROFILES["quick"])
    assert {r.status for r in quick if r.backbone == "shape:llama-7b" and r.item != "packed"} == {"skipped"}
    assert set(gpu_check.PROFILES["full"].packed) == {"shape:smollm2-135m", "random:llama-1b"}


def test_rows_that_would_not_fit_are_skipped_not_started():
    rows = gpu_check.plan(gpu_check.PROFILES["tiny"])
    ctx = gpu_rows.Context("cpu", gpu=False, peak_tflops=None, deadline=0.0)  # no time left at all
    seen = []
    results = gpu_check.run_rows(rows, ctx, lambda r: seen.append(len(r)))
    assert len(results) == len(rows) == len(seen)
    for row in results:
        assert row["status"] == "skipped" and row["reason"].startswith("time: needs ~")
    ctx.measured[("random:llama-tiny", "train")] = 123.0  # a measured row replaces the guess
    assert gpu_check.estimate_s(rows[0], ctx) == 123.0
    t5 = next(r for r in rows if r.backbone == "shape:t5-tiny" and r.item == "train")
    assert gpu_check.estimate_s(t5, ctx) == gpu_check.guess_s(t5)
    ctx.pace += [0.5, 0.4, 0.01]  # rows so far ran at ~half their guesses: the unmeasured guesses follow
    assert gpu_check.estimate_s(t5, ctx) == gpu_check.guess_s(t5) * 0.4


def test_packed_rows_estimate_from_the_last_measured_pack():
    rows = [r for r in gpu_check.plan(gpu_check.PROFILES["full"]) if r.backbone == "random:llama-1b"]
    k1, k4, k16 = (next(r for r in rows if r.packs == k) for k in (1, 4, 16))
    a, b = gpu_packed.EST_S["random:llama-1b"]
    assert gpu_check.guess_s(k16) == a + 16 * b and k16.kind == "packed/K16"
    ctx = gpu_rows.Context("cpu", gpu=False, peak_tflops=None, deadline=0.0)
    assert gpu_check.estimate_s(k4, ctx) == gpu_check.guess_s(k4)  # nothing measured, no pace yet
    ctx.measured[("random:llama-1b", "train")] = 5.0  # another kind: not a pack's measure
    ctx.measured[("shape:smollm2-135m", "packed/K4")] = 1.0  # another backbone
    ctx.measured[("random:llama-1b", "packed/K1")] = 20.0
    assert gpu_check.estimate_s(k16, ctx) == pytest.approx(20.0 * (a + 16 * b) / (a + b))
    ctx.measured[("random:llama-1b", "packed/K4")] = 30.0  # the largest measured pack wins
    assert gpu_check.estimate_s(k16, ctx) == pytest.approx(30.0 * (a + 16 * b) / (a + 4 * b))
    assert gpu_check.estimate_s(k1, ctx) == 20.0


def test_packed_members_share_the_budget_and_vary_their_rates():
    members = gpu_packed.member_plan(16, 576)  # smollm2-135m's d
    assert {(p["m"], p["r"]) for p in members[0::2]} == {(60, 19)} and {(p["m"], p["r"]) for p in members[1::2]} == {
        (40, 29)}
    for p in members[:2]:  # both shapes within ADePT's 100-token budget: m*d + 2dr + r + d <= 100*d
        assert p["m"] * 576 + 2 * 576 * p["r"] + p["r"] + 576 <= 100 * 576
    assert len({(p["prompt_lr"], p["offset_lr"]) for p in members}) == 6
    assert gpu_packed.shapes(members[:3]) == "(60, 19) x 2, (40, 29) x 1"


def _report(rows):
    profile = gpu_check.PROFILES["full"]
    return {"device": "NVIDIA H200", "profile": "full", "torch": "2.11", "transformers": "5.17", "deepspeed": "0.19.8",
            "peak_bf16_tflops": 989.0, "wall_s": 1.0, "complete": True, "rows": rows,
            "targets": gpu_report.check_targets(rows, profile)}


def test_targets_and_tables_from_rows():
    seven = "shape:llama-7b"

    def train(method, zero, step_ms, peak, mfu=None):
        return {"id": f"train/{seven}/{zero}/{method}", "item": "train", "backbone": seven, "method": method,
                "zero": zero, "status": "ok", "step_ms": step_ms, "peak_mib": peak, "mfu": mfu, "r": 8,
                "trainable": 409600, "batch": 8, "length": 1024, "step_ms_min": step_ms, "step_ms_max": step_ms,
                "tokens_per_s": 8192 / step_ms * 1000, "model_tflops": 400.0, "attention": "sdpa/flash"}

    def infer(variant, ms):
        return {"id": f"infer/{seven}/{variant}", "item": "infer", "backbone": seven, "variant": variant, "status": "ok",
                "latency_ms": ms, "latency_ms_min": ms, "latency_ms_max": ms, "ratio_vs_bare": ms / 100,
                "batch": 8, "length": 1024, "attention": "sdpa/flash"}

    def packed(k, step_ms, peak):
        members = [{"m": 60, "r": 19}, {"m": 40, "r": 29}] * (k // 2) or [{"m": 60, "r": 19}]
        return {"id": f"packed/random:llama-1b/K{k}", "item": "packed", "backbone": "random:llama-1b", "packs": k,
                "status": "ok", "batch": 8, "length": 256, "engine": "torch", "members": members,
                "member_shapes": gpu_packed.shapes(members), "step_ms": step_ms, "step_ms_min": step_ms,
                "step_ms_max": step_ms, "tokens_per_s": k * 2048 / step_ms * 1000,
                "tokens_per_s_per_member": 2048 / step_ms * 1000, "model_tflops": 100.0, "mfu": 0.1, "peak_mib": peak}

    rows = [train("adept", 2, 500.0, 60000.0, mfu=0.47), train("dept", 2, 520.0, 60000.0),
            train("prompt", 2, 600.0, 62000.0), train("adept", 3, 700.0, 61000.0),
            infer("bare+m", 100.0), infer("adept", 110.0), infer("adept_folded", 101.0),
            {"id": "train/random:t5-base/2/adept", "item": "train", "backbone": "random:t5-base", "method": "adept",
             "zero": 2, "status": "skipped", "reason": "time: needs ~10 s, 3 s of the budget left", "batch": 16,
             "length": 512},
            packed(1, 100.0, 2000.0), packed(4, 160.0, 5000.0),
            {"id": "packed/random:llama-1b/K16", "item": "packed", "backbone": "random:llama-1b", "packs": 16,
             "batch": 8, "length": 256, "status": "skipped", "reason": "time: needs ~16 s, 3 s of the budget left"}]
    gpu_packed.add_scaling(rows)
    report = _report(rows)
    targets = {(t["target"], t["where"]): t for t in report["targets"]}
    assert targets[("adept_mfu", seven)]["met"] is True and targets[("adept_mfu", seven)]["value"] == 0.47
    assert targets[("folded_vs_bare", seven)]["value"] == 1.01 and targets[("folded_vs_bare", seven)]["met"]
    assert targets[("adept_vs_pt_step", seven)]["value"] == round(500 / 600, 4)
    assert targets[("adept_vs_pt_step", seven)]["met"] is True
    assert targets[("zero3_vs_zero2_memory", seven)]["met"] is False  # 61000 > 60000
    assert targets[("adept_vs_pt_step", "random:t5-base")]["met"] is None  # its rows did not run
    text = gpu_report.table(report)
    assert "| shape:llama-7b | 2 | adept | 8 | 409,600 | 8 x 1024 | 500.0 [500.0-500.0] | 16,384 | 400.0 | 47.0% |" in text
    assert "skipped: time: needs ~10 s" in text
    assert rows[-2]["tokens_per_s_vs_k1"] == 2.5 and rows[-2]["peak_vs_k1"] == 2.5 and "tokens_per_s_vs_k1" not in rows[-1]
    assert ("| random:llama-1b | 4 | (60, 19) x 2, (40, 29) x 2 | 8 x 256 | 160.0 [160.0-160.0] | 51,200 | 12,800 | "
            "2.50x | 100.0 | 10.0% | 5000.0 (2.50x) | torch | ok |") in text
    assert "| random:llama-1b | 16 | - | 8 x 256 | - | - | - | - | - | - | - | torch | skipped: time: needs ~16 s" in text
    assert "| **no** |" in text


def test_table_of_a_result_file(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_report([])))
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--table", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("NVIDIA H200 (full)"), proc.stderr
