"""How much of a CPU's two cores a pack can use, against two unpacked trials side by side (issue 19's wall target).

    python benchmarks/bench_pack_cpu.py                       # SmolLM2 (cache), the demo's step shape (~2 min)
    python benchmarks/bench_pack_cpu.py --backbone tiny       # the tests' 2-layer Llama (seconds)

A packed sweep does the unpacked sweep's work (same members, same steps, same evaluations: packing removes no
FLOP), so on a CPU it can only win what the unpacked sweep wastes: start-ups, idle cores, and any difference in how
well the cores are used. This measures the last one on one training step of an ADePT member (forward + backward +
AdamW, vocabulary head only where labelled, as the recipe runs it), seconds per member-step, three ways in one
process and interleaved:

    alone-1t   one member, one thread (one core idle)
    pack-2t    one member at a time, two intra-op threads (a pack's one worker on both cores)
    side-by-side  two members at once, each in its own Python thread with one intra-op thread (two unpacked
               trials on the two cores, without their processes)

side-by-side / pack-2t above 1 is what a pack loses per step to a worse use of the cores; alone-1t / pack-2t is
how much faster a pack runs one member than an unpacked trial does when it is the last one left.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import bench_common as bc
import torch

from adept import AdeptConfig, get_adept_model


def member(backbone, m: int, r: int, seed: int):
    torch.manual_seed(seed)
    model = get_adept_model(backbone, AdeptConfig(method="adept", num_virtual_tokens=m, ffn_hidden_size=r,
                                                           prompt_init="sample_vocab"))
    return model, torch.optim.AdamW(model.parameter_groups(prompt_lr=1e-2, offset_lr=3e-4), eps=1e-6)


def step(model, optimizer, batch) -> None:
    model(**batch, loss_only=True).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def timed(fn, members: int) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) / members


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default=bc.SMOLLM2, help="smollm2-135m (from the cache) or tiny")
    p.add_argument("--batch", type=int, default=8, help="rows per member-step (the demo's batch_size)")
    p.add_argument("--length", type=int, default=44, help="tokens per row (the demo's reviews: 40 + the label)")
    p.add_argument("--m", type=int, default=8)
    p.add_argument("--r", type=int, default=45)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    backbone = bc.load_backbone(args.backbone)
    vocab = backbone.config.vocab_size
    batch = bc.make_batch(args.batch, args.length, vocab, seed=0)
    labels = batch["labels"].clone()
    labels[:, :-2] = -100  # the label tokens only, as the task's rows carry them
    batch["labels"] = labels
    pair = [member(backbone, args.m, args.r, seed) for seed in (1, 2)]

    def alone():
        step(*pair[0], batch)

    def side_by_side():
        threads = [threading.Thread(target=step, args=(*pair[k], batch)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    ways = {"alone-1t": (1, alone, 1), "pack-2t": (2, alone, 1), "side-by-side": (1, side_by_side, 2)}
    samples: dict[str, list[float]] = {name: [] for name in ways}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for name, (threads, fn, members) in ways.items():
            torch.set_num_threads(threads)
            seconds = timed(fn, members)
            if round_:
                samples[name].append(seconds)
    median = {name: statistics.median(values) for name, values in samples.items()}
    result = {"item": "pack_cpu", "backbone": args.backbone, "batch": args.batch, "length": args.length, "m": args.m,
              "r": args.r, "rounds": args.rounds, "member_step_s": {k: round(v, 4) for k, v in median.items()},
              "side_by_side_vs_pack": round(median["side-by-side"] / median["pack-2t"], 3),
              "alone_vs_pack": round(median["alone-1t"] / median["pack-2t"], 3),
              **bc.machine_info("cpu", 2, "float32")}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
