"""Run by test_resume_exact.py in its own process (one gloo rank): train, snapshot mid-way, train on; then build
a fresh engine, restore the snapshot (and the RNG), train the same steps; print what the test compares.

    python resume_worker.py <deepspeed 0|1> <zero_stage> <precision> <grad_accum>
"""

import json
import os
import sys
import tempfile

import torch
import torch.distributed as dist
from tiny import tiny_llama, tiny_tokenizer

from adept import AdeptConfig, get_adept_model
from pipeline.core.config import TrainConfig
from pipeline.worker import checkpoint as ckpt
from pipeline.worker.engine import build_engine, linear_warmup_schedule

use_ds, stage, precision, accum = bool(int(sys.argv[1])), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
os.environ.update(DS_ACCELERATOR="cpu", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
dist.init_process_group("gloo", init_method=f"file://{tempfile.mktemp(prefix='adept-pg-')}", rank=0, world_size=1)

cfg = TrainConfig(r=4, num_virtual_tokens=3, batch_size=2 * accum, grad_accum=accum, deepspeed=use_ds,
                  zero_stage=stage, precision=precision, warmup_steps=2, max_steps=40, eval_steps=40,
                  prompt_lr=0.05, offset_lr=0.02)
tok = tiny_tokenizer()
texts = [["good movie great", "bad film awful"], ["the plot is good", "awful acting bad"],
         ["great film", "bad movie plot"], ["a good film", "the awful plot"]]
batches = []
for pair in texts:
    enc = tok(pair, return_tensors="pt", padding=True)
    batches.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": enc["input_ids"]})


def engine():
    torch.manual_seed(0)
    model = get_adept_model(tiny_llama(), AdeptConfig(num_virtual_tokens=3, ffn_hidden_size=4, seed=1), tok)
    optimizer = torch.optim.AdamW(model.parameter_groups(cfg.prompt_lr, cfg.offset_lr), eps=1e-6)
    scheduler = linear_warmup_schedule(optimizer, cfg.warmup_steps, cfg.max_steps)
    return build_engine(cfg, model, optimizer, scheduler, torch.device("cpu"), world=1)


def run(e, micro_steps, start):
    losses = []
    for i in range(start, start + micro_steps):
        losses.append(e.train_micro_batch(batches[i % len(batches)])[0])
    return losses


def adapter(e):
    return {k: v.float() for k, v in e.snapshot(0).tensors.items()}


first, k, n = engine(), 4 * accum, 6 * accum
run(first, k, 0)
snap, rng = first.snapshot(k // accum), ckpt.rng_state()
reference = run(first, n, k)
ref_state = adapter(first)

second = engine()
run(second, 1, 7)  # a different history first: the restore must overwrite all of it
second.restore(ckpt.TrainerSnapshot({key: v.clone() for key, v in snap.tensors.items()},
                                    json.loads(json.dumps(snap.meta))), batches[0])
ckpt.set_rng_state(*rng)
restored_at_restore = adapter(second)
resumed = run(second, n, k)
state = adapter(second)
print("RESULT " + json.dumps({
    "loss_diff": max(abs(a - b) for a, b in zip(reference, resumed, strict=True)),
    "state_diff": max((ref_state[key] - state[key]).abs().max().item() for key in ref_state),
    "restore_diff": max((snap.tensors[key].float() - restored_at_restore[key]).abs().max().item()
                        for key in snap.tensors),
    "moments_nonzero": bool(any(snap.tensors[key].abs().sum() > 0 for key in snap.tensors if key.startswith("exp_avg"))),
    "lrs": [first.learning_rates(), second.learning_rates()],
}))
