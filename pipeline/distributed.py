"""What every rank must do in lockstep: the same batches per epoch, sums across ranks, sharded evaluation."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from pipeline.evaluation import EvalResult, predict, score


def epoch_batches(n: int, epoch: int, rank: int, world: int, micro: int, seed: int) -> list[list[int]]:
    """This rank's micro-batches of row indices for `epoch`: a seeded shuffle, an equal contiguous share per
    rank, whole batches only (every rank runs the same number of steps, which DDP and ZeRO need)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    share = n // world
    mine = order[rank * share:(rank + 1) * share]
    return [mine[i:i + micro] for i in range(0, share - micro + 1, micro)]


def reduce_sums(values: list[float]) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


class _SyncedGenerate:
    """ZeRO-3: a rank that finishes generating early must keep joining the others' forward passes."""

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __call__(self, *args, **kwargs):
        return self._model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self._model.generate(*args, synced_gpus=True, **kwargs)


@torch.no_grad()
def distributed_evaluate(model, tokenizer, task, dataset, config, rank: int, world: int,
                         synced_generate: bool = False) -> EvalResult:
    """Each rank predicts an equal-sized shard (the last ones padded), predictions are gathered, every
    rank scores the full split. Equal shards keep ZeRO-3's per-forward collectives in step."""
    n = len(dataset)
    per = math.ceil(n / world)
    real = [max(0, min(n, (k + 1) * per) - k * per) for k in range(world)]
    indices = list(range(rank * per, rank * per + real[rank])) + [n - 1] * (per - real[rank])
    sources = list(dataset.select(indices)["source"])
    # Only generate() needs the wrapper; rank scoring runs the same forwards on every rank (equal shards)
    # and wants the model itself (the one-pass scorer recognises an AdeptModel).
    synced = synced_generate and world > 1 and config.eval_mode == "generate"
    runner = _SyncedGenerate(model) if synced else model
    predictions = predict(runner, tokenizer, task, sources, config)
    if world > 1:
        shards: list = [None] * world
        dist.all_gather_object(shards, predictions)
        predictions = [p for k, shard in enumerate(shards) for p in shard[:real[k]]]
    return score(task, dataset, predictions)
