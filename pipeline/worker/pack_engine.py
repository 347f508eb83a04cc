"""The trainer of a pack: K members' adapters over one frozen backbone, each stepped by its own AdamW.

Each member keeps what it has alone (`adept.packed` explains the loss that makes it so):

* its own AdamW over its two parameter groups, learning rates and warm-up/decay schedule;
* its own gradient clipping: the norm of member k is taken over member k's parameters alone, as
  `DDPTrainEngine` clips a solo fit; one global norm would let one member's large gradient shrink every step;
* its own divergence check: a member whose loss, gradient or weights turn non-finite has its gradients dropped
  (AdamW skips it) and is reported failed; the others step on.

Gradients are averaged over ranks by one all-reduce of the active members' gradients (and their loss flags), not
by DDP: members leave the batch when they finish, stop or fail, and DDP would wait for gradients that never come.
Every rank computes the same active set from the same all-reduced numbers, so the ranks never disagree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist

from adept.packed import PackedAdeptModel
from pipeline.core.config import TrainConfig
from pipeline.worker.checkpoint import CheckpointError, TrainerSnapshot
from pipeline.worker.engine import MOMENTS, linear_warmup_schedule


class PackEngine:
    def __init__(self, model: PackedAdeptModel, configs: Sequence[TrainConfig], device: torch.device, world: int):
        model.members.to(device)  # the adapters; the backbone is where it was built (ZeRO-3: partitioned)
        self.module, self.configs, self.device, self.world = model, list(configs), device, world
        # one AdamW and one schedule per member: a member whose step overflows fails alone (an exception inside
        # one optimizer over every member would leave the members after it unstepped)
        self.optimizers = [torch.optim.AdamW(model.member_model(k).parameter_groups(c.prompt_lr, c.offset_lr,
                                                                                    c.weight_decay), eps=1e-6)
                           for k, c in enumerate(configs)]
        self.schedulers = [linear_warmup_schedule(opt, c.warmup_steps, c.max_steps)
                           for opt, c in zip(self.optimizers, configs, strict=True)]
        self.grad_accum, self.micro = configs[0].grad_accum, 0
        self.bf16 = configs[0].precision == "bf16"
        self._bad_loss: set[int] = set()  # members whose loss was non-finite since the last optimizer step

    # -------------------------------------------------------------------------------------------- training
    def train_micro_batch(self, chunks: Sequence[dict], active: Sequence[int]) -> tuple[dict[int, float], bool, list[int]]:
        """Forward + backward of one packed micro-batch, given as chunks (`concat_member_batches` outputs, each
        holding whole members: a member's mean is over its own rows, so chunking changes no gradient), then an
        optimizer step at accumulation boundaries.

        Returns ({member: its mean loss on this rank's rows}, whether the optimizers stepped, the members that
        diverged at this step: their gradients were dropped and they must leave the batch).
        """
        self.module.train()
        self.micro += 1
        losses: dict[int, float] = {}
        for chunk in chunks:
            autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)
            with autocast:
                out = self.module(**chunk, loss_only=True)
            values = out.member_loss.detach().float().cpu().tolist()
            losses.update({k: values[k] for k in chunk["member"].unique().tolist()})
            finite = torch.isfinite(out.member_loss.detach())
            # a non-finite member's loss must not reach the backward of the others: its term is left out
            keep = torch.where(finite, out.member_loss, torch.zeros_like(out.member_loss))
            (keep.sum() / self.grad_accum).backward()
        self._bad_loss.update(k for k in active if not math.isfinite(losses[k]))
        if self.micro % self.grad_accum:
            return {k: losses[k] for k in active}, False, []
        failed = self._average_grads(active)
        self.module.drop_grads(failed)
        for k in active:
            if k in failed:
                continue
            torch.nn.utils.clip_grad_norm_(self.module.member_parameters(k), self.configs[k].max_grad_norm)
            try:
                self.optimizers[k].step()
            except RuntimeError as err:  # AdamW's step size itself overflows float32 (as a solo fit reports)
                if "overflow" not in str(err):
                    raise
                failed.append(k)
            self.schedulers[k].step()
            if not _finite(self.module.member_parameters(k)):  # the step moved the weights past float32
                failed.append(k)
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        return {k: losses[k] for k in active}, True, sorted(set(failed))

    def _average_grads(self, active: Sequence[int]) -> list[int]:
        """All-reduce (mean) the active members' gradients together with their non-finite-loss flags; returns the
        members that diverged (non-finite loss on any rank, or non-finite averaged gradient)."""
        params = [p for k in active for p in self.module.member_parameters(k)]
        for p in params:
            if p.grad is None:  # a member with no label token on this rank still joins the all-reduce
                p.grad = torch.zeros_like(p)
        flags = torch.tensor([float(k in self._bad_loss) for k in active], device=self.device)
        self._bad_loss.clear()
        if self.world > 1:
            flat = torch.cat([p.grad.reshape(-1).float() for p in params] + [flags])
            dist.all_reduce(flat)
            flat[:-len(active)] /= self.world
            offset = 0
            for p in params:
                p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
                offset += p.numel()
            flags = flat[-len(active):]
        bad = {k for k, flag in zip(active, flags.tolist(), strict=True) if flag}
        bad |= {k for k in active if not _finite([p.grad for p in self.module.member_parameters(k)])}
        return sorted(bad)

    def member_learning_rates(self, k: int) -> dict[str, float]:
        """Member k's groups as a solo fit names them: {"prompt": lr, "offset": lr}."""
        return {g["name"]: g["lr"] for g in self.optimizers[k].param_groups}

    # -------------------------------------------------------------------------------------------- state
    def adapter_state(self, k: int) -> dict[str, torch.Tensor]:
        return {name: p.detach().float().cpu().clone().contiguous()
                for name, p in self.module.member_model(k).adapter_named_parameters()}

    def snapshot(self, steps: Sequence[int]) -> TrainerSnapshot:
        """Every member's weights and AdamW moments (`m<k>/param/<name>` ...); `steps[k]` its optimizer steps."""
        tensors, groups = {}, []
        for k, optimizer in enumerate(self.optimizers):
            for name, param in self.module.member_model(k).adapter_named_parameters():
                tensors[f"m{k}/param/{name}"] = param.detach().float().cpu().clone()
                state = optimizer.state.get(param, {})
                for key in MOMENTS:
                    tensors[f"m{k}/{key}/{name}"] = state.get(key, torch.zeros_like(param)).float().cpu().clone()
            groups.append({"groups": [{"name": g["name"], "lr": g["lr"]} for g in optimizer.param_groups],
                           "scheduler": self.schedulers[k].state_dict()})
        return TrainerSnapshot(tensors, {"members": groups, "member_steps": list(steps), "counters": {"micro": self.micro}})

    def restore(self, snapshot: TrainerSnapshot) -> None:
        meta = snapshot.meta
        if len(meta["members"]) != len(self.optimizers):
            raise CheckpointError(f"the checkpoint holds a pack of {len(meta['members'])} members, this pack has "
                                  f"{len(self.optimizers)}.")
        with torch.no_grad():
            for k, (optimizer, steps, saved) in enumerate(zip(self.optimizers, meta["member_steps"], meta["members"],
                                                              strict=True)):
                optimizer.zero_grad(set_to_none=True)
                for name, param in self.module.member_model(k).adapter_named_parameters():
                    param.copy_(snapshot.tensors[f"m{k}/param/{name}"].to(param.dtype))
                    if steps:
                        optimizer.state[param] = {
                            "step": torch.tensor(float(steps)),
                            **{key: snapshot.tensors[f"m{k}/{key}/{name}"].to(param.device).clone() for key in MOMENTS}}
                names = [g["name"] for g in optimizer.param_groups]
                if names != [g["name"] for g in saved["groups"]]:
                    raise CheckpointError(f"member {k}: checkpoint optimizer groups {saved['groups']} do not match "
                                          f"this pack's {names} (another method?).")
                for group, entry in zip(optimizer.param_groups, saved["groups"], strict=True):
                    group["lr"] = entry["lr"]
                self.schedulers[k].load_state_dict(saved["scheduler"])
        self.micro = meta["counters"]["micro"]


def _finite(tensors) -> bool:
    return all(t is None or bool(torch.isfinite(t).all()) for t in tensors)


__all__ = ["PackEngine"]
