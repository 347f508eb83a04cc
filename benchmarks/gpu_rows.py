"""The GPU check's rows as they run (benchmarks/gpu_check.py plans them and keeps the time): a row (`Row`) and the
run's context (`Context`), the backbones (pipeline aliases and the shapes this check builds, CHECK_SHAPES;
random init in bf16 where they run), the synthetic batches, the attention kernel actually used, GPU memory, and
the two row runners: `train_row` (one method under DeepSpeed ZeRO-2 / ZeRO-3 through the pipeline's engine) and
`infer_rows` (bare backbone, ADePT on the fly, ADePT folded). This module is also what benchmarks/gpu_packed.py
receives as `check` (its backbones, batches, FLOP model and memory helpers).

Imports: torch, transformers, deepspeed (inside the functions), benchmarks/gpu_report.py (the FLOP model) and
this repo's `adept`, `pipeline.core.config`, `pipeline.core.backbones`, `pipeline.worker.engine` -- never Ray,
MLflow or `datasets`.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field

from gpu_report import TARGET_TOKENS, _numel, attention_dims, linear_weights, step_flops

# Same budget: ADePT and DePT m=60 with r from a 100-token budget (100 x d trainable parameters), PT m=100.
METHODS = {"adept": {"num_virtual_tokens": 60, "budget": 100}, "dept": {"num_virtual_tokens": 60, "budget": 100},
           "prompt": {"num_virtual_tokens": 100}}

# Shapes this check builds itself (not pipeline aliases): transformers config fields, random init at build.
_LLAMA = {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 3, "tie_word_embeddings": False,
          "max_position_embeddings": 4096, "rms_norm_eps": 1e-5}
CHECK_SHAPES = {
    "shape:llama-7b": ("llama", {**_LLAMA, "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
                                 "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32}),
    "shape:smollm2-135m": ("llama", {**_LLAMA, "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
                                     "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                                     "tie_word_embeddings": True, "max_position_embeddings": 8192}),
    "shape:t5-tiny": ("t5", {"pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0, "vocab_size": 512,
                             "d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2, "num_decoder_layers": 2,
                             "num_heads": 4, "feed_forward_proj": "relu", "tie_word_embeddings": True}),
}


@dataclass
class Row:
    id: str
    item: str  # train | infer | packed
    backbone: str
    length: int
    batch: int
    method: str | None = None
    zero: int | None = None
    steps: int = 0
    packs: int | None = None  # packed rows: K members in one pack
    status: str = "planned"  # planned -> ok | skipped | error
    reason: str | None = None

    @property
    def kind(self) -> str:
        if self.item == "packed":
            return f"packed/K{self.packs}"
        return "zero3" if self.zero == 3 else self.item


# ------------------------------------------------------------------ backbones
def backbone_config(name: str):
    from transformers import AutoConfig

    if name in CHECK_SHAPES:
        model_type, fields = CHECK_SHAPES[name]
        return AutoConfig.for_model(model_type, **fields)
    from pipeline.core.backbones import RANDOM_ALIASES, random_config

    if name not in RANDOM_ALIASES:
        raise ValueError(f"unknown backbone {name!r}: use one of {', '.join([*RANDOM_ALIASES, *CHECK_SHAPES])}")
    return random_config(RANDOM_ALIASES[name])


def build_backbone(name: str, device, zero3: bool):
    """(model, kind): random init in bf16, built on `device` (a 7B model never lives on the host). Under ZeRO-3 an
    `HfDeepSpeedConfig` is alive and transformers builds under `deepspeed.zero.Init`, which places the partitions
    itself. `pipeline.core.backbones.build_random_model` is the pipeline's own random-init path."""
    import contextlib

    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from pipeline.core.backbones import build_random_model

    config = backbone_config(name)
    kind = "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"
    cls = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
    where = contextlib.nullcontext() if zero3 else torch.device(device)
    with where:
        model = build_random_model(cls, config, torch.bfloat16, seed=0)
    return model, kind


def hidden_size(model) -> int:
    config = model.config.get_text_config()
    return int(getattr(config, "hidden_size", None) or config.d_model)


# ------------------------------------------------------------------ the attention kernel actually used
SDPA_KERNELS = {"_scaled_dot_product_flash_attention_for_cpu": "flash-cpu",
                "_scaled_dot_product_flash_attention": "flash", "_scaled_dot_product_cudnn_attention": "cudnn",
                "_scaled_dot_product_efficient_attention": "mem-efficient",
                "_scaled_dot_product_attention_math": "math", "_flash_attention_forward": "flash"}


