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
  tokens not counted), model TFLOP/s and MFU (FLOP_MODEL below) against the GPU's dense bf16 peak
  (PEAK_BF16_TFLOPS, by device name), peak GPU memory of the row (`max_memory_allocated` from before the
  model is built), and the attention implementation actually used (config + the SDPA kernel the profiler saw).
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
The targets the numbers are checked against are in TARGETS and in the JSON's `targets`.

Imports: torch, transformers, deepspeed, yaml, numpy, benchmarks/gpu_packed.py and this repo's `adept` and
`pipeline.core.config`,
`pipeline.core.backbones`, `pipeline.worker.engine` -- never Ray, MLflow or `datasets`, which the GPU machine's
image lacks (tests/benchmarks/test_gpu_check.py runs this with those three made unimportable).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
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

import gpu_packed  # noqa: E402 - after the path set-up (the packed rows; imports nothing at import time)

SCHEMA = "adept-gpu-check/1"
NEVER_IMPORTED = ("ray", "mlflow", "datasets")  # not on the GPU machine's image
TARGET_TOKENS = 8  # labelled tokens per row: causal, the last 8 input tokens; seq2seq, 8 decoder tokens
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

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, by device name; first match wins (GH200 before H200,
# NVL / PCIe before the bare name). Sources: NVIDIA's datasheets (H200: "H200 Tensor Core GPU" datasheet,
# SXM BF16 1,979 TFLOPS with sparsity -> 989 dense, NVL 1,671 -> 835; H100: "H100 Tensor Core GPU" datasheet,
# SXM 1,979 -> 989, PCIe 1,513 -> 756, NVL 1,671 -> 835; GH200: as H100 SXM; A100: "A100 Tensor Core GPU"
# datasheet, BF16 312 dense; L40S: "L40S" datasheet, 733 with sparsity -> 362 dense; L4: 242 -> 121; A10: 125
# dense; B200: HGX B200 datasheet, 36 PFLOPS BF16 with sparsity for 8 GPUs -> 2,250 dense per GPU). The
# datasheet figure is the boost-clock peak; this project's H200 ran a bf16 8192^3 matmul at ~790 TFLOP/s
# (/work/.library/device/KINDS.md), so ~80 % MFU is the practical ceiling of the 989 figure.
PEAK_BF16_TFLOPS = [
    (r"GH200", 989.0), (r"H200 NVL", 835.0), (r"H200", 989.0), (r"H100 NVL", 835.0), (r"H100 PCIe", 756.0),
    (r"H100", 989.0), (r"H800 PCIe", 756.0), (r"H800", 989.0), (r"A100|A800", 312.0), (r"L40S", 362.0),
    (r"\bL4\b", 121.0), (r"\bA10\b", 125.0), (r"B200", 2250.0),
]
FLOP_MODEL = (
    "per step, N = weights of the backbone's linear layers (embedding lookups excluded), T = tokens they see "
    "(causal: B x (m + L); seq2seq: encoder B x (m + L), decoder B x 8), the LM head counted only where it runs "
    "(loss_only: the labelled positions): forward 2*N*T; backward 2*N*T (the backbone is frozen: activation "
    "gradients only, no weight gradients); attention per layer 4*B*S^2*d_attn forward (QK^T and AV, the full "
    "S^2 square, causal masking not discounted, as PaLM's MFU counts it; T5 cross-attention 4*B*S_dec*S_enc*"
    "d_attn) and twice that backward; the adapter's own FLOPs are left out (< 0.1 %). MFU = model FLOPs per "
    "step / step time / the dense bf16 peak of PEAK_BF16_TFLOPS.")

TARGETS = {
    "adept_mfu": ("ADePT training step on the 7B shape (ZeRO-2): MFU >= 45 % (best published PEFT figure on "
                  "one H100: ~41 % for LoRA on an 8B model)", 0.45, ">="),
    "folded_vs_bare": ("folded ADePT inference latency <= 1.02 x the bare backbone on m + L tokens", 1.02, "<="),
    "adept_vs_pt_step": ("ADePT step time <= 0.9 x prompt tuning's at the same budget (ZeRO-2)", 0.9, "<="),
    "zero3_vs_zero2_memory": ("ADePT peak GPU memory under ZeRO-3 on one GPU <= under ZeRO-2", 1.0, "<="),
}


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


# ------------------------------------------------------------------ device facts
def peak_bf16_tflops(device_name: str) -> float | None:
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name):
            return tflops
    return None


def imported_modules() -> dict[str, bool]:
    return {name: sys.modules.get(name) is not None for name in NEVER_IMPORTED}


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


# ------------------------------------------------------------------ the FLOP model
def _numel(param) -> int:
    return int(getattr(param, "ds_numel", None) or param.numel())  # ZeRO-3: the full size, not the partition


def linear_weights(model, kind: str) -> dict[str, int]:
    """Weights of the linear layers by where they run: body (causal) or encoder / decoder, and the LM head."""
    import torch

    out = {"body": 0, "encoder": 0, "decoder": 0, "head": 0}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        n = _numel(module.weight)
        if name.split(".")[-1] == "lm_head":
            out["head"] += n
        elif kind == "seq2seq":
            out["decoder" if name.startswith("decoder.") or ".decoder." in name else "encoder"] += n
        else:
            out["body"] += n
    return out


def attention_dims(config) -> dict[str, int]:
    c = config.get_text_config()
    heads = getattr(c, "num_attention_heads", None) or c.num_heads
    head_dim = getattr(c, "head_dim", None) or getattr(c, "d_kv", None) or c.hidden_size // heads
    layers = getattr(c, "num_hidden_layers", None) or c.num_layers
    return {"d_attn": heads * head_dim, "layers": layers,
            "decoder_layers": getattr(c, "num_decoder_layers", None) or layers}


