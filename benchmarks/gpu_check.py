"""The GPU check: what a GPU user asks first (tokens/s, MFU, memory, attention kernel, inference latency), in one
call on a GPU machine with no network; a table and a JSON back.

    bash benchmarks/gpu_run.sh [--quick] [--out DIR]      # on the GPU machine: installs .whl/gpu, runs this
    python benchmarks/gpu_check.py [--quick] [--out f.json] [--budget-s 420]
    python benchmarks/gpu_check.py --allow-cpu --tiny --out f.json      # the CPU dry run CI proves (tiny shapes)
    python benchmarks/gpu_check.py --table f.json         # the markdown tables of a result file (benchmarks/README)

Rows (the registry: `plan()`), per backbone, random init built where it runs, in bf16 (nothing downloaded):
- train: ADePT, DePT and prompt tuning at the same budget (m=60 and r from 100 tokens x d; PT m=100) under
  DeepSpeed ZeRO-2, and ADePT under ZeRO-3, all in this one process, through the pipeline's own engine
  (`pipeline.worker.engine.build_engine`, `train_micro_batch`: forward + backward + torch AdamW step) on
  synthetic batches of B x L tokens (causal: the last 8 labelled; seq2seq: 8 target tokens). Reported: step
  time (median of the timed steps after 2 warm-up steps), tokens/s (B x L input tokens per step, virtual
  tokens not counted), model TFLOP/s and MFU (gpu_report.FLOP_MODEL) against the GPU's dense bf16 peak
  (gpu_report.PEAK_BF16_TFLOPS, by device name), peak GPU memory of the row (`max_memory_allocated` from before
  the model is built), and the attention implementation actually used (config + the SDPA kernel the profiler saw).
- infer: eval-forward latency of the bare backbone on m + L tokens, ADePT on the fly, ADePT folded.
- packed: K = 1, 4, 8, 16 ADePT members (alternating (m, r) at the same budget, each its own learning rates and
  its own B x L micro batch) trained over one frozen backbone in one batch (`adept.packed.PackedAdeptModel`),
  plain torch in this process (no DeepSpeed): tokens/s of the pack and per member, the pack's tokens/s against
  K=1's, step time, MFU, peak memory (benchmarks/gpu_packed.py says what a step is).
Backbones: `random:llama-1b` and `random:t5-base` (the pipeline's aliases, `pipeline.core.backbones`) and
`shape:llama-7b` (a LLaMA-2-7B shape built by this check: random init on the GPU in bf16). `--quick` runs the
1B and T5 rows at shorter lengths (the 7B rows are listed as skipped); `--tiny` uses tiny shapes (CPU dry run).

Time: `--budget-s` seconds for all rows; a row whose estimate (est_s below, replaced by the measured time of the
same kind of row once one ran) would not fit in what is left is skipped and says so, never half-run. The JSON is
rewritten after every row (`complete` false until the end), so a killed run still returns what it measured.
The targets the numbers are checked against are in gpu_report.TARGETS and in the JSON's `targets`.

Modules: this file is the entry point (the CLI, the profiles and row plan, the time budget and run loop, the
JSON); benchmarks/gpu_rows.py runs the train and infer rows (backbones, batches, memory, attention kernel);
benchmarks/gpu_report.py holds the peak table, the FLOP model, the targets and the tables; benchmarks/gpu_packed.py
runs the packed rows (it gets gpu_rows as its helpers: none of them imports this file, which runs as __main__).

Imports: torch, transformers, deepspeed, yaml, numpy, those three modules and this repo's `adept`,
`pipeline.core.config`, `pipeline.core.backbones`, `pipeline.worker.engine` -- never Ray, MLflow or `datasets`,
which the GPU machine's image lacks (tests/benchmarks/test_gpu_check.py runs this with those three made
unimportable).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

# After the path set-up. At import time they import only each other (torch and the rest inside their functions),
# never this file: it runs as __main__, and a second import of it would build a second copy.
import gpu_packed  # noqa: E402 - the packed rows
import gpu_rows  # noqa: E402 - the train and infer rows
from gpu_report import FLOP_MODEL, check_targets, peak_bf16_tflops, table  # noqa: E402
from gpu_rows import METHODS, Context, Row, _mib, infer_rows, train_row  # noqa: E402

SCHEMA = "adept-gpu-check/1"
NEVER_IMPORTED = ("ray", "mlflow", "datasets")  # not on the GPU machine's image


# ------------------------------------------------------------------ profiles and the row plan
@dataclass
class Profile:
    backbones: dict  # name -> (L, batch)
    steps: int
    infer_reps: int
    mfu_backbone: str  # where the MFU target is checked
    skipped: dict = field(default_factory=dict)  # backbone -> why its rows are listed but not run
    packed: dict = field(default_factory=dict)  # backbone -> (L, batch per member) of the packed rows
    packs: tuple = (1, 4, 8, 16)  # K of the packed rows


PROFILES = {
    "full": Profile({"random:llama-1b": (1024, 8), "shape:llama-7b": (1024, 8), "random:t5-base": (512, 16)},
                    steps=10, infer_reps=10, mfu_backbone="shape:llama-7b",
                    packed={"shape:smollm2-135m": (256, 8), "random:llama-1b": (256, 8)}),
    "quick": Profile({"random:llama-1b": (512, 8), "random:t5-base": (256, 16)}, steps=5, infer_reps=5,
                     mfu_backbone="shape:llama-7b",
                     skipped={"shape:llama-7b": "--quick: the 7B shape runs in the full check only"},
                     packed={"shape:smollm2-135m": (256, 8), "random:llama-1b": (256, 8)}),
    "tiny": Profile({"random:llama-tiny": (16, 2), "shape:t5-tiny": (16, 2)}, steps=1, infer_reps=1,
                    mfu_backbone="random:llama-tiny", packed={"random:llama-tiny": (16, 2)},
                    packs=gpu_packed.PACK_SIZES["tiny"]),
}
# Guessed seconds per row on one H200 (model build + DeepSpeed init + 2 warm-up + timed steps), until a run
# measures them; once a row of the same kind and backbone ran, its measured time replaces the guess. Packed rows:
# gpu_packed.EST_S (a + b x K).
EST_S = {"random:llama-1b": {"train": 15, "zero3": 25, "infer": 10},
         "shape:llama-7b": {"train": 40, "zero3": 70, "infer": 30},
         "random:t5-base": {"train": 10, "zero3": 15, "infer": 8}}
EST_DEFAULT = {"train": 10, "zero3": 15, "infer": 8}


def plan(profile: Profile, steps: int | None = None) -> list[Row]:
    """The row registry of a profile, in run order (each backbone's rows together; the packed rows last)."""
    rows = []
    for backbone, (length, batch) in {**profile.backbones, **{b: (0, 0) for b in profile.skipped}}.items():
        n = steps or profile.steps
        for method in METHODS:
            rows.append(Row(f"train/{backbone}/zero2/{method}", "train", backbone, length, batch, method, 2, n))
        rows.append(Row(f"train/{backbone}/zero3/adept", "train", backbone, length, batch, "adept", 3, n))
        rows.append(Row(f"infer/{backbone}", "infer", backbone, length, batch, "adept", None,
                        steps or profile.infer_reps))
        if backbone in profile.skipped:
            for row in rows[-5:]:
                row.status, row.reason = "skipped", profile.skipped[backbone]
    for backbone, (length, batch) in profile.packed.items():
        for k in profile.packs:
            rows.append(Row(f"packed/{backbone}/K{k}", "packed", backbone, length, batch, "adept", None,
                            steps or profile.steps, packs=k))
    return rows


def imported_modules() -> dict[str, bool]:
    return {name: sys.modules.get(name) is not None for name in NEVER_IMPORTED}


# ------------------------------------------------------------------ the time budget and the run loop
def guess_s(row: Row) -> float:
    if row.item == "packed":
        return gpu_packed.guess_s(row)
    return float(EST_S.get(row.backbone, EST_DEFAULT).get(row.kind, 10))


def estimate_s(row: Row, ctx: Context) -> float:
    """The measured time of the last row of the same kind and backbone; else the guess, scaled by how the rows
    run so far compared with their guesses (median ratio, within 0.25-4x). A packed row: the last measured pack
    of its backbone, scaled to its K (`gpu_packed.scaled_estimate`)."""
    measured = ctx.measured.get((row.backbone, row.kind))
    if measured is None and row.item == "packed":
        measured = gpu_packed.scaled_estimate(row, ctx.measured)
    if measured is not None:
        return measured
    pace = min(4.0, max(0.25, statistics.median(ctx.pace))) if ctx.pace else 1.0
    return guess_s(row) * pace


def run_rows(rows: list[Row], ctx: Context, on_row) -> list[dict]:
    """Run each planned row unless its estimate does not fit before the deadline; one row's error is recorded
    and the others go on (a GPU call is too dear to stop at the first failure)."""
    import torch

    results: list[dict] = []
    for row in rows:
        base = {k: v for k, v in asdict(row).items() if v is not None}
        if row.status != "planned":
            results.append(base)
            on_row(results)
            continue
        left, need = ctx.deadline - time.monotonic(), estimate_s(row, ctx)
        if need > left:
            base.update(status="skipped", reason=f"time: needs ~{need:.0f} s, {max(left, 0):.0f} s of the budget left")
            results.append(base)
            on_row(results)
            continue
        t0, first = time.monotonic(), len(results)
        try:
            if row.item == "train":
                results.append({**base, **train_row(row, ctx), "status": "ok"})
            elif row.item == "packed":
                results.append({**base, **gpu_packed.packed_row(row, ctx, gpu_rows), "status": "ok"})
            else:
                results += [{**base, "id": f"{row.id}/{r['variant']}", **r, "status": "ok"}
                            for r in infer_rows(row, ctx)]
        except Exception as err:  # noqa: BLE001 - recorded in the row and the log; the next rows still run
            traceback.print_exc()
            oom = isinstance(err, getattr(torch.cuda, "OutOfMemoryError", MemoryError))
            base.update(status="error", reason=("out of memory: " if oom else "") + f"{type(err).__name__}: {err}"[:500])
            results.append(base)
        finally:
            gc.collect()
            if ctx.gpu:
                torch.cuda.empty_cache()
        seconds = time.monotonic() - t0
        ctx.measured[(row.backbone, row.kind)] = seconds
        ctx.pace.append(seconds / guess_s(row))
        for r in results[first:]:
            r["row_s"] = round(seconds, 1)
        gpu_packed.add_scaling(results)
        on_row(results)
    return results


# ------------------------------------------------------------------ the run
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="1B and T5 rows, shorter (<= 3 min with the install)")
    size.add_argument("--tiny", action="store_true", help="tiny shapes: the CPU dry run of every row type")
    p.add_argument("--backbones", help="comma-separated subset of the profile's backbones")
    p.add_argument("--steps", type=int, help="timed steps per training row / reps per inference row")
    p.add_argument("--items", help="comma-separated subset of the row kinds: train, infer, packed (a rerun of some)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="seconds for all rows (default: 420 full, 140 quick, 900 tiny); rows that would not fit "
                        "are skipped and say so")
    p.add_argument("--peak-tflops", type=float, help="dense bf16 peak for MFU when the device is not in the table")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu-check.json"))
    p.add_argument("--allow-cpu", action="store_true", help="run on the CPU when there is no GPU (dry run)")
    p.add_argument("--table", type=Path, metavar="JSON", help="print the tables of a result file and exit")
    return p.parse_args(argv)


