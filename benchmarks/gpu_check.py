"""The GPU check: one command on a GPU machine with no internet, about 5-8 minutes on one GPU.

    python benchmarks/gpu_check.py                      # random:llama-1b and random:t5-base, bf16, ZeRO-2 and -3
    python benchmarks/gpu_check.py --steps 10 --out benchmarks/results/gpu-check.json

For each backbone (random-init aliases: nothing is downloaded) it trains ADePT, DePT and prompt tuning at
the same budget through the pipeline's own engines (`pipeline.worker.engine`, DeepSpeed, bf16, one process:
ZeRO-2 and ZeRO-3), then times inference with ADePT on the fly and folded. It prints one table: tokens/s,
the step ratio against prompt tuning (same backbone, same ZeRO stage), peak GPU memory
(`torch.cuda.max_memory_allocated`), and the folded / on-the-fly / backbone+m latency ratios.
On a machine without CUDA it refuses (`--allow-cpu` runs the same code on the CPU, for the smoke test).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BACKBONES = {"random:llama-1b": 256, "random:t5-base": 256}  # backbone -> input length L
METHODS = {"adept": {"num_virtual_tokens": 60, "budget": 100}, "dept": {"num_virtual_tokens": 60, "budget": 100},
           "prompt": {"num_virtual_tokens": 100}}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", default=",".join(BACKBONES), help="comma-separated random:* aliases")
    p.add_argument("--length", type=int, default=None, help="input length L (default per backbone: 256)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=8, help="timed training steps per row (after 2 warm-up steps)")
    p.add_argument("--stages", default="2,3")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu-check.json"))
    p.add_argument("--allow-cpu", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        print("error: gpu_check needs a CUDA GPU (torch.cuda.is_available() is False here); run it on a GPU "
              "machine, or see benchmarks/run.py for the CPU benchmarks.", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _init_process_group(device)
    rows, t0 = [], time.time()
    for backbone in args.backbones.split(","):
        length = args.length or BACKBONES.get(backbone, 64)
        for stage in (int(s) for s in args.stages.split(",")):
            for method, sizes in METHODS.items():
                rows.append(train_row(backbone, method, sizes, stage, length, args, device))
                print(json.dumps(rows[-1]), flush=True)
        rows += infer_rows(backbone, length, args, device)
    _ratios(rows)
    report = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "wall_s": round(time.time() - t0, 1), "rows": rows,
              "command": "python benchmarks/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(table(report))
    return 0


def _init_process_group(device) -> None:
    import torch.distributed as dist

    os.environ.setdefault("DS_ACCELERATOR", "cuda" if device.type == "cuda" else "cpu")
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}.items():
        os.environ.setdefault(key, value)
    store = tempfile.mktemp(prefix="adept-gpu-check-")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"file://{store}", rank=0,
                            world_size=1)


def _config(backbone: str, method: str, sizes: dict, stage: int, length: int, batch: int, gpu: bool = True):
    from pipeline.core.config import TrainConfig

    return TrainConfig(method=method, backbone=backbone, dtype="bfloat16" if stage == 3 else "float32",
                       precision="bf16", deepspeed=True, zero_stage=stage, batch_size=batch, use_gpu=gpu,
                       max_source_length=length, max_target_length=8, max_steps=1000, eval_steps=1000,
                       warmup_steps=0, prompt_init="sample_vocab", **sizes)


def _batch(kind: str, vocab: int, length: int, batch: int, device):
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab, (batch, length), generator=g)
    if kind == "causal":  # the last 8 tokens are the target, as a classification / short answer
        labels = ids.clone()
        labels[:, :-8] = -100
        return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": labels.to(device)}
    labels = torch.randint(4, vocab, (batch, 8), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": labels.to(device)}


def train_row(backbone, method, sizes, stage, length, args, device) -> dict:
    import torch
    from transformers import get_linear_schedule_with_warmup

    from pipeline.driver.launch import adapter_size
    from pipeline.worker.engine import build_engine
    from pipeline.worker.setup import build_model

    cfg = _config(backbone, method, sizes, stage, length, args.batch, gpu=device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    from pipeline.core.backbone_info import inspect_backbone
    from pipeline.core.backbones import resolve_backbone

    info = inspect_backbone(resolve_backbone(backbone))
    r, params = adapter_size(cfg, info.hidden_size, info.kind)
    model, _, kind = build_model(cfg, r, device)
    optimizer = torch.optim.AdamW(model.parameter_groups(0.01, 1e-4), eps=1e-6)
    engine = build_engine(cfg, model, optimizer, get_linear_schedule_with_warmup(optimizer, 0, 1000), device, 1)
    batch = _batch(kind, info.vocab_size, length, args.batch, device)
    times = []
    for i in range(args.steps + 2):
        _sync(device)
        t = time.perf_counter()
        engine.train_micro_batch(batch)
        _sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t)
    step = statistics.median(times)
    tokens = args.batch * length
    row = {"item": "train", "backbone": backbone, "stage": stage, "method": method, "r": r, "trainable": params,
           "L": length, "batch": args.batch, "step_ms": round(step * 1000, 2), "tokens_per_s": round(tokens / step, 1),
           "peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.type == "cuda" else None}
    del engine, model, optimizer
    return row


def infer_rows(backbone, length, args, device) -> list[dict]:
    """Eval forward latency: the backbone on m + L ids, ADePT on the fly, ADePT folded (bf16 weights)."""
    import gc

    import torch
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from pipeline.core.backbones import load_backbone
    from pipeline.core.resolve import adept_config

    unset_hf_deepspeed_config()  # the ZeRO-3 rows' config would make transformers build this one partitioned
    gc.collect()
    base, _, kind = load_backbone(backbone, dtype="bfloat16")
    base = base.to(device).eval()
    cfg = _config(backbone, "adept", METHODS["adept"], 2, length, args.batch, gpu=device.type == "cuda")
    from adept import get_adept_model

    model = get_adept_model(base, adept_config(cfg, 19, kind)).eval()
    with torch.no_grad():
        model.ffn.w2.normal_(0, 0.02)  # a non-zero offset, as after training
    folded = model.fold().eval()
    batch = _batch(kind, base.config.get_text_config().vocab_size, length, args.batch, device)
    batch.pop("labels")
    longer = {"input_ids": torch.cat([batch["input_ids"][:, :60], batch["input_ids"]], 1)}
    extra = {"decoder_input_ids": torch.zeros(args.batch, 1, dtype=torch.long, device=device)} if kind == "seq2seq" else {}
    variants = {"backbone+m": lambda: base(**longer, **extra), "adept": lambda: model(**batch, **extra),
                "adept_folded": lambda: folded(**batch, **extra)}
    timings = {k: [] for k in variants}
    with torch.no_grad():
        for i in range(args.steps + 2):
            for name, call in variants.items():
                _sync(device)
                t = time.perf_counter()
                call()
                _sync(device)
                if i >= 2:
                    timings[name].append(time.perf_counter() - t)
    base_ms = statistics.median(timings["backbone+m"]) * 1000
    return [{"item": "infer", "backbone": backbone, "variant": name, "L": length, "batch": args.batch,
             "latency_ms": round(statistics.median(t) * 1000, 3),
             "ratio": round(statistics.median(t) * 1000 / base_ms, 4)} for name, t in timings.items()]


def _ratios(rows: list[dict]) -> None:
    """Each train row's step time against prompt tuning on the same backbone and ZeRO stage."""
    pt = {(r["backbone"], r["stage"]): r["step_ms"] for r in rows if r["item"] == "train" and r["method"] == "prompt"}
    for r in rows:
        if r["item"] == "train":
            r["step_ratio_vs_pt"] = round(r["step_ms"] / pt[(r["backbone"], r["stage"])], 3)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def table(report: dict) -> str:
    lines = [f"device {report['device']}, torch {report['torch']}, {report['wall_s']} s", "",
             "| backbone | ZeRO | method | r | trainable | tokens/s | step ratio vs PT | peak MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in (r for r in report["rows"] if r["item"] == "train"):
        lines.append(f"| {r['backbone']} | {r['stage']} | {r['method']} | {r['r'] or '-'} | {r['trainable']:,} | "
                     f"{r['tokens_per_s']:,.0f} | {r['step_ratio_vs_pt']:.3f} | {r['peak_mib'] or '-'} |")
    lines += ["", "| backbone | inference | latency ms | ratio vs backbone+m |", "|---|---|---|---|"]
    for r in (r for r in report["rows"] if r["item"] == "infer"):
        lines.append(f"| {r['backbone']} | {r['variant']} | {r['latency_ms']} | {r['ratio']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
