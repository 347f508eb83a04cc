"""Sweep efficiency (issue 14): does ASHA find the paper-style grid's best adapter for less compute?

    python benchmarks/run.py --items sweep             # the demo's model and data, a 3×3 learning-rate grid
    python benchmarks/bench_sweep.py --config configs/demo.yaml --max-steps 60
    python benchmarks/bench_sweep.py --tiny            # the tests' synthetic task on a tiny Llama: minutes

The same space - prompt_lr ∈ {3e-3, 1e-2, 3e-2} × offset_lr ∈ {1e-4, 3e-4, 1e-3} on the demo's base settings
(SmolLM2-135M + movie-sentiment, ADePT m=8 at a budget of 100·d) - runs twice through `jobs/tune_adept.py`:
(a) as the paper tunes, every grid point to `max_steps` (scheduler fifo), and (b) with ASHA (the demo's rungs:
grace 20 steps, reduction factor 2). Both read the sweep's own summary: the training steps every trial ran,
the wall time, the best validation score and the test score of that best adapter. Target: ASHA within 0.5
points of the grid's best validation score for ≤ 50 % of its training steps.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPACE = {"prompt_lr": {"grid": [3.0e-3, 1.0e-2, 3.0e-2]}, "offset_lr": {"grid": [1.0e-4, 3.0e-4, 1.0e-3]}}


TINY_SPACE = {"prompt_lr": {"grid": [3.0e-2, 1.0e-1, 3.0e-1]}, "offset_lr": {"grid": [3.0e-3, 1.0e-2, 3.0e-2]}}


def tiny_config(folder: Path) -> Path:
    """`--tiny`: the test suite's learnable synthetic task and 2-layer Llama (d=32), in a sweep config of the
    demo's shape (ASHA rungs at 20 / 40 of 60 steps); minutes instead of an hour, the same two sweeps."""
    import yaml

    sys.path.insert(0, str(ROOT / "tests"))
    from synthetic import write_backbone, write_task

    task, backbone = write_task(folder / "task"), write_backbone(folder / "backbone")
    base = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    base.update(task=str(task), backbone=str(backbone), num_virtual_tokens=4, budget=None, r=8,
                prompt_init_text=None, batch_size=16, warmup_steps=0, max_source_length=32, max_target_length=4,
                max_train_examples=None, experiment="bench-sweep-tiny")
    path = folder / "sweep-tiny.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def run_sweep(config: Path, scheduler: str, max_steps: int, tmp: str, log=print, space: dict | None = None) -> dict:
    name = f"bench-sweep-{scheduler}"
    cmd = [sys.executable, str(ROOT / "jobs" / "tune_adept.py"), "--config", str(config), "--name", name,
           "--scheduler", scheduler, "--no-zero-shot", "--storage-path", f"{tmp}/runs",
           "--mlflow-uri", f"sqlite:///{tmp}/mlflow.db", "--set", f"max_steps={max_steps}", "--quiet",
           "--sweep-set", f"space={json.dumps(space or SPACE)}", "--sweep-set", "num_samples=1",
           "--sweep-set", "points_to_evaluate=[]"]
    points = 1
    for values in (space or SPACE).values():
        points *= len(values["grid"])
    log(f"[sweep] {scheduler}: {points} grid points, {max_steps} steps each at most ...")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"the {scheduler} sweep failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    with open(Path(tmp) / "runs" / name / "summary" / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    metric = next(k for k in rows[0] if k.startswith("val_"))
    scored = [r for r in rows if r[metric]]
    best = max(scored, key=lambda r: float(r[metric]))
    test_key = "test_" + metric.removeprefix("val_")
    return {"scheduler": scheduler, "trials": len(rows), "steps": sum(int(float(r["last_step"] or 0)) for r in rows),
            "wall_s": round(wall, 1), "best_val": float(best[metric]), "metric": metric,
            "best_test": float(best[test_key]) if best.get(test_key) else None,
            "best_trial": {k: best[k] for k in ("prompt_lr", "offset_lr")},
            "stopped_early": sum(r["status"] == "stopped" for r in rows)}


def rows(config: Path, max_steps: int = 60, log=print, space: dict | None = None) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        grid = run_sweep(config, "fifo", max_steps, tmp, log, space)
        asha = run_sweep(config, "asha", max_steps, tmp, log, space)
    asha["steps_ratio_vs_grid"] = round(asha["steps"] / grid["steps"], 3)
    asha["wall_ratio_vs_grid"] = round(asha["wall_s"] / grid["wall_s"], 3)
    asha["best_val_gap"] = round(grid["best_val"] - asha["best_val"], 2)
    asha["target_met"] = asha["best_val_gap"] <= 0.5 and asha["steps_ratio_vs_grid"] <= 0.5
    return [{"item": "sweep", **grid}, {"item": "sweep", **asha}]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    p.add_argument("--max-steps", type=int, default=60)
    p.add_argument("--tiny", action="store_true", help="the synthetic task on a tiny random Llama (see tiny_config)")
    p.add_argument("--space", type=json.loads, default=None,
                   help='the grid as JSON, e.g. \'{"prompt_lr": {"grid": [0.1, 0.3]}}\' (default: the 3x3 lr grid above)')
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sweep.json")
    args = p.parse_args(argv)
    if args.tiny:
        with tempfile.TemporaryDirectory() as folder:
            result = rows(tiny_config(Path(folder)), args.max_steps, space=args.space or TINY_SPACE)
    else:
        result = rows(args.config, args.max_steps, space=args.space)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": result, "command": " ".join(["python", *sys.argv]), "date":
                                    time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
