"""Shared pieces of the benchmarks: backbones, method configs, batches, interleaved timing, statistics.

Everything here is deterministic given a seed, so a subprocess (`memprobe.py`) or another runner (Ray
Train, later) rebuilds exactly the model and batch the main process timed.
"""

from __future__ import annotations

import datetime
import gc
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from adept import AdeptConfig, budget_rank, get_adept_model

# d=768 like T5-base, so the budget values (ADePT r=19, DePT r=30 at m=60, s=256) apply as they are;
# two layers and a 4K vocabulary keep it fast. Random weights: timing does not depend on their values.
TINY_CONFIG = dict(vocab_size=4096, hidden_size=768, intermediate_size=1536, num_hidden_layers=2,
                   num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=1024,
                   pad_token_id=0, eos_token_id=1, bos_token_id=1, tie_word_embeddings=False)
SMOLLM2 = "smollm2-135m"
BACKBONES = ("tiny", SMOLLM2)

PROMPT_TOKENS = 60      # m of ADePT / DePT
PT_TOKENS = 100         # m of the prompt-tuning baseline; also the budget M (M·d trainable parameters)
DEPT_MAX_LENGTH = 256   # s: DePT's position offsets cover s positions and inputs are padded to s
METHODS = ("adept", "dept", "prompt")


def smollm2_cached() -> bool:
    """True when the converted SmolLM2 folder is in the cache (nothing is downloaded to find out)."""
    from pipeline.core.backbones import MARKER, cache_root

    folder = cache_root() / "models" / SMOLLM2
    return (folder / MARKER).is_file() and (folder / "config.json").is_file()


def load_backbone(name: str, device: str = "cpu", dtype: str = "float32") -> torch.nn.Module:
    """The frozen backbone in eval mode: `tiny` (built from TINY_CONFIG, seed 0) or `smollm2-135m` (cache)."""
    if name == "tiny":
        from transformers import LlamaConfig, LlamaForCausalLM

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = LlamaForCausalLM(LlamaConfig(**TINY_CONFIG))
        model = model.to(getattr(torch, dtype))
    elif name == SMOLLM2:
        from transformers.utils import logging as hf_logging

        from pipeline.core.backbones import load_backbone as load

        hf_logging.disable_progress_bar()

        model = load(SMOLLM2, dtype=dtype)[0]
    else:
        raise ValueError(f"unknown backbone {name!r}; use one of {BACKBONES}")
    return model.to(device).eval().requires_grad_(False)


@dataclass(frozen=True)
class MethodSpec:
    """One adapter at the budget of PT_TOKENS·d trainable parameters."""

    method: str
    m: int
    r: int | None
    s: int | None

    @property
    def label(self) -> str:
        if self.method == "adept":
            return f"ADePT m={self.m} r={self.r}"
        if self.method == "dept":
            return f"DePT m={self.m} r={self.r} s={self.s}"
        return f"PT m={self.m}"

    def config(self) -> AdeptConfig:
        common = dict(num_virtual_tokens=self.m, prompt_init="sample_vocab", seed=0)
        if self.method == "adept":
            return AdeptConfig(method="adept", ffn_hidden_size=self.r, **common)
        if self.method == "dept":
            return AdeptConfig(method="dept", rank=self.r, max_length=self.s, **common)
        return AdeptConfig(method="prompt", **common)

    def input_length(self, length: int) -> int:
        """Input positions the backbone sees besides the prompt: DePT pads every input to s."""
        return self.s if self.method == "dept" else length


