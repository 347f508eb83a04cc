"""Packed trials (issue 19): a sweep packed over one backbone against the same sweep unpacked, in one run.

    python benchmarks/run.py --items pack                    # the tiny demo- and compare-shaped sweeps (minutes)
    python benchmarks/bench_pack.py --config configs/demo.yaml              # the demo itself, SmolLM2 (~10 min)
    python benchmarks/bench_pack.py --config configs/compare_methods.yaml   # 18 trials, 3 methods (~2 h)
    python benchmarks/bench_pack.py --tiny                                  # both sweeps on the tests' tiny Llama
    python benchmarks/bench_pack.py --estimate-unpacked configs/compare_methods.yaml  # its unpacked wall (~15 min)

Each sweep runs twice through `jobs/tune_adept.py` on the same config: `sweep.pack=1` (each trial its own Ray
Train worker group and backbone) and `sweep.pack=auto` (on CPU: every trial in one pack). Read from each sweep's
own summary and the process tree sampled every 0.5 s: wall time, training steps (sum of every trial's last step),
trials per hour, peak resident memory of the whole sweep (the job and every process it started: Ray, Tune,
Train workers) and of its Ray Train workers alone (a sum of RSS: shared pages count once per process, the same
way in both runs), and the best trial's configuration and validation score, which must be the same.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


class TreeMemory:
    """Peak summed RSS of a process and its descendants (and of its Ray Train workers), sampled in a thread."""

    def __init__(self, pid: int, every_s: float = 0.5):
        self.root, self.every_s = psutil.Process(pid), every_s
        self.peak_mib = self.peak_workers_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                continue
            total = workers = 0
            for proc in procs:
                try:
                    rss = proc.memory_info().rss
                    total += rss
                    workers += rss if "RayTrainWorker" in " ".join(proc.cmdline()) else 0
                except psutil.Error:
                    continue
            self.peak_mib = max(self.peak_mib, total / 2**20)
            self.peak_workers_mib = max(self.peak_workers_mib, workers / 2**20)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_sweep(config: Path, pack: str, tmp: str, name: str, extra: list[str], log=print) -> dict:
    sweep = f"bench-pack-{name}-{'packed' if pack != '1' else 'alone'}"
    cmd = [sys.executable, str(ROOT / "jobs" / "tune_adept.py"), "--config", str(config), "--name", sweep,
           "--no-zero-shot", "--storage-path", f"{tmp}/runs", "--mlflow-uri", f"sqlite:///{tmp}/mlflow.db",
           "--quiet", "--sweep-set", f"pack={pack}", *extra]
    log(f"[pack] {name}: sweep.pack={pack} ...")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    memory = TreeMemory(proc.pid)
    out, err = proc.communicate()
    memory.stop()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"the {sweep} sweep failed (exit {proc.returncode}):\n{(out + err)[-3000:]}")
    with open(Path(tmp) / "runs" / sweep / "summary" / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    metric = next(k for k in rows[0] if k.startswith("val_"))
    params = [k for k in rows[0] if k not in ("trial_id", "status", "r", "trainable_params", "best_step", "last_step",
                                              "step_s", "mlflow_run_id", "adapter", "error")
              and not k.startswith(("val_", "test_"))]
    best = max((r for r in rows if r[metric]), key=lambda r: float(r[metric]))
    return {"item": "pack", "sweep": name, "pack": pack, "trials": len(rows), "wall_s": round(wall, 1),
            "steps": sum(int(float(r["last_step"] or 0)) for r in rows),
            "trials_per_hour": round(len(rows) * 3600 / wall, 1), "peak_rss_mib": round(memory.peak_mib),
            "peak_worker_rss_mib": round(memory.peak_workers_mib), "metric": metric,
            "best_val": float(best[metric]), "best_trial": {k: best[k] for k in params},
            "stopped_early": sum(r["status"] == "stopped" for r in rows)}


def compare(config: Path, name: str, extra: list[str] | None = None, log=print) -> list[dict]:
    """The sweep unpacked, then packed, in one run; the packed row carries the ratios."""
    with tempfile.TemporaryDirectory() as tmp:
        alone = run_sweep(config, "1", tmp, name, extra or [], log)
        packed = run_sweep(config, "auto", tmp, name, extra or [], log)
    for key in ("wall_s", "steps", "peak_rss_mib", "peak_worker_rss_mib"):
        packed[f"{key}_ratio"] = round(packed[key] / max(alone[key], 1e-9), 3)
    packed["same_best"] = (packed["best_trial"] == alone["best_trial"]
                           and abs(packed["best_val"] - alone["best_val"]) <= 1e-4)
    log(f"[pack] {name}: wall {packed['wall_s_ratio']}×, worker RSS {packed['peak_worker_rss_mib_ratio']}×, "
        f"sweep RSS {packed['peak_rss_mib_ratio']}×, same best: {packed['same_best']}")
    return [alone, packed]


def estimate_unpacked(config: Path, log=print) -> dict:
    """The unpacked wall time of a long `together` × seed sweep (configs/compare_methods.yaml: 18 SmolLM2 trials,
    hours unpacked here), estimated from measured pieces. Per method, its first setting × the config's seeds runs
    unpacked, as many trials at a time as the sweep runs (2 here): with 3 seeds the third trial takes the slot of the
    first to finish, so `slot` = the third trial's MLflow run start − that trial's run start is what one trial
    holds a slot for (its run, its teardown, the next trial's start-up) under the same contention. The sweep:

        wall ≈ fixed + Σ_trials slot(method) / at_a_time − gap

    fixed = the job's time outside its trials' runs (start-up before the first run, report after the last),
    gap = slot − the run's own time (the last round has no next trial to start); both means over the methods."""
    import yaml

    from pipeline.tracking.models import search_runs

    data = yaml.safe_load(config.read_text())
    sweep = data["sweep"]
    entries, seeds = sweep["space"]["together"]["grid"], sweep["space"]["seed"]["grid"]
    concurrent = sweep.get("max_concurrent_trials") or 2
    if len(seeds) <= concurrent:
        raise ValueError(f"space.seed: {len(seeds)} seeds leave no trial waiting for a slot; give more seeds "
                         f"than max_concurrent_trials ({concurrent})")
    methods: dict[str, dict] = {}
    for entry in entries:
        methods.setdefault(entry["method"], {"entry": entry, "trials": 0})["trials"] += len(seeds)
    rows = []
    for method, info in methods.items():
        with tempfile.TemporaryDirectory() as tmp:
            row = run_sweep(config, "1", tmp, f"estimate-{method}", [
                "--sweep-set", f"space.together={json.dumps({'grid': [info['entry']]})}"], log)
            runs = search_runs(f"sqlite:///{tmp}/mlflow.db", "tags.`adept.kind` = 'trial'")
            times = sorted((r.info.start_time / 1000, r.info.end_time / 1000) for r in runs)
        rows.append({"method": method, "setting": info["entry"], "trials_in_sweep": info["trials"],
                     **slot_of(times, concurrent, row["wall_s"])})
        log(f"[pack] estimate: {method}: a trial holds a slot {rows[-1]['slot_s']:.0f} s (gap "
            f"{rows[-1]['gap_s']:.0f} s); job wall {row['wall_s']} s")
    return {"item": "pack_estimate", "config": config.name, "trials": sum(r["trials_in_sweep"] for r in rows),
            "concurrent": concurrent, "methods": rows, **combine(rows, concurrent)}


def slot_of(times: list[tuple[float, float]], concurrent: int, wall_s: float) -> dict:
    """From one method's unpacked run ((start, end) of each trial's MLflow run, more trials than `concurrent`):
    the slot the first waiting trial took is the one freed first; slot = its start − the freed trial's start."""
    times = sorted(times)
    freed = min(times[:concurrent], key=lambda t: t[1])
    slot = times[concurrent][0] - freed[0]
    return {"trials_run": len(times), "wall_s": wall_s, "run_s": [round(e - s, 1) for s, e in times],
            "slot_s": round(slot, 1), "gap_s": round(slot - (freed[1] - freed[0]), 1),
            "fixed_s": round(wall_s - (max(e for _, e in times) - times[0][0]), 1)}


def combine(rows: list[dict], concurrent: int) -> dict:
    """wall ≈ fixed + Σ_trials slot(method) / concurrent − gap (fixed and gap: means over the methods)."""
    fixed = statistics.fmean(r["fixed_s"] for r in rows)
    gap = statistics.fmean(r["gap_s"] for r in rows)
    busy = sum(r["trials_in_sweep"] * r["slot_s"] for r in rows) / concurrent
    return {"fixed_s": round(fixed, 1), "gap_s": round(gap, 1), "estimated_unpacked_wall_s": round(fixed + busy - gap, 1)}


def tiny_configs(folder: Path) -> dict[str, tuple[Path, list[str]]]:
    """The demo's and compare_methods' sweeps on the tests' synthetic task and 2-layer Llama (d=32)."""
    import yaml

    sys.path.insert(0, str(ROOT / "tests"))
    from synthetic import write_backbone, write_task

    task, backbone = write_task(folder / "task"), write_backbone(folder / "backbone")
    out = {}
    for name in ("demo", "compare_methods"):
        data = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
        data.update(task=str(task), backbone=str(backbone), num_virtual_tokens=4, prompt_init_text=None,
                    batch_size=16, warmup_steps=0, max_source_length=32, max_target_length=4, max_train_examples=None,
                    experiment=f"bench-pack-{name}")
        if data.get("budget") is None:
            data["r"] = 8
        data["sweep"].pop("name", None)
        path = folder / f"{name}-tiny.yaml"
        path.write_text(yaml.safe_dump(data))
        out[f"{name}-tiny"] = (path, [])
    return out


def rows(configs: dict[str, tuple[Path, list[str]]], log=print) -> list[dict]:
    return [row for name, (path, extra) in configs.items() for row in compare(path, name, extra, log)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, action="append", default=[], help="a sweep config (repeatable)")
    p.add_argument("--tiny", action="store_true", help="the demo and compare_methods sweeps on a tiny Llama")
    p.add_argument("--estimate-unpacked", type=Path, metavar="CONFIG",
                   help="only estimate this together × seed sweep's unpacked wall time from pairs of its trials")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pack.json")
    args = p.parse_args(argv)
    if args.estimate_unpacked:
        result = [estimate_unpacked(args.estimate_unpacked.resolve())]
    else:
        with tempfile.TemporaryDirectory() as folder:
            configs = tiny_configs(Path(folder)) if args.tiny or not args.config else {}
            configs.update({c.stem: (c.resolve(), []) for c in args.config})
            result = rows(configs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": result, "command": " ".join(["python", *sys.argv]),
                                    "cpu": _cpu(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


def _cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
