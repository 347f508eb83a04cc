"""Where does ADePT's inference time go? torch.profiler over the item-2 variants, op by op.

    python benchmarks/profile_infer.py --backbone tiny --length 64 --batch 2 [--calls 10] [--device cuda]

For the baseline (backbone with m tokens), ADePT on the fly and ADePT folded it prints the total
profiled time per call, the ops whose time differs most from the baseline, and the time spent in the
adapter's own code (the `adept::*` record_function ranges wrapped around `embed_inputs` and the prompt
concatenation), as a share of the forward. `--shapes` also lists every (op, input shapes) call that the
variant makes and the baseline does not, or the reverse: if only the adapter's small ops show up, the
backbone work is the same computation, and any end-to-end difference beyond them is machine noise.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402
import bench_infer  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

VARIANTS = ("backbone+m", "adept", "adept_folded")


def _instrument(model) -> None:
    """Wrap the adapter's own steps in named ranges (on this instance only; the library is unchanged)."""
    embed, prompted = model.embed_inputs, model._prompted_inputs

    def embed_inputs(*a, **k):
        with record_function("adept::embed_inputs (lookup + offset)"):
            return embed(*a, **k)

    def prompted_inputs(*a, **k):
        with record_function("adept::prompted_inputs (all adapter work)"):
            return prompted(*a, **k)

    model.embed_inputs, model._prompted_inputs = embed_inputs, prompted_inputs


def profile_variant(fn, calls: int, device: str) -> dict[str, float]:
    """Self time per call (us) of every op, plus '__total__' (sum of self times) and the adept ranges (total)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with torch.no_grad():
        for _ in range(3):
            fn()
        bc.sync(device)
        with profile(activities=activities) as prof:
            for _ in range(calls):
                fn()
            bc.sync(device)
    times: dict[str, float] = defaultdict(float)
    for evt in prof.key_averages():
        if evt.key.startswith("adept::"):
            times[evt.key] = evt.cpu_time_total / calls
        elif evt.key == "aten::embedding":  # the vocabulary lookup, which every variant does
            times["__lookup__"] = evt.cpu_time_total / calls
        else:
            times[evt.key] += evt.self_cpu_time_total / calls
            times["__total__"] += evt.self_cpu_time_total / calls
    return times


def op_shapes(fn, device: str) -> Counter:
    """Multiset of (op, input shapes) of one call (the profiler's top-level aten ops and their children)."""
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
        bc.sync(device)
    return Counter({(e.key, str(e.input_shapes)): e.count
                    for e in prof.key_averages(group_by_input_shape=True) if e.key.startswith("aten::")})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="tiny", choices=bc.BACKBONES)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--shapes", action="store_true", help="diff the (op, input shapes) calls against the baseline")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    backbone = bc.load_backbone(args.backbone, args.device)
    models, specs = bench_infer.build_variants(backbone)
    for name in ("adept", "adept_folded"):
        _instrument(models[name])
    vocab, pad = backbone.config.vocab_size, backbone.config.pad_token_id or 0
    results, shapes = {}, {}
    for v in VARIANTS:
        inputs = bench_infer.inputs_for(v, specs, args.batch, args.length, vocab, pad, args.device)
        results[v] = profile_variant(lambda v=v, x=inputs: models[v](**x), args.calls, args.device)
        if args.shapes:
            shapes[v] = op_shapes(lambda v=v, x=inputs: models[v](**x), args.device)
    base = results["backbone+m"]
    print(f"# torch.profiler, {args.backbone} L={args.length} B={args.batch}, {args.calls} calls, "
          f"threads {args.threads}, device {args.device}; times in us per call (self CPU time)")
    for v in VARIANTS[1:]:
        res = results[v]
        total, base_total = res["__total__"], base["__total__"]
        print(f"\n## {v}: total {total:,.0f} us vs baseline {base_total:,.0f} us "
              f"(ratio {total / base_total:.3f})")
        for key in sorted(k for k in res if k.startswith("adept::")):
            print(f"  {key}: {res[key]:,.0f} us = {100 * res[key] / total:.2f}% of the forward")
        extra = res.get("adept::prompted_inputs (all adapter work)", 0.0) - base.get("__lookup__", 0.0)
        print(f"  adapter work minus the baseline's own lookup of L+m ids ({base.get('__lookup__', 0.0):,.0f} us): "
              f"{extra:,.0f} us = {100 * extra / base_total:.2f}% of the baseline forward")
        keys = {k for k in (*res, *base) if not k.startswith(("adept::", "__"))}
        diffs = sorted(keys, key=lambda k: -abs(res.get(k, 0.0) - base.get(k, 0.0)))[:args.top]
        print(f"  {'op':<42} {'baseline':>10} {v:>14} {'diff':>10}")
        for k in diffs:
            b, x = base.get(k, 0.0), res.get(k, 0.0)
            print(f"  {k[:42]:<42} {b:>10,.0f} {x:>14,.0f} {x - b:>+10,.0f}")
        if args.shapes:
            extra, missing = shapes[v] - shapes["backbone+m"], shapes["backbone+m"] - shapes[v]
            same = sum((shapes[v] & shapes["backbone+m"]).values())
            print(f"  (op, input shapes) calls shared with the baseline: {same}; only in {v}: {sum(extra.values())}; "
                  f"only in the baseline: {sum(missing.values())}")
            for label, diff in ((f"only in {v}", extra), ("only in the baseline", missing)):
                for (op, shp), n in sorted(diff.items()):
                    print(f"    {label}: {n}x {op} {shp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