def attention_used(model, call) -> str:
    """The configured implementation (sdpa / eager / flash_attention_2 ...) and, for SDPA, the kernel the
    profiler saw during `call()` (a warm-up step): e.g. "sdpa/flash", "sdpa/mem-efficient", "eager"."""
    from torch.profiler import ProfilerActivity, profile

    impl = getattr(model.config.get_text_config(), "_attn_implementation", None) or "unknown"
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    seen = {e.key.split("::")[-1] for e in prof.key_averages()}
    kernels = sorted({label for op, label in SDPA_KERNELS.items() if op in seen})
    if any("flash_attn" in op for op in seen):
        kernels.append("flash-attn")
    return f"{impl}/{'+'.join(kernels)}" if kernels else impl


# ------------------------------------------------------------------ the rows
@dataclass
class Context:
    device: object
    gpu: bool
    peak_tflops: float | None
    deadline: float
    measured: dict = field(default_factory=dict)  # (backbone, kind) -> seconds of the last such row
    pace: list = field(default_factory=list)  # measured / guessed seconds of each row run so far


def _sync(ctx: Context) -> None:
    import torch

    if ctx.gpu:
        torch.cuda.synchronize()


def _mib(n: int) -> float:
    return round(n / 2**20, 1)


def _memory_start(ctx: Context) -> float | None:
    import torch

    if not ctx.gpu:
        return None
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return _mib(torch.cuda.memory_allocated())


def _memory_peak(ctx: Context) -> dict:
    import torch

    if not ctx.gpu:
        return {"peak_mib": None, "peak_reserved_mib": None}
    return {"peak_mib": _mib(torch.cuda.max_memory_allocated()),
            "peak_reserved_mib": _mib(torch.cuda.max_memory_reserved())}


def train_config(row: Row, kind: str, gpu: bool):
    from pipeline.core.config import TrainConfig

    source = row.length if kind == "seq2seq" else row.length - TARGET_TOKENS  # DePT's s = L either way
    return TrainConfig(method=row.method, backbone=row.backbone, dtype="bfloat16", precision="bf16",
                       deepspeed=True, zero_stage=row.zero, batch_size=row.batch, use_gpu=gpu,
                       max_source_length=source, max_target_length=TARGET_TOKENS, max_steps=1000, eval_steps=1000,
                       warmup_steps=0, prompt_init="sample_vocab", **METHODS[row.method])


def method_config(cfg, kind: str, d: int):
    """The method's AdeptConfig and r at the same budget; `pipeline.core.resolve.adept_config` and
    `pipeline.driver.launch.adapter_size` compute the same but import `pipeline.core.data` (-> `datasets`)."""
    from adept import AdeptConfig
    from adept.config import budget_rank

    s = cfg.max_source_length + (0 if kind == "seq2seq" else cfg.max_target_length)
    r = None
    if cfg.budget is not None:
        r = budget_rank(cfg.method, d, cfg.num_virtual_tokens, cfg.budget, max_length=s)
    return AdeptConfig(method=cfg.method, num_virtual_tokens=cfg.num_virtual_tokens,
                       ffn_hidden_size=r if cfg.method == "adept" else None, ffn_dropout=cfg.ffn_dropout,
                       rank=r if cfg.method == "dept" else None, max_length=s if cfg.method == "dept" else None,
                       prompt_init=cfg.prompt_init, base_model_name_or_path=cfg.backbone, seed=cfg.seed), r


def make_batch(kind: str, vocab: int, length: int, batch: int, device, labels: bool = True, seed: int = 0) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (batch, length), generator=g)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if labels and kind == "causal":  # the last 8 tokens are the target, as a short answer
        out["labels"] = ids.clone()
        out["labels"][:, :-TARGET_TOKENS] = -100
    elif labels:
        out["labels"] = torch.randint(4, vocab, (batch, TARGET_TOKENS), generator=g)
    return {k: v.to(device) for k, v in out.items()}


