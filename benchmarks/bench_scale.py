"""Scale rows (issue 12): per-worker memory under ZeRO-3 on a ~1B backbone, and bf16 against fp32.

    python benchmarks/run.py --items scale                  # both parts (~15 min on 2 CPU cores)
    python benchmarks/bench_scale.py --part memory          # only the ZeRO-3 memory rows

**Memory** runs the real job (`jobs/train_adept.py`: Ray Train, DeepSpeed ZeRO-3, fp32) on `random:llama-1b`
(1.04e9 parameters, built already partitioned) for a few steps with 1 worker, 2 workers, and 2 workers with the
optimizer offloaded, and reads each worker's resident memory from the job's own MLflow metrics: the peak
(VmHWM) minus what the process held before it built the model and the data (imports, Ray). The ratio of
2-worker to 1-worker per-worker memory is the row that matters (target ≤ 0.6×: ZeRO-3 really partitions the
frozen backbone). This run doubles as the 2-worker ZeRO-3 fit of ADePT on the 1B model.

**bf16** times, in one process and interleaved per round, a training step (forward with loss + backward +
AdamW; the DDP engine's way: autocast bf16 over fp32 weights) and an eval forward, bf16 against fp32, for
ADePT, DePT and prompt tuning at the same budget, and reports bf16/fp32 per method (median of the rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MEMORY_RUNS = {"1 worker": ["--num-workers", "1"], "2 workers": ["--num-workers", "2"],
               "2 workers + offload": ["--num-workers", "2", "--set", "offload=true"]}


def memory_rows(backbone: str = "random:llama-1b", steps: int = 2, precision: str = "fp32", log=print,
                runs: list[str] | None = None) -> list[dict]:
    """fp32 by default: CPUs without AVX-512 BF16 (this project's 2-core machines) run bf16 matmuls ~12× slower."""
    from pipeline.tracking import search_runs

    rows = []
    for label, extra in MEMORY_RUNS.items():
        if runs and label not in runs:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            uri = f"sqlite:///{tmp}/mlflow.db"
            cmd = [sys.executable, str(ROOT / "jobs" / "train_adept.py"), "--task", "movie-sentiment",
                   "--backbone", backbone, "--method", "adept", "--m", "8", "--budget", "100", "--batch-size", "2",
                   "--max-steps", str(steps), "--eval-steps", str(steps), "--zero-stage", "3", "--precision", precision,
                   "--storage-path", f"{tmp}/runs", "--mlflow-uri", uri, "--name", "bench-scale", "--quiet",
                   "--set", f"dtype={'bfloat16' if precision == 'bf16' else 'float32'}", "--set", "max_source_length=48",
                   "--set", "max_target_length=8",
                   "--set", "max_train_examples=64", "--set", "max_eval_examples=4", "--set", "warmup_steps=0",
                   "--set", "prompt_init=sample_vocab", "--set", "eval_batch_size=4", *extra]
            log(f"[scale] {label}: {backbone}, ZeRO-3 {precision}, {steps} steps ...")
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise RuntimeError(f"{label}: the fit failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            (run,) = search_runs(uri, experiment="adept")
            m = run.data.metrics
            workers = int(extra[1])
            added = [m[f"perf/peak_rss_mib_r{k}"] - m[f"perf/rss_before_model_mib_r{k}"] for k in range(workers)]
            rows.append({"item": "scale_memory", "run": label, "backbone": backbone, "workers": workers,
                         "precision": precision,
                         "peak_rss_mib": [m[f"perf/peak_rss_mib_r{k}"] for k in range(workers)],
                         "added_mib": added, "added_mib_per_worker": max(added), "wall_s": round(wall, 1),
                         "params_held_mib": [m[f"perf/params_held_mib_r{k}"] for k in range(workers)],
                         "step_s": m.get("perf/step_s"), "val_accuracy": m.get("val/accuracy")})
            log(f"[scale] {label}: +{max(added):.0f} MiB per worker (peak {rows[-1]['peak_rss_mib']}), parameters held "
                f"{[round(v) for v in rows[-1]['params_held_mib']]} MiB, {wall:.0f} s")
    if rows and rows[0]["workers"] == 1:
        one, held = rows[0]["added_mib_per_worker"], max(rows[0]["params_held_mib"])
        for row in rows:  # per-worker peak memory added by model + data, and the parameter part alone
            row["ratio_vs_1_worker"] = round(row["added_mib_per_worker"] / one, 3)
            row["params_ratio_vs_1_worker"] = round(max(row["params_held_mib"]) / held, 3)
    return rows


def bf16_rows(backbone: str = "smollm2-135m", length: int = 64, batch: int = 2, rounds: int = 7,
              log=print) -> list[dict]:
    import bench_common as bc
    import torch

    if backbone == bc.SMOLLM2 and not bc.smollm2_cached():
        log(f"[scale] {backbone} is not in the cache: bf16 rows use the tiny backbone")
        backbone = "tiny"
    base = bc.load_backbone(backbone)
    rows = []
    for method in bc.METHODS:
        model = bc.build_adapter(base, bc.method_spec(method, base.config.hidden_size))
        ids = torch.randint(4, base.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0))
        labels = ids.clone()
        labels[:, :-4] = -100
        for what, times in _time_bf16(model, ids, labels, rounds).items():
            ratios = [b / f for b, f in zip(times[True], times[False], strict=True)]
            rows.append({"item": "scale_bf16", "backbone": backbone, "method": method, "what": what, "L": length,
                         "batch": batch, "fp32_ms": round(statistics.median(times[False]) * 1000, 1),
                         "bf16_ms": round(statistics.median(times[True]) * 1000, 1),
                         "ratio": round(statistics.median(ratios), 3), "ratio_min": round(min(ratios), 3),
                         "ratio_max": round(max(ratios), 3)})
            log(f"[scale] bf16/fp32 {backbone} {method} {what}: {rows[-1]['ratio']}")
    return rows


def _time_bf16(model, ids, labels, rounds: int) -> dict[str, dict[bool, list[float]]]:
    """Seconds per call, fp32 and bf16 alternating in each round (the first round warms both up)."""
    import torch

    optimizer = torch.optim.AdamW(model.parameter_groups(1e-2, 1e-4), eps=1e-6)

    def train(bf16: bool) -> None:  # what the DDP engine runs: autocast over fp32 weights, LM head where labelled
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=labels, loss_only=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def infer(bf16: bool) -> None:
        model.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(input_ids=ids)

    out = {}
    for what, call in (("train", train), ("infer", infer)):
        times = {False: [], True: []}
        for i in range(rounds + 1):
            for bf16 in (False, True) if i % 2 else (True, False):
                t = time.perf_counter()
                call(bf16)
                if i:
                    times[bf16].append(time.perf_counter() - t)
        out[what] = times
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["memory", "bf16", "both"], default="both")
    p.add_argument("--bf16-backbone", default="smollm2-135m", help="bf16 rows: smollm2-135m (if cached) or tiny")
    p.add_argument("--rounds", type=int, default=7, help="bf16 rows: interleaved rounds")
    p.add_argument("--steps", type=int, default=2, help="memory rows: training steps per fit")
    p.add_argument("--runs", default=",".join(MEMORY_RUNS), help=f"memory rows, comma-separated: {', '.join(MEMORY_RUNS)}")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    rows = []
    if args.part in ("bf16", "both"):
        rows += bf16_rows(args.bf16_backbone, rounds=args.rounds)
    if args.part in ("memory", "both"):
        rows += memory_rows(steps=args.steps, runs=args.runs.split(","))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}  # glibc's allocator settings, if any
    args.out.write_text(json.dumps({"rows": rows, "command": " ".join(["python", *sys.argv]), "env": env,
                                    "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1) + "\n")
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