def step_flops(weights: dict, dims: dict, kind: str, batch: int, length: int, m: int, head_positions: int,
               training: bool = True) -> float:
    """Model FLOPs of one step (FLOP_MODEL): B rows of L tokens with m virtual tokens in front."""
    d, b = dims["d_attn"], batch
    linear_mult, attn_mult = (2, 3) if training else (1, 1)  # backward: activation grads only / 2x attention
    if kind == "seq2seq":
        se, sd = m + length, TARGET_TOKENS
        linear = 2 * (weights["encoder"] * b * se + weights["decoder"] * b * sd + weights["head"] * head_positions)
        attention = (dims["layers"] * 4 * b * se * se * d
                     + dims["decoder_layers"] * (4 * b * sd * sd * d + 4 * b * sd * se * d))
    else:
        s = m + length
        linear = 2 * (weights["body"] * b * s + weights["head"] * head_positions)
        attention = dims["layers"] * 4 * b * s * s * d
    return float(linear * linear_mult + attention * attn_mult)


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
                results.append({**base, **gpu_packed.packed_row(row, ctx, sys.modules[__name__]), "status": "ok"})
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


# ------------------------------------------------------------------ targets and tables
def _find(rows: list[dict], **match) -> dict | None:
    for r in rows:
        if r.get("status") == "ok" and all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def check_targets(rows: list[dict], profile: Profile) -> list[dict]:
    """Each target with the value it is checked against (None where a row did not run or a number is not
    measurable here, e.g. MFU and GPU memory on a CPU) and whether it is met."""
    out = []

    def add(key: str, where: str, value: float | None) -> None:
        text, bound, op = TARGETS[key]
        met = None if value is None else (value >= bound if op == ">=" else value <= bound)
        out.append({"target": key, "where": where, "what": text, "bound": f"{op} {bound}",
                    "value": None if value is None else round(value, 4), "met": met})

    mfu_row = _find(rows, item="train", backbone=profile.mfu_backbone, zero=2, method="adept")
    add("adept_mfu", profile.mfu_backbone, mfu_row and mfu_row.get("mfu"))
    backbones = list(dict.fromkeys(r["backbone"] for r in rows if r.get("item") in ("train", "infer")))
    for b in backbones:
        folded, bare = _find(rows, backbone=b, variant="adept_folded"), _find(rows, backbone=b, variant="bare+m")
        add("folded_vs_bare", b, folded["latency_ms"] / bare["latency_ms"] if folded and bare else None)
    for b in backbones:
        adept, pt = (_find(rows, item="train", backbone=b, zero=2, method=x) for x in ("adept", "prompt"))
        add("adept_vs_pt_step", b, adept["step_ms"] / pt["step_ms"] if adept and pt else None)
    for b in backbones:
        z2, z3 = (_find(rows, item="train", backbone=b, zero=z, method="adept") for z in (2, 3))
        ok = z2 and z3 and z2.get("peak_mib") and z3.get("peak_mib")
        add("zero3_vs_zero2_memory", b, z3["peak_mib"] / z2["peak_mib"] if ok else None)
    return out


def _fmt(value, spec: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec) if spec else str(value)


def table(report: dict) -> str:
    """Markdown tables of a report (what benchmarks/README's GPU section shows)."""
    rows = report["rows"]
    lines = [f"{report['device']} ({report['profile']}), torch {report['torch']}, transformers "
             f"{report['transformers']}, deepspeed {report['deepspeed']}; peak bf16 "
             f"{_fmt(report['peak_bf16_tflops'])} TFLOP/s; {report['wall_s']} s; complete: {report['complete']}", "",
             "| backbone | ZeRO | method | r | trainable | B x L | step ms [min-max] | tokens/s | TFLOP/s | MFU | "
             "peak MiB | attention | status |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in (r for r in rows if r["item"] == "train"):
        lines.append(
            f"| {r['backbone']} | {r['zero']} | {r['method']} | {_fmt(r.get('r'))} | {_fmt(r.get('trainable'), ',')} | "
            f"{r['batch']} x {r['length']} | "
            + (f"{r['step_ms']} [{r['step_ms_min']}-{r['step_ms_max']}] | {r['tokens_per_s']:,.0f} | "
               f"{r['model_tflops']} | {_fmt(r['mfu'] and round(100 * r['mfu'], 1))}{'%' if r['mfu'] else ''} | "
               f"{_fmt(r['peak_mib'])} | {r['attention']} | ok |" if r["status"] == "ok" else
               f"- | - | - | - | - | - | {r['status']}: {r.get('reason', '')} |"))
    lines += ["", "| backbone | inference | B x L | latency ms [min-max] | ratio vs bare+m | attention | status |",
              "|---|---|---|---|---|---|---|"]
    for r in (r for r in rows if r["item"] == "infer"):
        lines.append(f"| {r['backbone']} | {r.get('variant', '-')} | {r['batch']} x {r['length']} | "
                     + (f"{r['latency_ms']} [{r['latency_ms_min']}-{r['latency_ms_max']}] | "
                        f"{r['ratio_vs_bare']:.3f} | {r['attention']} | ok |" if r["status"] == "ok" else
                        f"- | - | - | {r['status']}: {r.get('reason', '')} |"))
    lines += gpu_packed.table_lines(rows, _fmt)
    lines += ["", "| target | where | bound | value | met |", "|---|---|---|---|---|"]
    for t in report["targets"]:
        met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
        lines.append(f"| {t['what']} | {t['where']} | {t['bound']} | {_fmt(t['value'])} | {met} |")
    return "\n".join(lines)


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