def train_row(row: Row, ctx: Context) -> dict:
    import torch
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from adept import get_adept_model
    from adept.model import labelled_head_supported
    from pipeline.worker.engine import build_engine, deepspeed_plan, linear_warmup_schedule

    t_row = time.perf_counter()
    held = _memory_start(ctx)
    config = backbone_config(row.backbone)
    kind = "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"
    cfg = train_config(row, kind, ctx.gpu)
    plan = deepspeed_plan(cfg, ctx.device)  # the engine's own ZeRO-3 set-up: the backbone is built partitioned
    try:
        base, kind = build_backbone(row.backbone, ctx.device, zero3=plan.partitioned is not None)
        d = hidden_size(base)
        adept_cfg, r = method_config(cfg, kind, d)
        weights, dims = linear_weights(base, kind), attention_dims(base.config)
        head_positions = row.batch * TARGET_TOKENS if (kind == "seq2seq" or labelled_head_supported(base)) else None
        model = get_adept_model(base, adept_cfg)
        optimizer = torch.optim.AdamW(model.parameter_groups(0.01, 1e-4), eps=1e-6)
        engine = build_engine(cfg, model, optimizer, linear_warmup_schedule(optimizer, 0, 1000), ctx.device, 1, plan)
        build_s = time.perf_counter() - t_row
        batch = make_batch(kind, base.config.get_text_config().vocab_size, row.length, row.batch, ctx.device)
        m = adept_cfg.num_virtual_tokens
        if head_positions is None:
            head_positions = row.batch * (m + row.length)
        losses, times = [], []
        attention = attention_used(base, lambda: losses.append(engine.train_micro_batch(batch)[0]))
        for i in range(row.steps + 1):
            _sync(ctx)
            t = time.perf_counter()
            loss, _ = engine.train_micro_batch(batch)
            _sync(ctx)
            losses.append(loss)
            if i >= 1:  # warm-up: the profiled step and one more
                times.append(time.perf_counter() - t)
        step = statistics.median(times)
        flops = step_flops(weights, dims, kind, row.batch, row.length, m, head_positions)
        out = {"r": r, "m": m, "trainable": adept_cfg.num_trainable_params(d), "d": d,
               "backbone_params": sum(_numel(p) for p in base.parameters()), "kind": kind,
               "step_ms": round(step * 1000, 2), "step_ms_min": round(min(times) * 1000, 2),
               "step_ms_max": round(max(times) * 1000, 2), "tokens_per_s": round(row.batch * row.length / step, 1),
               "flops_per_step": flops, "model_tflops": float(f"{flops / step / 1e12:.4g}"),
               "mfu": round(flops / step / 1e12 / ctx.peak_tflops, 4) if ctx.peak_tflops else None,
               "attention": attention, "held_before_mib": held, **_memory_peak(ctx),
               "build_s": round(build_s, 2), "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4)}
        destroy = getattr(engine.engine, "destroy", None)
        if callable(destroy):
            destroy()  # DeepSpeed's hooks and buffers go with it (ZeRO-3 especially)
        engine = model = optimizer = base = destroy = None  # released before the next row (the closures too)
        return out
    finally:
        plan = None
        unset_hf_deepspeed_config()  # the next backbone must not be built partitioned
        gc.collect()


def infer_rows(row: Row, ctx: Context) -> list[dict]:
    """Eval forward latency: the bare backbone on m + L ids, ADePT on the fly, ADePT folded (bf16 weights)."""
    import torch

    from adept import get_adept_model

    held = _memory_start(ctx)
    base, kind = build_backbone(row.backbone, ctx.device, zero3=False)
    base.eval()
    cfg = train_config(Row(row.id, "train", row.backbone, row.length, row.batch, "adept", 2), kind, ctx.gpu)
    adept_cfg, r = method_config(cfg, kind, hidden_size(base))
    model = get_adept_model(base, adept_cfg).to(torch.bfloat16).eval()  # served in bf16 like the backbone
    with torch.no_grad():
        model.ffn.w2.normal_(0, 0.02)  # a non-zero offset, as after training
    folded = model.fold().eval()
    m = adept_cfg.num_virtual_tokens
    batch = make_batch(kind, base.config.get_text_config().vocab_size, row.length, row.batch, ctx.device, False)
    longer = {"input_ids": torch.cat([batch["input_ids"][:, :m], batch["input_ids"]], 1)}
    extra = {}
    if kind == "seq2seq":
        extra = {"decoder_input_ids": torch.zeros(row.batch, 1, dtype=torch.long, device=ctx.device)}
    variants = {"bare+m": lambda: base(**longer, **extra), "adept": lambda: model(**batch, **extra),
                "adept_folded": lambda: folded(**batch, **extra)}
    timings: dict[str, list[float]] = {k: [] for k in variants}
    with torch.no_grad():
        attention = attention_used(base, variants["bare+m"])
        for i in range(row.steps + 1):
            for name, call in variants.items():  # interleaved: drift hits every variant alike
                _sync(ctx)
                t = time.perf_counter()
                call()
                _sync(ctx)
                if i >= 1:
                    timings[name].append(time.perf_counter() - t)
    memory = _memory_peak(ctx)
    bare = statistics.median(timings["bare+m"])
    model = folded = base = None
    return [{"variant": name, "m": m, "r": r, "kind": kind, "latency_ms": round(statistics.median(t) * 1000, 3),
             "latency_ms_min": round(min(t) * 1000, 3), "latency_ms_max": round(max(t) * 1000, 3),
             "ratio_vs_bare": round(statistics.median(t) / bare, 4), "attention": attention, "held_before_mib": held,
             **memory} for name, t in timings.items()]

