"""Item 1: train step time (forward + backward + AdamW over the two groups) and peak memory.

ADePT (m=60, r from the budget) vs DePT (m=60, r from the budget, inputs padded to s=256) vs PT (m=100),
all at the budget of 100·d trainable parameters, same backbone, same token ids, same batch size.
Times are interleaved in this process; ratios are per round against PT (the baseline, 1.00).
Peak memory comes from a fresh subprocess per configuration (`memprobe.py`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import bench_common as bc

BASELINE = "prompt"
ORDER = ("prompt", "adept", "dept")


def measure_memory(backbone: str, method: str, length: int, batch: int, device: str, dtype: str, threads: int,
                   steps: int = 2, timeout_s: float = 900) -> dict:
    spec = dict(backbone=backbone, method=method, length=length, batch=batch, device=device, dtype=dtype,
                threads=threads, steps=steps)
    script = Path(__file__).with_name("memprobe.py")
    proc = subprocess.run([sys.executable, str(script), json.dumps(spec)], capture_output=True, text=True,
                          timeout=timeout_s)
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-10:])
        raise RuntimeError(f"memory probe {spec} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1])


def run(backbone_name: str, backbone, lengths: list[int], batch: int, *, reps: int, warmup: int, device: str,
        dtype: str, threads: int, memory: bool = True, log=print) -> list[dict]:
    d, vocab = backbone.config.hidden_size, backbone.config.vocab_size
    pad_id = backbone.config.pad_token_id or 0
    specs = {method: bc.method_spec(method, d) for method in ORDER}
    models = {method: bc.build_adapter(backbone, spec).train() for method, spec in specs.items()}
    optimizers = {method: bc.make_optimizer(model) for method, model in models.items()}
    rows = []
    for length in lengths:
        batches = {
            method: bc.make_batch(batch, length, vocab, seed=1, device=device, pad_id=pad_id,
                                  pad_to=spec.s if method == "dept" else None)
            for method, spec in specs.items()
        }
        fns = {method: (lambda m=method, b=batches: bc.train_step(models[m], optimizers[m], b[m])) for method in ORDER}
        log(f"[train] {backbone_name} L={length} B={batch}: {reps} interleaved rounds of {', '.join(ORDER)}")
        samples, inner = bc.interleaved(fns, reps=reps, warmup=warmup, device=device)
        mem = {}
        if memory:
            for method in ORDER:
                log(f"[train] {backbone_name} L={length} {method}: peak memory in a fresh process")
                mem[method] = measure_memory(backbone_name, method, length, batch, device, dtype, threads)
        for method in ORDER:
            spec, model = specs[method], models[method]
            step = bc.summary(samples[method], 1000.0)
            row = {
                "item": "train", "backbone": backbone_name, "length": length, "batch": batch, "method": method,
                "label": spec.label, "m": spec.m, "r": spec.r, "s": spec.s,
                "positions": spec.m + spec.input_length(length),
                "trainable_params": model.num_trainable_parameters(), "budget_params": bc.PT_TOKENS * d,
                "step_ms": step, "ratio": bc.paired_ratio(samples[method], samples[BASELINE]),
                "baseline": specs[BASELINE].label, "calls_per_sample": inner,
                "tokens_per_s": batch * length / (step["median"] / 1000.0),
            }
            if memory:
                row["peak_mem_delta_mib"] = mem[method]["peak_delta_mib"]
                row["mem_ratio"] = mem[method]["peak_delta_mib"] / mem[BASELINE]["peak_delta_mib"]
                row["mem_how"] = mem[method]["how"]
            rows.append(row)
    return rows
