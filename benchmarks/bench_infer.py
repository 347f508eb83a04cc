"""Item 2: inference latency / throughput (eval forward, no grad, logits over every position).

Variants, same batch of token ids (B, L):
  backbone     the frozen backbone on the L input tokens alone (context: no prompt at all)
  backbone+m   the frozen backbone on L + m token ids, m=60: the baseline (1.00) the targets refer to
  control      the baseline again (A/A): its ratio spread is the noise floor of this run
  adept        ADePT computing E + FFN(E) on the fly, then [P ; E'] (m=60)
  adept_folded the same adapter after `fold()`: the FFN is folded into the input table
  dept         DePT (m=60), inputs padded to s=256 (its offsets cover s positions)
  prompt       prompt tuning with m=100
Targets (issue 6): adept_folded <= 1.02x and adept <= 1.05x the backbone+m baseline.

End-to-end ratios on a shared CPU scatter by more than these targets (the `control` row shows by how
much), so the ADePT rows also get an overhead account: ADePT runs the backbone on inputs of exactly the
baseline's shape (m + L positions), so all it adds is its input preparation (`_prompted_inputs`: lookup,
FFN, prompt concatenation) minus the baseline's own lookup of m + L ids. Both are timed, interleaved,
over many cheap rounds; `accounted_ratio` = 1 + (that difference) / (baseline forward time).
"""

from __future__ import annotations

import bench_common as bc
import torch

BASELINE = "backbone+m"
ORDER = ("backbone+m", "control", "backbone", "adept", "adept_folded", "dept", "prompt")
TARGETS = {"adept_folded": 1.02, "adept": 1.05}


def _labels(specs: dict) -> dict[str, str]:
    m = specs["adept"].m
    return {
        "backbone": "backbone alone (L tokens)",
        "backbone+m": f"backbone with m={m} tokens (L+{m}) [baseline]",
        "control": "the baseline again (A/A noise control)",
        "adept": f"{specs['adept'].label}, on the fly",
        "adept_folded": f"{specs['adept'].label}, folded",
        "dept": f"{specs['dept'].label} (padded to s)",
        "prompt": specs["prompt"].label,
    }


def build_variants(backbone) -> tuple[dict, dict]:
    """The eval-mode models (one shared frozen backbone; the folded one holds its own copy) and their specs."""
    d = backbone.config.hidden_size
    specs = {method: bc.method_spec(method, d) for method in bc.METHODS}
    adept = bc.build_adapter(backbone, specs["adept"])
    with torch.no_grad():  # a "trained" FFN (W2 = 0 at init would fold to E itself); costs are unaffected
        gen = torch.Generator().manual_seed(3)
        for p in (adept.ffn.w2, adept.ffn.b1, adept.ffn.b2):
            p.copy_(torch.randn(p.shape, generator=gen).mul_(0.02))
    models = {
        "backbone": backbone, "backbone+m": backbone, "control": backbone, "adept": adept.eval(), "adept_folded": adept.fold().eval(),
        "dept": bc.build_adapter(backbone, specs["dept"]).eval(),
        "prompt": bc.build_adapter(backbone, specs["prompt"]).eval(),
    }
    return models, specs


