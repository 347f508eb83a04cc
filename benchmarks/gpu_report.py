"""The GPU check's numbers and what they are read against (benchmarks/gpu_check.py runs the rows): the dense bf16
peak by device name (PEAK_BF16_TFLOPS), the FLOP model behind model TFLOP/s and MFU (FLOP_MODEL, `step_flops`,
with the backbone's linear weights and attention dims it counts), the targets (TARGETS, `check_targets`) and the
markdown tables of a report (`table`, which `gpu_check.py --table f.json` prints).

Imports: torch (inside `linear_weights` only) and benchmarks/gpu_packed.py (its table) -- never Ray, MLflow or
`datasets`.
"""

from __future__ import annotations

import re

import gpu_packed

TARGET_TOKENS = 8  # labelled tokens per row: causal, the last 8 input tokens; seq2seq, 8 decoder tokens

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


def peak_bf16_tflops(device_name: str) -> float | None:
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name):
            return tflops
    return None


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


# ------------------------------------------------------------------ targets and tables
def _find(rows: list[dict], **match) -> dict | None:
    for r in rows:
        if r.get("status") == "ok" and all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def check_targets(rows: list[dict], profile) -> list[dict]:
    """Each target with the value it is checked against (None where a row did not run or a number is not
    measurable here, e.g. MFU and GPU memory on a CPU) and whether it is met; `profile` is a
    gpu_check.Profile (where the MFU target is checked: its `mfu_backbone`)."""
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

