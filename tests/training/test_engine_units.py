"""Fast checks of the worker-side pieces, without Ray: batching, optimiser schedule, DeepSpeed config."""

import pytest
import torch
from tiny import batch, tiny_llama, tiny_tokenizer
from transformers import get_linear_schedule_with_warmup

from adept import AdeptConfig, get_adept_model
from pipeline.core.config import TrainConfig
from pipeline.worker.distributed import epoch_batches
from pipeline.worker.engine import DDPTrainEngine, deepspeed_config, linear_warmup_schedule


def test_epoch_batches_are_disjoint_equal_and_seeded():
    shards = [epoch_batches(103, epoch=0, rank=r, world=3, micro=4, seed=7) for r in range(3)]
    flat = [i for shard in shards for b in shard for i in b]
    assert [len(s) for s in shards] == [8, 8, 8]  # 103 // 3 = 34 rows each -> 8 whole batches of 4
    assert len(flat) == len(set(flat)) == 96
    assert shards[1] == epoch_batches(103, epoch=0, rank=1, world=3, micro=4, seed=7)
    assert shards[1] != epoch_batches(103, epoch=1, rank=1, world=3, micro=4, seed=7)


@pytest.mark.parametrize(("warmup", "total"), [(0, 10), (3, 10), (10, 10), (4, 1), (0, 0)])
def test_the_schedule_is_transformers_linear_warmup(warmup, total):
    """The recipe's schedule (no transformers.optimization import in the workers) gives transformers' factors."""
    def lrs(make):
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
        scheduler = make(optimizer, warmup, total)
        seen = []
        for _ in range(total + 3):
            seen.append(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
        return seen

    assert lrs(linear_warmup_schedule) == lrs(get_linear_schedule_with_warmup)


def test_ddp_engine_accumulates_clips_and_follows_the_schedule():
    cfg = TrainConfig(r=3, num_virtual_tokens=2, grad_accum=2, batch_size=4, warmup_steps=2, max_steps=6,
                      eval_steps=6, prompt_lr=0.3, offset_lr=0.01, deepspeed=False)
    tok = tiny_tokenizer()
    model = get_adept_model(tiny_llama(), AdeptConfig(num_virtual_tokens=2, ffn_hidden_size=3), tok)
    groups = model.parameter_groups(cfg.prompt_lr, cfg.offset_lr)
    optimizer = torch.optim.AdamW(groups, eps=1e-6)
    engine = DDPTrainEngine(cfg, model, optimizer, linear_warmup_schedule(optimizer, 2, 6),
                            torch.device("cpu"), world=1)
    b = batch(tok, ["good movie", "bad film"])
    b["labels"] = b["input_ids"]
    stepped, lrs = [], []
    for _ in range(8):
        stepped.append(engine.train_micro_batch(b)[1])
        lrs.append(engine.learning_rates())
    assert stepped == [False, True] * 4
    # after optimizer step k: warmup lr·k/2 for k <= 2, then linear decay lr·(6-k)/4
    assert [round(x["prompt"], 6) for x in lrs[1::2]] == [0.15, 0.3, 0.225, 0.15]
    assert [round(x["offset"], 6) for x in lrs[1::2]] == [0.005, 0.01, 0.0075, 0.005]
    assert optimizer.defaults["eps"] == 1e-6 and all(g["weight_decay"] == 0.0 for g in optimizer.param_groups)


@pytest.mark.parametrize(("stage", "offload", "precision"), [(0, False, "fp32"), (2, True, "bf16"), (3, False, "fp32")])
def test_deepspeed_config_follows_the_run_config(stage, offload, precision):
    cfg = TrainConfig(r=3, zero_stage=stage, offload=offload, precision=precision, batch_size=32, num_workers=2,
                      grad_accum=4, max_grad_norm=1.0)
    ds = deepspeed_config(cfg)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (32, 4, 4)
    assert ds["zero_optimization"]["stage"] == stage and ds["gradient_clipping"] == 1.0
    assert ("offload_optimizer" in ds["zero_optimization"]) == offload
    assert ds["bf16"]["enabled"] == (precision == "bf16") and not ds["fp16"]["enabled"]
    # ZeRO-3 keeps at most zero3_live_params elements gathered (DeepSpeed's 1e9 would keep a 1B backbone whole)
    live = {k: ds["zero_optimization"].get(k) for k in ("stage3_max_live_parameters", "stage3_max_reuse_distance")}
    assert live == ({k: cfg.zero3_live_params for k in live} if stage == 3 else {k: None for k in live})


def test_held_parameter_memory_counts_partitions_not_released_weights():
    from pipeline.worker.recipe import _held_param_mib

    layer = torch.nn.Linear(512, 256)  # 512*256 + 256 float32 = 0.50098 MiB
    assert _held_param_mib(layer) == pytest.approx((512 * 256 + 256) * 4 / 2**20)
    # as under ZeRO-3 on 2 workers: the weight released (empty), half of it held as this rank's partition
    layer.weight.ds_tensor = torch.empty(512 * 256 // 2)
    layer.weight.data = torch.empty(0)
    assert _held_param_mib(layer) == pytest.approx((512 * 256 // 2 + 256) * 4 / 2**20)