def method_spec(method: str, hidden_size: int) -> MethodSpec:
    """r from `adept.budget_rank` for this d: d=768 gives the issue's 19 / 30, SmolLM2's d=576 gives 19 / 27."""
    if method == "adept":
        return MethodSpec("adept", PROMPT_TOKENS, budget_rank("adept", hidden_size, PROMPT_TOKENS, PT_TOKENS), None)
    if method == "dept":
        r = budget_rank("dept", hidden_size, PROMPT_TOKENS, PT_TOKENS, max_length=DEPT_MAX_LENGTH)
        return MethodSpec("dept", PROMPT_TOKENS, r, DEPT_MAX_LENGTH)
    if method == "prompt":
        return MethodSpec("prompt", PT_TOKENS, None, None)
    raise ValueError(f"unknown method {method!r}; use one of {METHODS}")


def build_adapter(backbone: torch.nn.Module, spec: MethodSpec):
    return get_adept_model(backbone, spec.config())


def make_batch(batch_size: int, length: int, vocab_size: int, seed: int, device: str = "cpu",
               pad_to: int | None = None, pad_id: int = 0, prefix: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids (B, L) with labels = ids; `pad_to` right-pads (mask 0, label -100); `prefix`
    prepends that many extra random ids (the backbone-with-m-tokens baseline)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab_size, (batch_size, length), generator=gen)
    if prefix:
        extra = torch.randint(3, vocab_size, (batch_size, prefix), generator=torch.Generator().manual_seed(seed + 1))
        ids = torch.cat([extra, ids], dim=1)
    mask = torch.ones_like(ids)
    labels = ids.clone()
    if pad_to is not None and pad_to > ids.shape[1]:
        pad = pad_to - ids.shape[1]
        ids = torch.cat([ids, ids.new_full((batch_size, pad), pad_id)], dim=1)
        mask = torch.cat([mask, mask.new_zeros(batch_size, pad)], dim=1)
        labels = torch.cat([labels, labels.new_full((batch_size, pad), -100)], dim=1)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def make_optimizer(model) -> torch.optim.Optimizer:
    """AdamW over the two parameter groups of the paper (prompt / offset)."""
    return torch.optim.AdamW(model.parameter_groups(prompt_lr=0.3, offset_lr=1e-4), eps=1e-6)


def train_step(model, optimizer, batch) -> None:
    """One optimisation step: forward with loss, backward, AdamW step, zero grads."""
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(fns: dict[str, Callable[[], object]], reps: int, warmup: int, device: str,
                min_sample_s: float = 0.0) -> tuple[dict[str, list[float]], int]:
    """Time every fn `reps` times in rounds, each round in a fresh random order (seeded), so slow drifts of
    the machine hit all alike and no fn always follows the same neighbour (allocator / cache after-effects).

    After `warmup` untimed calls each, the number of calls per sample (`inner`, the same for all fns)
    is chosen so the first fn's sample lasts >= `min_sample_s`. Returns seconds per call, and `inner`.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    sync(device)
    t0 = time.perf_counter()
    fns[names[0]]()
    sync(device)
    inner = max(1, int(min_sample_s / max(time.perf_counter() - t0, 1e-9)) + 1) if min_sample_s else 1
    samples: dict[str, list[float]] = {name: [] for name in names}
    rng = random.Random(0)
    for _ in range(reps):
        order = rng.sample(names, len(names))
        gc.collect()
        gc.disable()
        try:
            for name in order:
                fn = fns[name]
                sync(device)
                start = time.perf_counter()
                for _ in range(inner):
                    fn()
                sync(device)
                samples[name].append((time.perf_counter() - start) / inner)
        finally:
            gc.enable()
    return samples, inner


def summary(values: list[float], scale: float = 1.0) -> dict[str, float]:
    return {"median": statistics.median(values) * scale, "min": min(values) * scale, "max": max(values) * scale,
            "n": len(values)}


def paired_ratio(samples: list[float], baseline: list[float]) -> dict[str, float]:
    """Median/min/max of sample_i / baseline_i: each pair was measured in the same round."""
    return summary([s / b for s, b in zip(samples, baseline, strict=True)])


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str, threads: int, dtype: str) -> dict:
    import transformers

    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "device": device,
        "dtype": dtype,
    }
    try:
        info["load_avg_1m_at_start"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info
