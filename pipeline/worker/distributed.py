"""What every rank must do in lockstep: the same batches per epoch, sums across ranks, sharded evaluation."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from pipeline.core.evaluation import EvalResult, predict, score


def epoch_batches(n: int, epoch: int, rank: int, world: int, micro: int, seed: int) -> list[list[int]]:
    """This rank's micro-batches of row indices for `epoch`, from one seeded shuffle shared by all ranks.

    Micro-step k of the epoch covers rows order[k·micro·world : (k+1)·micro·world] and rank r takes its
    r-th slice, so N workers see at each step exactly the rows one worker would (the same adapter within
    float tolerance, dropout aside). Whole steps only: every rank runs the same number of steps.
    """
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    per_step = micro * world
    return [order[start + rank * micro:start + (rank + 1) * micro] for start in range(0, n - per_step + 1, per_step)]


class ProcessGroupLost(RuntimeError):
    """A fit of several workers found its process group gone: Ray Train tore it down because another worker failed."""


def _collective(world: int) -> bool:
    """Whether a call over `world` ranks must be collective. It is the fit's world size, never read off the process
    group: when a worker dies, Ray Train destroys the survivors' process group (TorchConfig's on_shutdown) while
    their training thread still runs, for up to a few hundred ms before the actors are killed. A helper that took
    "no process group" for "one worker" would then return this rank's values alone, and the survivor would log a
    loss of half the batch (seen: a worker SIGKILLed after step 27, rank 0 logged step 28 from its own rows) or
    checkpoint one rank's RNG state. Raising stops it before it logs or saves anything."""
    if world == 1:
        return False
    if not (dist.is_available() and dist.is_initialized()):
        raise ProcessGroupLost(
            f"this fit has {world} workers but its process group is gone: Ray Train tears it down when another "
            "worker fails. This worker stops without logging or saving what it computed alone; the fit resumes "
            "from its last checkpoint (max_failures allowing).")
    return True


def gather_objects(obj, world: int) -> list:
    """Every rank's `obj`, in rank order, over the fit's `world` ranks (a list of one when world is 1)."""
    if not _collective(world):
        return [obj]
    out: list = [None] * world
    dist.all_gather_object(out, obj)
    return out


def reduce_sums(values: list[float], world: int) -> list[float]:
    """Each value summed over the fit's `world` ranks."""
    if not _collective(world):
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
                         synced_generate: bool = False, progress=None) -> EvalResult:
    """Each rank predicts an equal-sized shard (the last ones padded), predictions are gathered, every
    rank scores the full split. Equal shards keep ZeRO-3's per-forward collectives in step.

    `progress(rows_done)` (rank 0's estimate of the whole split) is called between chunks of the shard.
    """
    n = len(dataset)
    per = math.ceil(n / world)
    real = [max(0, min(n, (k + 1) * per) - k * per) for k in range(world)]
    indices = list(range(rank * per, rank * per + real[rank])) + [n - 1] * (per - real[rank])
    sources = list(dataset.select(indices)["source"])
    # Only generate() needs the wrapper; rank scoring runs the same forwards on every rank (equal shards)
    # and wants the model itself (the one-pass scorer recognises an adept model).
    synced = synced_generate and world > 1 and config.eval_mode == "generate"
    runner = _SyncedGenerate(model) if synced else model
    chunk = max(config.batch_size, 1) * 4
    predictions = []
    for start in range(0, len(sources), chunk):
        predictions += predict(runner, tokenizer, task, sources[start:start + chunk], config)
        if progress is not None:
            progress(min(n, len(predictions) * world))
    shards = gather_objects(predictions, world)
    predictions = [p for k, shard in enumerate(shards) for p in shard[:real[k]]]
    return score(task, dataset, predictions)