def _write(path: Path, report: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(path)


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "transformers", "deepspeed", "pydantic"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def _init_distributed(gpu: bool) -> None:
    """One process, world size 1: torch.distributed on a file store (no ports), then DeepSpeed's comm on it."""
    import importlib

    import deepspeed
    import torch.distributed as dist

    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}.items():
        os.environ.setdefault(key, value)
    if not gpu:  # the shared-memory comm op is a 30-75 s JIT compile and gloo works without it
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    if gpu:
        import torch

        torch.cuda.set_device(0)
    store = Path(tempfile.mkdtemp(prefix="adept-gpu-check-")) / "store"
    dist.init_process_group("nccl" if gpu else "gloo", init_method=f"file://{store}", rank=0, world_size=1)
    deepspeed.init_distributed(dist_backend="nccl" if gpu else "gloo")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return 0
    t_start, started = time.monotonic(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    import torch

    gpu = torch.cuda.is_available()
    if not gpu and not args.allow_cpu:
        print("error: gpu_check needs a CUDA GPU (torch.cuda.is_available() is False here); run it on a GPU "
              "machine (bash benchmarks/gpu_run.sh), or --allow-cpu --tiny for the CPU dry run.", file=sys.stderr)
        return 2
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if gpu else "cpu")
    name = "quick" if args.quick else "tiny" if args.tiny else "full"
    profile = PROFILES[name]
    if args.backbones:
        keep = args.backbones.split(",")
        known = [*profile.backbones, *profile.skipped, *profile.packed]
        unknown = [b for b in keep if b not in known]
        if unknown:
            print(f"error: --backbones {','.join(unknown)}: not in the {name} profile "
                  f"({', '.join(dict.fromkeys(known))})", file=sys.stderr)
            return 2
        profile = Profile({b: v for b, v in profile.backbones.items() if b in keep}, profile.steps,
                          profile.infer_reps, profile.mfu_backbone,
                          {b: v for b, v in profile.skipped.items() if b in keep},
                          {b: v for b, v in profile.packed.items() if b in keep}, profile.packs)
    budget = args.budget_s if args.budget_s is not None else {"full": 420.0, "quick": 140.0, "tiny": 900.0}[name]
    device = torch.device("cuda" if gpu else "cpu")
    device_name = torch.cuda.get_device_name(0) if gpu else f"cpu ({platform.processor() or platform.machine()})"
    peak = args.peak_tflops or (peak_bf16_tflops(device_name) if gpu else None)
    _init_distributed(gpu)
    ctx = Context(device, gpu, peak, deadline=t_start + budget)
    rows = plan(profile, args.steps)
    if args.items:
        rows = [row for row in rows if row.item in args.items.split(",")]
    report = {"schema": SCHEMA, "profile": name, "device": device_name, "gpu": gpu,
              "gpu_memory_mib": _mib(torch.cuda.get_device_properties(0).total_memory) if gpu else None,
              "peak_bf16_tflops": peak, "peak_source": "--peak-tflops" if args.peak_tflops else
              ("PEAK_BF16_TFLOPS (datasheet, dense)" if peak else "unknown device: MFU not computed"),
              **_versions(), "cuda": torch.version.cuda, "python": platform.python_version(),
              "started": started, "budget_s": budget, "flop_model": FLOP_MODEL,
              "command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "complete": False, "wall_s": None, "rows": [], "targets": [], "imported": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(f"[gpu_check] {device_name}, profile {name}, {len(rows)} rows, budget {budget:.0f} s, peak bf16 "
          f"{peak} TFLOP/s -> {args.out}", flush=True)

    def on_row(results: list[dict]) -> None:
        report["rows"] = results
        report["wall_s"] = round(time.monotonic() - t_start, 1)
        _write(args.out, report)
        last = results[-1]
        print(f"[gpu_check] {report['wall_s']:7.1f} s  {json.dumps(last)}", flush=True)

    results = run_rows(rows, ctx, on_row)
    report.update(rows=results, targets=check_targets(results, profile), complete=True,
                  wall_s=round(time.monotonic() - t_start, 1), imported=imported_modules())
    _write(args.out, report)
    print(table(report), flush=True)
    errors = [r["id"] for r in results if r["status"] == "error"]
    if errors:
        print(f"[gpu_check] rows with errors: {', '.join(errors)}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
