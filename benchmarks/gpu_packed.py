"""The packed rows of the GPU check (benchmarks/gpu_check.py): K ADePT members trained over ONE frozen backbone in
one batch (`adept.packed.PackedAdeptModel`), K = 1, 4, 8, 16 (--tiny: 1, 2). The question they answer: how much
more does one GPU train when K trials share the backbone's forward and backward?

One row = one pack, built fresh on the device (backbone in bf16, random init; adapters fp32 on the device):

- members: ADePT at the same 100-token budget, alternating m=60 and m=40 (r from the budget, `budget_rank`:
  d=576 -> r=19 / 29), each with its own seed and its own learning rates (prompt 3e-3 / 1e-2 / 3e-2 cycling,
  offset 1e-4 / 3e-4): the pack is a small sweep, as a tuner would pack it;
- batches: each member gets its own micro batch of B rows x L tokens (the profile's B x L, per member; its own
  random ids, the last 8 labelled), so the pack's batch is K x B rows and grows with K
  (`concat_member_batches`; rows of m=40 members carry 20 masked pad columns up to the pack's width m_max + L);
- one step: forward of the packed batch (`loss_only=True`: the LM head only at the labelled positions),
  backward of the summed loss (Σ_k mean_k: each member gets its solo gradient), per-member clipping
  (`clip_grad_norms(1.0)`), one torch AdamW step over the per-member groups (`parameter_groups`), zero_grad;
- plain torch in this one process on one GPU: no DeepSpeed (a pack is one process, its optimiser state is
  a few MiB), so these rows say `"engine": "torch"`.

Reported: step ms (median of the timed steps after 2 warm-up steps), tokens/s of the pack (K x B x L input tokens
per step; virtual tokens and pads not counted), tokens/s per member (the pack's / K), model TFLOP/s and MFU
(the check's FLOP model summed over members, each at its own m: the pads are not counted as work), the pads'
share of the computed positions, peak GPU memory, and against the K=1 row of the same backbone: the pack's
tokens/s ratio (`tokens_per_s_vs_k1`, the scaling: K when a pack of K costs what one member alone does) and the
peak memory ratio (`peak_vs_k1`).

Imports: torch and this repo's `adept` only; the check's helpers come in as a module (`check`: gpu_check.py
passes benchmarks/gpu_rows.py), never imported here.
"""

from __future__ import annotations

import statistics
import time

ENGINE = "torch"  # what the row says: one process, one GPU, no DeepSpeed
PACK_SIZES = {"full": (1, 4, 8, 16), "quick": (1, 4, 8, 16), "tiny": (1, 2)}
BUDGET_TOKENS = 100  # members' budget: 100 x d trainable parameters, as the train rows
MEMBER_M = (60, 40)  # member k: m = MEMBER_M[k % 2], r from the budget
PROMPT_LRS = (3e-3, 1e-2, 3e-2)  # member k: PROMPT_LRS[k % 3]
OFFSET_LRS = (1e-4, 3e-4)  # member k: OFFSET_LRS[(k // 3) % 2]
MAX_GRAD_NORM = 1.0
# Guessed seconds of a packed row on one H200 (backbone build + 2 warm-up + timed steps): a + b x K, until a run
# measures one; then the last measured packed row of the backbone, scaled by the guesses' ratio.
EST_S = {"shape:smollm2-135m": (4.0, 0.3), "random:llama-1b": (6.0, 0.6)}
EST_DEFAULT = (3.0, 0.3)


def guess_s(row) -> float:
    return _guess(row.backbone, row.packs)


def _guess(backbone: str, packs: int) -> float:
    a, b = EST_S.get(backbone, EST_DEFAULT)
    return a + b * packs