def inputs_for(variant: str, specs: dict, batch: int, length: int, vocab: int, pad_id: int, device: str) -> dict:
    prefix = specs["adept"].m if variant in ("backbone+m", "control") else 0
    pad_to = specs["dept"].s if variant == "dept" else None
    b = bc.make_batch(batch, length, vocab, seed=1, device=device, pad_to=pad_to, pad_id=pad_id, prefix=prefix)
    # use_cache=False: a plain scoring forward, no KV cache built (the same for every variant).
    return {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"], "use_cache": False}


def run(backbone_name: str, backbone, lengths: list[int], batch: int, *, reps: int, warmup: int, device: str,
        min_sample_s: float = 0.0, log=print) -> list[dict]:
    models, specs = build_variants(backbone)
    labels = _labels(specs)
    vocab, pad_id = backbone.config.vocab_size, backbone.config.pad_token_id or 0
    rows = []
    for length in lengths:
        inputs = {v: inputs_for(v, specs, batch, length, vocab, pad_id, device) for v in ORDER}
        fns = {v: (lambda v=v, x=inputs: models[v](**x[v])) for v in ORDER}
        log(f"[infer] {backbone_name} L={length} B={batch}: {reps} interleaved rounds of {', '.join(ORDER)}")
        with torch.no_grad():
            samples, inner = bc.interleaved(fns, reps=reps, warmup=warmup, device=device, min_sample_s=min_sample_s)
            account = _overhead_account(models, inputs, reps=max(3 * reps, 21), warmup=warmup, device=device)
        base_ms = bc.summary(samples[BASELINE], 1000.0)["median"]
        for v in ORDER:
            latency = bc.summary(samples[v], 1000.0)
            rows.append({
                "item": "inference", "backbone": backbone_name, "length": length, "batch": batch, "variant": v,
                "label": labels[v], "positions": inputs[v]["input_ids"].shape[1] + _prompt_len(v, specs),
                "latency_ms": latency, "ratio": bc.paired_ratio(samples[v], samples[BASELINE]),
                "baseline": labels[BASELINE], "calls_per_sample": inner,
                "seq_per_s": batch / (latency["median"] / 1000.0),
                "tokens_per_s": batch * length / (latency["median"] / 1000.0),
                "target": TARGETS.get(v),
            })
            if v in account:
                extra = account[v]["overhead_ms"]
                rows[-1].update(account[v], accounted_ratio=1.0 + extra / base_ms)
    return rows


def _overhead_account(models: dict, inputs: dict, *, reps: int, warmup: int, device: str) -> dict:
    """Per ADePT variant: its input preparation, the baseline's lookup, and their per-round difference (ms)."""
    lookup = models[BASELINE].get_input_embeddings()
    base_ids = inputs[BASELINE]["input_ids"]
    fns = {"lookup": lambda: lookup(base_ids)}
    for v in TARGETS:
        x = inputs[v]
        fns[v] = (lambda v=v, x=x: models[v]._prompted_inputs(x["input_ids"], x["attention_mask"]))
    samples, _ = bc.interleaved(fns, reps=reps, warmup=warmup, device=device, min_sample_s=0.02)
    out = {}
    for v in TARGETS:
        diffs = [a - b for a, b in zip(samples[v], samples["lookup"], strict=True)]
        out[v] = {"input_prep_ms": bc.summary(samples[v], 1000.0), "lookup_ms": bc.summary(samples["lookup"], 1000.0),
                  "overhead_ms": bc.summary(diffs, 1000.0)["median"]}
    return out


def _prompt_len(variant: str, specs: dict) -> int:
    return {"adept": specs["adept"].m, "adept_folded": specs["adept"].m, "dept": specs["dept"].m,
            "prompt": specs["prompt"].m}.get(variant, 0)


def targets(rows: list[dict]) -> list[dict]:
    """One line per target. Verdict from the overhead account (precise); the end-to-end median and the A/A
    control of the same run are given beside it, and a disagreement is spelled out, not hidden."""
    control = {(r["backbone"], r["length"]): r["ratio"] for r in rows
               if r["item"] == "inference" and r["variant"] == "control"}
    out = []
    for row in rows:
        if row["item"] != "inference" or not row.get("target"):
            continue
        target, e2e, acc = row["target"], row["ratio"]["median"], row.get("accounted_ratio")
        ctl = control.get((row["backbone"], row["length"]))
        if acc is not None and acc > target:
            verdict = f"missed by {100 * (acc - target):.1f} points (overhead account)"
        elif e2e <= target:
            verdict = "met"
        elif ctl and ctl["min"] <= e2e <= ctl["max"]:
            verdict = (f"met by the overhead account; end-to-end median {e2e:.3f} is above the target but inside "
                       f"the A/A control's range {ctl['min']:.3f}–{ctl['max']:.3f} (noise)")
        else:
            verdict = f"missed end-to-end by {100 * (e2e - target):.1f} points"
        out.append({"backbone": row["backbone"], "length": row["length"], "variant": row["variant"],
                    "target": target, "ratio": e2e, "ratio_min": row["ratio"]["min"], "ratio_max": row["ratio"]["max"],
                    "accounted_ratio": acc, "overhead_ms": row.get("overhead_ms"),
                    "control": ctl, "met": verdict.startswith("met"), "verdict": verdict})
    return out
