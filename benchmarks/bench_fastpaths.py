"""Issue 14: time the two fast paths against the paths they replace. A script, not part of `run.py`.

rank   rank-classification evaluation (`pipeline.core.evaluation.score_candidates`, one pass: each source once)
       vs `score_candidates_reference` (one row per source × label), movie-sentiment-like: 2 labels
       ("positive" / "negative" + EOS), sources of ~40 tokens, 128 sources, batch_size 32. The reference
       is timed at batch_size 32 (its meaning: 32 rows = 16 examples per forward) and at 64 rows (the same
       32 examples per forward as the one-pass path).
train  one training step, forward + backward + AdamW step, causal ADePT (m=60) with labels on the target
       tokens only (prompt ~40 tokens, target 2 tokens + EOS, batch 8): `loss_only=True` (the LM head only
       at labelled positions, what the training engines call) vs the full forward.

Backbones: `tiny` = tests/tiny.py's llama (d=32, 36-token vocabulary; rank), bench_common's tiny llama
(d=768, 2 layers, 4096 vocabulary; rank) and tests/tiny.py's llama with a 32000 vocabulary and d=64
(train: the head matters); `smollm2-135m` when it is in the cache (nothing is downloaded). Timings are interleaved rounds (`bench_common.interleaved`); ratios are paired
per round, new / old, so < 1 is faster. Usage: python benchmarks/bench_fastpaths.py [--reps 15] [--out f.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import bench_common as bc
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/tiny.py: the tiny models

from adept import AdeptConfig, get_adept_model  # noqa: E402
from pipeline.core.data import TokenizeConfig  # noqa: E402
from pipeline.core.evaluation import EvalConfig, score_candidates, score_candidates_reference  # noqa: E402

LABELS = ["positive", "negative"]


def _sources(words: list[str], n: int, length: int, seed: int = 0) -> list[str]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(length - 8, length + 8, (1,), generator=gen))  # ~length tokens, varied: padding
        out.append(" ".join(words[i] for i in torch.randint(0, len(words), (k,), generator=gen).tolist()))
    return out


def _adept(backbone, m: int = 60, r: int = 19):
    model = get_adept_model(backbone, AdeptConfig(method="adept", num_virtual_tokens=m, ffn_hidden_size=r,
                                                  prompt_init="sample_vocab", seed=0))
    with torch.no_grad():
        model.ffn.w2.normal_(0, 0.02)  # a non-zero offset, as after training
    return model


def bench_rank(name: str, model, tokenizer, words: list[str], reps: int, n: int = 128, length: int = 40) -> dict:
    sources = _sources(words, n, length)
    tokenize = TokenizeConfig(backbone="causal", max_source_length=64, max_target_length=8, separator=":")
    cfg = {b: EvalConfig(tokenize=tokenize, eval_mode="rank", batch_size=b) for b in (32, 64)}
    model.eval()
    fns = {
        "one_pass_b32": lambda: score_candidates(model, tokenizer, sources, LABELS, cfg[32], one_pass=True),
        "reference_b32rows": lambda: score_candidates_reference(model, tokenizer, sources, LABELS, cfg[32]),
        "reference_b64rows": lambda: score_candidates_reference(model, tokenizer, sources, LABELS, cfg[64]),
    }
    diff = (fns["one_pass_b32"]() - fns["reference_b32rows"]()).abs().max().item()
    samples, _ = bc.interleaved(fns, reps=reps, warmup=1, device="cpu")
    return {
        "item": "rank", "backbone": name, "sources": n, "labels": len(LABELS), "max_abs_diff": diff,
        "seconds": {k: bc.summary(v) for k, v in samples.items()},
        "ratio_vs_reference_b32rows": bc.paired_ratio(samples["one_pass_b32"], samples["reference_b32rows"]),
        "ratio_vs_reference_b64rows": bc.paired_ratio(samples["one_pass_b32"], samples["reference_b64rows"]),
    }


def _train_batch(vocab: int, batch: int, prompt: int, target: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(prompt - 8, prompt + 8, (batch,), generator=gen).tolist()
    width = max(lengths) + target
    ids = torch.zeros(batch, width, dtype=torch.long)
    labels = torch.full((batch, width), -100)
    mask = torch.zeros(batch, width, dtype=torch.long)
    for i, n in enumerate(lengths):
        row = torch.randint(3, vocab, (n + target,), generator=gen)
        ids[i, : n + target], mask[i, : n + target] = row, 1
        labels[i, n : n + target] = row[n:]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def bench_train(name: str, backbone, reps: int, batch: int = 8, prompt: int = 40, target: int = 3) -> dict:
    models = {"full": _adept(backbone).train(), "loss_only": _adept(backbone).train()}
    optimizers = {k: torch.optim.AdamW(m.parameter_groups(0.3, 1e-4), eps=1e-6) for k, m in models.items()}
    data = _train_batch(backbone.config.vocab_size, batch, prompt, target)

    def step(kind: str):
        model, optimizer = models[kind], optimizers[kind]
        model(**data, loss_only=kind == "loss_only").loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with torch.random.fork_rng(devices=[]):  # loss equality on one batch, dropout off
        check = _adept(backbone).eval()
        diff = abs(check(**data).loss.item() - check(**data, loss_only=True).loss.item())
    samples, _ = bc.interleaved({k: (lambda k=k: step(k)) for k in models}, reps=reps, warmup=2, device="cpu")
    return {
        "item": "train", "backbone": name, "vocab": backbone.config.vocab_size, "hidden": backbone.config.hidden_size,
        "batch": batch, "prompt_tokens": prompt, "target_tokens": target, "m": 60, "loss_abs_diff": diff,
        "seconds": {k: bc.summary(v) for k, v in samples.items()},
        "ratio_loss_only_vs_full": bc.paired_ratio(samples["loss_only"], samples["full"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from tiny import WORDS, tiny_llama, tiny_tokenizer

    rows = []
    tok = tiny_tokenizer()
    rows.append(bench_rank("tiny (d=32, V=36)", tiny_llama(), tok, WORDS, args.reps))
    rows.append(bench_rank("tiny (d=32, V=36) + ADePT m=60", _adept(tiny_llama(), r=3), tok, WORDS, args.reps))
    # bench_common's tiny backbone (d=768, 2 layers, V=4096) with the tiny tokenizer's words: compute-bound
    wide = bc.load_backbone("tiny")
    rows.append(bench_rank("bench tiny (d=768, V=4096) + ADePT m=60", _adept(wide), tok, WORDS, args.reps))
    rows.append(bench_train("tiny-llama (d=64, V=32000)", tiny_llama(hidden_size=64, vocab_size=32000), args.reps))
    if bc.smollm2_cached():
        from pipeline.core.backbones import load_backbone

        smol, smol_tok, _ = load_backbone(bc.SMOLLM2)
        smol.eval().requires_grad_(False)
        words = [w for w in (smol_tok.decode([i]).strip() for i in range(1000, 3000)) if w.isalpha()]
        rows.append(bench_rank(bc.SMOLLM2, smol, smol_tok, words, args.reps))
        rows.append(bench_rank(f"{bc.SMOLLM2} + ADePT m=60", _adept(smol), smol_tok, words, args.reps))
        rows.append(bench_train(bc.SMOLLM2, smol, args.reps))
    else:
        print(f"[bench_fastpaths] {bc.SMOLLM2} is not in the cache: its rows are skipped")
    for row in rows:
        ratios = {k: round(v["median"], 3) for k, v in row.items() if k.startswith("ratio")}
        diff = row.get("max_abs_diff", row.get("loss_abs_diff"))
        times = {k: round(v["min"], 4) for k, v in row["seconds"].items()}
        print(f"{row['item']:5s} {row['backbone']:42s} paired ratios new/old (median) {ratios}  min s {times}  "
              f"max|diff| {diff:.2e}")
    if args.out:
        args.out.write_text(json.dumps({"machine": bc.machine_info("cpu", args.threads, "float32"), "rows": rows},
                                       indent=2) + "\n")


if __name__ == "__main__":
    main()
