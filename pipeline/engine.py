"""One interface over the two ways a worker trains: a DeepSpeed engine (ZeRO 0-3) or plain DDP.

`train_micro_batch` runs forward + backward on one micro-batch and steps the optimizer at accumulation
boundaries (returns whether it did); `save_state` / `load_state` hold optimizer, scheduler and adapter.
The GPU path is the same code: the device and DeepSpeed's accelerator decide NCCL vs gloo, bf16 vs fp32.
Both call an `AdeptModel` with `loss_only=True`: causal vocabulary logits only where a label is (same loss).
"""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file

from adept.io import load_adapter_state_dict
from adept.model import AdeptModel
from pipeline.config import TrainConfig

ENGINE_TAG = "state"


def _loss_kwargs(module) -> dict:
    """Training needs only the loss: an AdeptModel then skips the LM head where no label is."""
    return {"loss_only": True} if isinstance(module, AdeptModel) else {}


def deepspeed_config(cfg: TrainConfig) -> dict:
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.offload:
        zero["offload_optimizer"] = {"device": "cpu"}
    if cfg.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
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


def build_engine(cfg: TrainConfig, model, optimizer, scheduler, device: torch.device, world: int):
    if cfg.deepspeed:
        return DeepSpeedTrainEngine(cfg, model, optimizer, scheduler, device, world)
    return DDPTrainEngine(cfg, model, optimizer, scheduler, device, world)


class DeepSpeedTrainEngine:
    def __init__(self, cfg, model, optimizer, scheduler, device, world):
        import deepspeed

        if device.type == "cpu":
            # The shared-memory comm op is a 30-75 s JIT compile on first use and gloo works without it.
            importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
        self.world, self.client_optimizer = world, optimizer
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                               config=deepspeed_config(cfg), dist_init_required=False)
        self.module = self.engine.module
        self.loss_kwargs = _loss_kwargs(self.module)

    def train_micro_batch(self, batch: dict) -> tuple[float, bool]:
        self.module.train()
        loss = self.engine(**batch, **self.loss_kwargs).loss
        self.engine.backward(loss)
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()
        return loss.item(), boundary

    def learning_rates(self) -> dict[str, float]:
        return {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.client_optimizer.param_groups)}

    def save_state(self, path: Path) -> None:
        # Frozen backbone excluded: each rank writes only its shard of the adapter's optimizer state (KBs).
        self.engine.save_checkpoint(str(path), tag=ENGINE_TAG, exclude_frozen_parameters=True, save_latest=False)

    def load_state(self, path: Path, adapter_dir: Path) -> None:
        self.engine.load_checkpoint(str(path), tag=ENGINE_TAG, load_module_strict=False)


class DDPTrainEngine:
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

    def learning_rates(self) -> dict[str, float]:
        return {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)}

    def save_state(self, path: Path) -> None:
        if not dist.is_initialized() or dist.get_rank() == 0:
            path.mkdir(parents=True, exist_ok=True)
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                        "micro": self.micro}, path / "optimizer.pt")

    def load_state(self, path: Path, adapter_dir: Path) -> None:
        state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)  # plain tensors only
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.micro = state["micro"]
        load_adapter_state_dict(self.module, load_file(str(adapter_dir / "adapter_model.safetensors")), str(adapter_dir))
