"""One interface over the two ways a worker trains: a DeepSpeed engine (ZeRO 0-3) or plain DDP.

`train_micro_batch` runs forward + backward on one micro-batch and steps the optimizer at accumulation
boundaries (returns whether it did). `snapshot()` / `restore()` hand the trainer's state over as full,
unsharded tensors + JSON (see `pipeline.worker.checkpoint`): adapter fp32 weights, AdamW moments, per-group step
and lr, scheduler and engine counters. Both are collective calls under DeepSpeed (every rank calls them).
Nothing is pickled, and a snapshot taken on N workers restores on M.
The GPU path is the same code: the device and DeepSpeed's accelerator decide NCCL vs gloo, bf16 vs fp32.
Both call an `AdeptModel` with `loss_only=True`: causal vocabulary logits only where a label is (same loss).
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass

import torch

from adept.model import AdeptModel
from pipeline.core.config import TrainConfig
from pipeline.worker.checkpoint import CheckpointError, TrainerSnapshot

MOMENTS = ("exp_avg", "exp_avg_sq")


def linear_warmup_schedule(optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers' `get_linear_schedule_with_warmup`, factor for factor (tests/training/test_engine_units.py
    checks it against transformers): 0 -> 1 over `warmup_steps`, then linearly to 0 at `total_steps`. Importing
    transformers.optimization imports peft wherever peft is installed, ~5 CPU-s in every Ray Train worker."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _loss_kwargs(module) -> dict:
    """Training needs only the loss: an AdeptModel then skips the LM head where no label is."""
    return {"loss_only": True} if isinstance(module, AdeptModel) else {}


def deepspeed_config(cfg: TrainConfig) -> dict:
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.offload:
        zero["offload_optimizer"] = {"device": "cpu"}
    if cfg.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        zero["stage3_max_live_parameters"] = cfg.zero3_live_params
        zero["stage3_max_reuse_distance"] = cfg.zero3_live_params
    return {
        "train_batch_size": cfg.batch_size,
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "gradient_clipping": cfg.max_grad_norm,  # one global norm over prompt + offsets, as the paper
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.precision == "bf16"},
        "fp16": {"enabled": cfg.precision == "fp16"},
        "zero_allow_untested_optimizer": True,  # our client torch AdamW with two param groups
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
    }


@dataclass
class DeepSpeedPlan:
    """The DeepSpeed config of a fit, made once before the model is built.

    Under ZeRO-3 `partitioned` is the `HfDeepSpeedConfig` that makes transformers build the backbone inside
    `deepspeed.zero.Init` (already partitioned: no worker ever holds the whole model); it must stay alive until
    the engine exists, so the plan travels from model construction to `build_engine`.
    """

    config: dict
    partitioned: object | None = None


def deepspeed_plan(cfg: TrainConfig, device: torch.device) -> DeepSpeedPlan | None:
    """None for DDP. Call before building the model: under ZeRO-3 the backbone is built partitioned."""
    if not cfg.deepspeed:
        return None
    plan = DeepSpeedPlan(deepspeed_config(cfg))
    if device.type == "cpu":
        _skip_shm_op()
    if cfg.zero_stage == 3:
        import deepspeed
        from transformers.integrations import HfDeepSpeedConfig

        # zero.Init reads the world size from deepspeed.comm: attach it to Ray Train's process group first.
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
        plan.partitioned = HfDeepSpeedConfig(plan.config)
    return plan


def partition_frozen(plan: DeepSpeedPlan, module: torch.nn.Module):
    """ZeRO-3 over a module in which nothing trains (a pack's backbone, built partitioned under `plan`): without an
    optimizer DeepSpeed keeps only its parameter offload, which gathers each layer for its forward and again for
    the backward that carries gradients to the inputs. The pack's adapters train outside it, each member with its
    own optimizer (pipeline.worker.pack_engine). Returns the engine (keep it alive as long as the module)."""
    import deepspeed

    engine, *_ = deepspeed.initialize(model=module, config=plan.config, dist_init_required=False)
    return engine


def _skip_shm_op() -> None:
    """DeepSpeed's shared-memory comm op is a 30-75 s JIT compile on first use, and gloo works without it."""
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def build_engine(cfg: TrainConfig, model, optimizer, scheduler, device: torch.device, world: int,
                 plan: DeepSpeedPlan | None = None):
    if cfg.deepspeed:
        return DeepSpeedTrainEngine(plan or deepspeed_plan(cfg, device), model, optimizer, scheduler, device, world)
    return DDPTrainEngine(cfg, model, optimizer, scheduler, device, world)


class _Engine:
    """What both engines share: the client optimizer (AdamW over the two groups) and the scheduler."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    module: torch.nn.Module

    def learning_rates(self) -> dict[str, float]:
        return {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)}

    def _group_meta(self, step: int) -> dict:
        return {"groups": [{"name": g.get("name", str(i)), "lr": g["lr"]} for i, g in enumerate(self.optimizer.param_groups)],
                "optimizer_steps": step, "scheduler": self.scheduler.state_dict()}

    def _restore_groups(self, meta: dict) -> None:
        names = [g.get("name", str(i)) for i, g in enumerate(self.optimizer.param_groups)]
        saved = [g["name"] for g in meta["groups"]]
        if names != saved:
            raise CheckpointError(f"checkpoint optimizer groups {saved} do not match this run's {names} (another method?).")
        for group, entry in zip(self.optimizer.param_groups, meta["groups"], strict=True):
            group["lr"] = entry["lr"]
        self.scheduler.load_state_dict(meta["scheduler"])


class DeepSpeedTrainEngine(_Engine):
    def __init__(self, plan: DeepSpeedPlan, model, optimizer, scheduler, device, world):
        import deepspeed

        self.plan = plan  # keeps ZeRO-3's HfDeepSpeedConfig alive as long as the engine
        self.world, self.optimizer, self.scheduler = world, optimizer, scheduler
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                               config=plan.config, dist_init_required=False)
        self.module = self.engine.module
        self.loss_kwargs = _loss_kwargs(self.module)

    def train_micro_batch(self, batch: dict) -> tuple[float, bool]:
        self.module.train()
        loss = self.engine(**batch, **self.loss_kwargs).loss
        self.engine.backward(loss)
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()
        return loss.item(), boundary

    def _link_optimizer_state(self) -> None:
        """DeepSpeed (ZeRO-1/2, bf16) links each parameter to its AdamW state once, after the first step of the
        *first* group, before the second group has any state: with our two groups (prompt, offset) the offset
        group is never linked and `safe_*_full_optimizer_state` fails for it. Link again once all groups have state."""
        inner = self.engine.optimizer
        if hasattr(inner, "_hp_optimizer_states_linked") and hasattr(inner, "_lazy_init_hp_params_optimizer_state"):
            inner._hp_optimizer_states_linked = False
            inner._lazy_init_hp_params_optimizer_state()

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The adapter's fp32 master weights, full size (bf16 keeps only a rounded working copy in the module)."""
        from deepspeed.utils import safe_get_full_fp32_param

        out = {}
        for name, param in self.module.adapter_named_parameters():
            full = safe_get_full_fp32_param(param)
            if full is None:  # ZeRO-0 fp32: the parameter is the master
                with torch.no_grad(), _gathered(param):
                    full = param.detach().clone()
            out[name] = full.float().cpu().clone().contiguous()
        return out

    def snapshot(self, step: int) -> TrainerSnapshot:
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        self._link_optimizer_state()
        tensors = {}
        for name, param in self.module.adapter_named_parameters():
            full = safe_get_full_fp32_param(param)  # ZeRO 1-3 / bf16: the fp32 master, gathered
            tensors[f"param/{name}"] = (param.detach() if full is None else full).float().cpu().clone()
            for key in MOMENTS:
                value = safe_get_full_optimizer_state(param, key)
                if value is None:  # ZeRO-0 fp32: the client optimizer holds plain per-parameter state
                    value = self.optimizer.state.get(param, {}).get(key, torch.zeros_like(param))
                tensors[f"{key}/{name}"] = value.float().cpu().clone()
        meta = {**self._group_meta(step), "counters": {k: int(getattr(self.engine, k)) for k in
                                                       ("global_steps", "global_samples", "micro_steps")}}
        return TrainerSnapshot(tensors, meta)

    def restore(self, snapshot: TrainerSnapshot, warmup_batch: dict) -> None:
        """Load a snapshot into a fresh engine.

        AdamW creates its state at the first step, and DeepSpeed links its partitions to it then, so one
        step with lr 0 on a zero loss creates it first (params unchanged: the update is lr·(...) = 0);
        then every tensor is written through DeepSpeed's public full-tensor setters, which re-shard it.
        """
        from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

        saved_lrs = [g["lr"] for g in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group["lr"] = 0.0
        while True:  # up to the next accumulation boundary, whatever this engine ran before
            self.engine.backward(self.engine(**warmup_batch).loss * 0.0)
            boundary = self.engine.is_gradient_accumulation_boundary()
            self.engine.step()
            if boundary:
                break
        for group, lr in zip(self.optimizer.param_groups, saved_lrs, strict=True):
            group["lr"] = lr
        self._link_optimizer_state()
        for name, param in self.module.adapter_named_parameters():
            value = snapshot.tensors[f"param/{name}"]
            if hasattr(param, "_hp_mapping") or hasattr(param, "ds_id"):
                safe_set_full_fp32_param(param, value.to(param.device))
            with torch.no_grad(), _gathered(param):
                param.copy_(value.to(param.dtype))  # the working copy (bf16 / ZeRO-3 partition) as well
            for key in MOMENTS:
                moment = snapshot.tensors[f"{key}/{name}"]
                if hasattr(param, "_hp_mapping") or hasattr(param, "ds_id"):
                    safe_set_full_optimizer_state(param, moment.to(param.device), key)
                else:
                    self.optimizer.state[param][key].copy_(moment)
        _set_optimizer_steps(self.optimizer, snapshot.meta["optimizer_steps"])
        self._restore_groups(snapshot.meta)
        for key, value in snapshot.meta["counters"].items():
            setattr(self.engine, key, value)


class DDPTrainEngine(_Engine):
    def __init__(self, cfg, model, optimizer, scheduler, device, world):
        self.cfg, self.world, self.device = cfg, world, device
        self.optimizer, self.scheduler, self.micro = optimizer, scheduler, 0
        self.module = model.to(device)
        self.model = model
        if world > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device] if device.type == "cuda" else None)
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.loss_kwargs = _loss_kwargs(model)

    def train_micro_batch(self, batch: dict) -> tuple[float, bool]:
        self.module.train()
        self.micro += 1
        boundary = self.micro % self.cfg.grad_accum == 0
        sync = contextlib.nullcontext() if boundary or self.world == 1 else self.model.no_sync()
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16")
        with sync, autocast:
            loss = self.model(**batch, **self.loss_kwargs).loss
            (loss / self.cfg.grad_accum).backward()
        if boundary:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.item(), boundary

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The adapter's weights (fp32: DDP keeps them fp32 and autocasts the compute)."""
        return {name: p.detach().float().cpu().clone().contiguous() for name, p in self.module.adapter_named_parameters()}

    def snapshot(self, step: int) -> TrainerSnapshot:
        tensors = {}
        for name, param in self.module.adapter_named_parameters():
            tensors[f"param/{name}"] = param.detach().float().cpu().clone()
            state = self.optimizer.state.get(param, {})
            for key in MOMENTS:
                tensors[f"{key}/{name}"] = state.get(key, torch.zeros_like(param)).float().cpu().clone()
        return TrainerSnapshot(tensors, {**self._group_meta(step), "counters": {"micro": self.micro}})

    def restore(self, snapshot: TrainerSnapshot, warmup_batch: dict | None = None) -> None:
        steps = snapshot.meta["optimizer_steps"]
        self.optimizer.zero_grad(set_to_none=True)  # no half-accumulated gradient survives a restore
        with torch.no_grad():
            for name, param in self.module.adapter_named_parameters():
                param.copy_(snapshot.tensors[f"param/{name}"].to(param.dtype))
                if steps:
                    self.optimizer.state[param] = {
                        "step": torch.tensor(float(steps)),
                        **{key: snapshot.tensors[f"{key}/{name}"].to(param.device).clone() for key in MOMENTS}}
        self._restore_groups(snapshot.meta)
        self.micro = snapshot.meta["counters"]["micro"]


def _set_optimizer_steps(optimizer: torch.optim.Optimizer, steps: int) -> None:
    """AdamW's bias correction reads `step` from every state entry; all of them stepped together."""
    for entry in optimizer.state.values():
        if "step" in entry:
            if torch.is_tensor(entry["step"]):
                entry["step"].fill_(float(steps))
            else:
                entry["step"] = steps


def _gathered(param):
    from adept.layers import gathered

    return gathered([param])