def scaled_estimate(row, measured: dict) -> float | None:
    """The largest measured pack on the same backbone (`measured`: (backbone, kind) -> seconds; a packed row's
    kind is "packed/K<k>"), scaled to this K by the guesses' ratio; None before any packed row of it ran."""
    done = [(int(kind.split("/K")[1]), s) for (backbone, kind), s in measured.items()
            if backbone == row.backbone and kind.startswith("packed/K")]
    if not done:
        return None
    k, seconds = max(done)
    return seconds * guess_s(row) / _guess(row.backbone, k)


def member_plan(count: int, d: int) -> list[dict]:
    """Member k's m, r (ADePT at the 100-token budget) and learning rates."""
    from adept.config import budget_rank

    return [{"m": MEMBER_M[k % 2], "r": budget_rank("adept", d, MEMBER_M[k % 2], BUDGET_TOKENS),
             "prompt_lr": PROMPT_LRS[k % 3], "offset_lr": OFFSET_LRS[(k // 3) % 2]} for k in range(count)]


def packed_row(row, ctx, check) -> dict:
    """One pack of `row.packs` members: build, 2 warm-up steps (the first profiled for the attention kernel),
    `row.steps` timed steps. `check` is the gpu_rows module (its backbones, FLOP model, memory helpers)."""
    import torch

    from adept import AdeptConfig
    from adept.model import labelled_head_supported
    from adept.packed import PackedAdeptModel, concat_member_batches

    t_row = time.perf_counter()
    held = check._memory_start(ctx)
    base, kind = check.build_backbone(row.backbone, ctx.device, zero3=False)
    d, k_count = check.hidden_size(base), row.packs
    members = member_plan(k_count, d)
    configs = [AdeptConfig(method="adept", num_virtual_tokens=p["m"], ffn_hidden_size=p["r"],
                           prompt_init="sample_vocab", base_model_name_or_path=row.backbone, seed=k)
               for k, p in enumerate(members)]
    pack = PackedAdeptModel.from_configs(base, configs)
    optimizer = torch.optim.AdamW(pack.parameter_groups([p["prompt_lr"] for p in members],
                                                        [p["offset_lr"] for p in members]), eps=1e-6)
    vocab = base.config.get_text_config().vocab_size
    batches = [check.make_batch(kind, vocab, row.length, row.batch, "cpu", seed=k) for k in range(k_count)]
    batch = {key: v.to(ctx.device) for key, v in concat_member_batches(batches, pad_token_id=0).items()}
    member = batch.pop("member")
    build_s = time.perf_counter() - t_row
    weights, dims = check.linear_weights(base, kind), check.attention_dims(base.config)
    labelled = kind == "seq2seq" or labelled_head_supported(base)
    flops = sum(check.step_flops(weights, dims, kind, row.batch, row.length, p["m"],
                                 row.batch * (check.TARGET_TOKENS if labelled else p["m"] + row.length))
                for p in members)
    width = max(p["m"] for p in members) + row.length
    real = sum(row.batch * (p["m"] + row.length) for p in members)  # positions a solo run would compute

    losses, norms, tokens = [], [], []

    def step() -> None:
        out = pack(**batch, member=member, loss_only=True)
        out.loss.backward()
        norms.append(pack.clip_grad_norms(MAX_GRAD_NORM))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(out.member_loss.detach().float().cpu())
        tokens.append(out.member_tokens.cpu())

    attention = check.attention_used(base, step)
    times = []
    for i in range(row.steps + 1):
        check._sync(ctx)
        t = time.perf_counter()
        step()
        check._sync(ctx)
        if i >= 1:  # warm-up: the profiled step and one more
            times.append(time.perf_counter() - t)
    step_s = statistics.median(times)
    pack_tokens = k_count * row.batch * row.length
    per_member = sorted({int(n) for n in tokens[-1].tolist()})
    out = {"engine": ENGINE, "members": members, "member_shapes": shapes(members), "d": d, "kind": kind,
           "trainable": sum(c.num_trainable_params(d) for c in configs),
           "backbone_params": sum(p.numel() for p in base.parameters()),
           "pack_rows": k_count * row.batch, "width": width,
           "pad_fraction": round(1 - real / (k_count * row.batch * width), 4),
           "label_tokens_per_member": per_member[0] if len(per_member) == 1 else per_member,
           "step_ms": round(step_s * 1000, 2), "step_ms_min": round(min(times) * 1000, 2),
           "step_ms_max": round(max(times) * 1000, 2), "tokens_per_s": round(pack_tokens / step_s, 1),
           "tokens_per_s_per_member": round(pack_tokens / step_s / k_count, 1),
           "flops_per_step": flops, "model_tflops": float(f"{flops / step_s / 1e12:.4g}"),
           "mfu": round(flops / step_s / 1e12 / ctx.peak_tflops, 4) if ctx.peak_tflops else None,
           "attention": attention, "held_before_mib": held, **check._memory_peak(ctx), "build_s": round(build_s, 2),
           "loss_first": round(float(losses[0].mean()), 4), "loss_last": round(float(losses[-1].mean()), 4),
           "grad_norm_max": round(float(torch.stack(norms).max()), 4),
           "finite": bool(all(torch.isfinite(x).all() for x in losses))}
    pack = optimizer = base = batch = None  # released before the next row
    return out


def shapes(members: list[dict]) -> str:
    """'(60, 19) x 2, (40, 29) x 2': the members' distinct (m, r) and how many of each."""
    counts: dict = {}
    for p in members:
        counts[(p["m"], p["r"])] = counts.get((p["m"], p["r"]), 0) + 1
    return ", ".join(f"({m}, {r}) x {n}" for (m, r), n in counts.items())


def add_scaling(results: list[dict]) -> None:
    """Each ok packed row against the ok K=1 row of its backbone: tokens/s and peak memory ratios (None where
    the K=1 row did not run or memory is not measured, e.g. on a CPU)."""
    ones = {r["backbone"]: r for r in results
            if r.get("item") == "packed" and r.get("packs") == 1 and r.get("status") == "ok"}
    for r in results:
        if r.get("item") != "packed" or r.get("status") != "ok":
            continue
        one = ones.get(r["backbone"])
        r["tokens_per_s_vs_k1"] = round(r["tokens_per_s"] / one["tokens_per_s"], 3) if one else None
        peak = one and one.get("peak_mib") and r.get("peak_mib")
        r["peak_vs_k1"] = round(r["peak_mib"] / one["peak_mib"], 3) if peak else None


def table_lines(rows: list[dict], fmt) -> list[str]:
    """The packed rows' markdown table (gpu_report.table appends it)."""
    packed = [r for r in rows if r.get("item") == "packed"]
    if not packed:
        return []
    lines = ["", "| backbone | packed K | members (m, r) | B x L per member | step ms [min-max] | pack tokens/s | "
                 "tokens/s per member | vs K=1 | TFLOP/s | MFU | peak MiB (vs K=1) | engine | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in packed:
        head = f"| {r['backbone']} | {r['packs']} | "
        if r["status"] != "ok":
            lines.append(head + f"- | {r['batch']} x {r['length']} | - | - | - | - | - | - | - | "
                                f"{ENGINE} | {r['status']}: {r.get('reason', '')} |")
            continue
        mfu = f"{round(100 * r['mfu'], 1)}%" if r.get("mfu") else "-"
        peak = fmt(r.get("peak_mib")) + (f" ({r['peak_vs_k1']:.2f}x)" if r.get("peak_vs_k1") else "")
        vs = f"{r['tokens_per_s_vs_k1']:.2f}x" if r.get("tokens_per_s_vs_k1") is not None else "-"
        lines.append(head + f"{r['member_shapes']} | {r['batch']} x {r['length']} | {r['step_ms']} "
                            f"[{r['step_ms_min']}-{r['step_ms_max']}] | {r['tokens_per_s']:,.0f} | "
                            f"{r['tokens_per_s_per_member']:,.0f} | {vs} | {r['model_tflops']} | {mfu} | {peak} | "
                            f"{r['engine']} | ok |")
    return lines
