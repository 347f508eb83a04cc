"""ADePT benchmarks (issue 6): train step + peak memory, inference latency, pipeline overhead, as ratios.

    python benchmarks/run.py                      # full run: tiny backbone + SmolLM2-135M (if cached)
    python benchmarks/run.py --quick              # < 3 min on 2 CPU cores
    python benchmarks/run.py --device cuda        # the same code on a GPU
    python benchmarks/run.py --backbones tiny --items infer --reps 9

Prints a markdown table and writes JSON (`--out`). Every ratio is against a baseline measured in the
same run, per interleaved round; absolute numbers are only comparable within one machine and moment.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402
import bench_fit  # noqa: E402
import bench_infer  # noqa: E402
import bench_pipeline  # noqa: E402
import bench_report  # noqa: E402
import bench_train  # noqa: E402
import torch  # noqa: E402

bench_pipeline.load_runner_modules()  # runner_*.py beside this file add pipeline runners (item 3)

ITEMS = ("train", "infer", "pipeline", "fit", "scale", "sweep", "pack")
DEFAULT_ITEMS = ("train", "infer", "pipeline", "fit")  # scale (~15 min), sweep (~45 min), pack (~7 min) when asked
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "latest.json"
# Batch sizes per backbone: the same for every method/variant of a backbone.
BATCH = {"tiny": 8, bc.SMOLLM2: 2}
QUICK_BATCH = {"tiny": 2, bc.SMOLLM2: 1}
QUICK_RUNNERS = ("bare", "ray_zero2")  # each Ray runner costs ~20-30 s of startup


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="5 rounds, 1 warm-up, smaller batches, tiny backbone only unless --backbones names "
                         "smollm2-135m too (then at the shortest length only)")
    ap.add_argument("--backbones", default=None,
                    help="comma list of tiny, smollm2-135m (default both, --quick: tiny; SmolLM2 is skipped with a "
                         "note when it is not in the cache: nothing is downloaded)")
    ap.add_argument("--lengths", default="64,256", help="input lengths L (default 64,256)")
    ap.add_argument("--items", default=",".join(DEFAULT_ITEMS),
                    help=f"comma list of {', '.join(ITEMS)} (default {','.join(DEFAULT_ITEMS)})")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, default=1,
                    help="torch.set_num_threads (default 1: on a shared CPU machine 2 threads measured 2-4x slower "
                         "and far noisier than 1; use the core count on a dedicated machine)")
    ap.add_argument("--reps", type=int, default=None, help="timed rounds of items 1 and 3, >= 5 (default 7; --quick 5)")
    ap.add_argument("--infer-reps", type=int, default=None,
                    help="timed rounds of item 2, >= 5 (default 11: its targets are 2-5%%; --quick 5)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls per variant first (default 2; --quick 1)")
    ap.add_argument("--batch", type=int, default=None, help="batch size for every backbone (default per backbone)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses of item 1")
    ap.add_argument("--pipeline-runners", default=None,
                    help=f"comma list of registered runners (default all: {', '.join(bench_pipeline.RUNNERS)}; "
                         f"--quick: {','.join(QUICK_RUNNERS)}, the production path, to stay under 3 minutes)")
    ap.add_argument("--pipeline-backbone", default=None,
                    help="backbone of item 3 (default: smollm2-135m in a full run when cached, else tiny)")
    ap.add_argument("--fit-config", default=None,
                    help="item 4: the training config whose throughput is measured (default "
                         "configs/demo.yaml: the SmolLM2 fit; skipped with a note when SmolLM2 is not cached "
                         "or under --quick)")
    ap.add_argument("--fit-steps", type=int, default=None, help="item 4: optimizer steps (default 30; --quick 12)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="JSON output file")
    args = ap.parse_args(argv)
    args.reps = args.reps or (5 if args.quick else 7)
    args.infer_reps = args.infer_reps or (5 if args.quick else 11)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.fit_steps = args.fit_steps or (12 if args.quick else 30)
    if args.pipeline_runners is None:
        runners = QUICK_RUNNERS if args.quick else tuple(bench_pipeline.RUNNERS)
        args.pipeline_runners = ",".join(r for r in runners if r in bench_pipeline.RUNNERS)
    if min(args.reps, args.infer_reps) < 5:
        ap.error("--reps and --infer-reps must be >= 5 (the medians need at least 5 rounds)")
    if args.fit_steps < 6:
        ap.error("--fit-steps must be >= 6 (6 logged windows: the first is left out, the median needs 5)")
    if args.threads < 1:
        ap.error("--threads must be >= 1")
    if args.backbones is None:
        args.backbones = "tiny" if args.quick else ",".join(bc.BACKBONES)
    args.items = [i for i in args.items.split(",") if i]
    args.backbones = [b for b in args.backbones.split(",") if b]
    args.lengths = [int(x) for x in args.lengths.split(",") if x]
    for name in args.items:
        if name not in ITEMS:
            ap.error(f"unknown item {name!r}; use {', '.join(ITEMS)}")
    for name in args.backbones:
        if name not in bc.BACKBONES:
            ap.error(f"unknown backbone {name!r}; use {', '.join(bc.BACKBONES)}")
    if max(args.lengths) > bc.DEPT_MAX_LENGTH:
        ap.error(f"lengths must be <= DePT's s={bc.DEPT_MAX_LENGTH}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is False")
    return args


def plan(args: argparse.Namespace, notes: list[str]) -> list[tuple[str, list[int], int]]:
    """(backbone, lengths, batch) per backbone that will run."""
    out = []
    for name in args.backbones:
        if name == bc.SMOLLM2 and not bc.smollm2_cached():
            notes.append("smollm2-135m is not in the cache (python -m pipeline.core.backbones smollm2-135m makes it); "
                         "skipped, nothing was downloaded.")
            continue
        lengths = args.lengths
        if args.quick and name == bc.SMOLLM2:
            lengths = [min(args.lengths)]
        batch = args.batch or (QUICK_BATCH if args.quick else BATCH)[name]
        out.append((name, lengths, batch))
    return out


def fit_rows(args: argparse.Namespace, notes: list[str]) -> list[dict]:
    if args.fit_config is None and (args.quick or not bc.smollm2_cached()):
        notes.append("item 4 (fit tokens/s) skipped: it runs the SmolLM2 default fit, which needs the model in the "
                     "cache and does not fit --quick; --fit-config CONFIG runs it on another config.")
        return []
    config = Path(args.fit_config) if args.fit_config else bench_fit.DEFAULT_CONFIG
    log_steps = max(1, args.fit_steps // 6)  # 6 windows: the first (one-off costs) + 5 in the median
    return bench_fit.run(config.resolve(), args.fit_steps, log_steps, device=args.device, log=log)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    notes: list[str] = []
    runs = plan(args, notes)
    meta = {"machine": bc.machine_info(args.device, args.threads, args.dtype),
            "command": "python benchmarks/run.py " + shlex.join(sys.argv[1:] if argv is None else argv),
            "reps": args.reps, "infer_reps": args.infer_reps, "warmup": args.warmup, "quick": args.quick, "notes": notes,
            "budget": f"all adapters within {bc.PT_TOKENS}·d trainable parameters; r from adept.budget_rank for "
                      f"each backbone's d; DePT s={bc.DEPT_MAX_LENGTH}"}
    rows: list[dict] = []
    for name, lengths, batch in runs:
        backbone = bc.load_backbone(name, args.device, args.dtype)
        d = backbone.config.hidden_size
        specs = [bc.method_spec(m, d) for m in bc.METHODS]
        notes.append(f"{name}: d={d}, " + "; ".join(s.label for s in specs) + f" (budget {bc.PT_TOKENS}·d = "
                     f"{bc.PT_TOKENS * d:,} params), batch {batch}, lengths {lengths}.")
        if "train" in args.items:
            rows += bench_train.run(name, backbone, lengths, batch, reps=args.reps, warmup=args.warmup,
                                    device=args.device, dtype=args.dtype, threads=args.threads,
                                    memory=not args.no_memory, log=log)
        if "infer" in args.items:
            rows += bench_infer.run(name, backbone, lengths, batch, reps=args.infer_reps, warmup=args.warmup,
                                    device=args.device, min_sample_s=0.05 if args.quick else 0.2, log=log)
        del backbone
    if "pipeline" in args.items:
        available = [name for name, _, _ in runs]
        default = bc.SMOLLM2 if (not args.quick and bc.SMOLLM2 in available) else "tiny"
        pb = args.pipeline_backbone or default
        if pb == bc.SMOLLM2 and not bc.smollm2_cached():
            raise SystemExit("--pipeline-backbone smollm2-135m is not in the cache; nothing is downloaded here.")
        work = bench_pipeline.TrainWork(
            backbone=pb, method="adept", batch_size=args.batch or (QUICK_BATCH if args.quick else BATCH)[pb],
            length=min(args.lengths), warmup_steps=args.warmup + 1, measured_steps=args.reps + (0 if args.quick else 3),
            device=args.device, dtype=args.dtype)
        rows += bench_pipeline.run(work, [r for r in args.pipeline_runners.split(",") if r], log=log)
    if "fit" in args.items:
        rows += fit_rows(args, notes)
    if "scale" in args.items:
        import bench_scale

        rows += bench_scale.bf16_rows(log=log) + bench_scale.memory_rows(log=log)
    if "sweep" in args.items:
        import bench_sweep

        rows += bench_sweep.rows(Path(args.fit_config or bench_fit.DEFAULT_CONFIG).resolve(), log=log)
    if "pack" in args.items:
        import tempfile

        import bench_pack

        with tempfile.TemporaryDirectory() as folder:  # the demo's and compare_methods' sweeps on the tiny Llama
            rows += bench_pack.rows(bench_pack.tiny_configs(Path(folder)), log=log)
    meta["wall_s"] = time.perf_counter() - started
    result = {"meta": meta, "rows": rows, "targets": bench_infer.targets(rows)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(bench_report.render(result))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
