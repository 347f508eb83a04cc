"""Sweep efficiency (issue 14): does ASHA find the paper-style grid's best adapter for less compute?

    python benchmarks/run.py --items sweep             # the demo's model and data, a 3×3 learning-rate grid
    python benchmarks/bench_sweep.py --config configs/demo.yaml --max-steps 60

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


def run_sweep(config: Path, scheduler: str, max_steps: int, tmp: str, log=print) -> dict:
    name = f"bench-sweep-{scheduler}"
    cmd = [sys.executable, str(ROOT / "jobs" / "tune_adept.py"), "--config", str(config), "--name", name,
           "--scheduler", scheduler, "--no-zero-shot", "--storage-path", f"{tmp}/runs",
           "--mlflow-uri", f"sqlite:///{tmp}/mlflow.db", "--set", f"max_steps={max_steps}", "--quiet",
           "--sweep-set", f"space={json.dumps(SPACE)}", "--sweep-set", "num_samples=1",
           "--sweep-set", "points_to_evaluate=[]"]
    log(f"[sweep] {scheduler}: 9 grid points, {max_steps} steps each at most ...")
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


def rows(config: Path, max_steps: int = 60, log=print) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        grid = run_sweep(config, "fifo", max_steps, tmp, log)
        asha = run_sweep(config, "asha", max_steps, tmp, log)
    asha["steps_ratio_vs_grid"] = round(asha["steps"] / grid["steps"], 3)
    asha["wall_ratio_vs_grid"] = round(asha["wall_s"] / grid["wall_s"], 3)
    asha["best_val_gap"] = round(grid["best_val"] - asha["best_val"], 2)
    asha["target_met"] = asha["best_val_gap"] <= 0.5 and asha["steps_ratio_vs_grid"] <= 0.5
    return [{"item": "sweep", **grid}, {"item": "sweep", **asha}]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    p.add_argument("--max-steps", type=int, default=60)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sweep.json")
    args = p.parse_args(argv)
    result = rows(args.config, args.max_steps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": result, "command": " ".join(["python", *sys.argv])}, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
