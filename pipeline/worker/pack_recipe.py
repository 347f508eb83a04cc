"""The Ray Train worker of a pack: K fits ("members") over one frozen backbone, in one batch, read top to bottom.

    recipe = PackRecipe(loop_config)      # loop_config["members"]: the K ResolvedRuns the driver built
    recipe.setup()      the backbone once, K adapters (each seeded as alone), the task data once, PackEngine, resume
    recipe.train()      each member draws its own rows (its seed, its order, its batch size); the pack's batch is
                        their concatenation; every `eval_steps`: each running member validates, then one
                        checkpoint of the pack
    recipe.test()       each member reloads its best adapter and scores the test split; final report

A member is the solo fit (`pipeline.worker.recipe.FitRecipe`) of its ResolvedRun: same data order, same initial
adapter, same schedule, clipping and checks (tests/method/test_pack_fit.py compares them). It logs into its own
MLflow run and leaves the batch when it finishes or diverges (status "failed", the others go on). The pack has one
checkpoint folder per evaluation, holding every member's adapter, best adapter and optimizer state.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import ray.train
import torch

from adept.io import load_adapter_state_dict, read_adapter_state_dict, save_adapter
from adept.packed import PackedAdeptModel, concat_member_batches
from pipeline.core.backbones import load_backbone
from pipeline.core.config import apply_driver_env
from pipeline.core.data import make_collator
from pipeline.core.errors import UserError
from pipeline.core.logs import configure_worker_logging
from pipeline.core.progress import EvalProgress, TrainProgress
from pipeline.core.resolve import ResolvedRun
from pipeline.tracking import RunLogger, ray_key
from pipeline.worker import checkpoint as ckpt
from pipeline.worker.callbacks import build_callbacks
from pipeline.worker.distributed import distributed_evaluate, epoch_batches, gather_objects
from pipeline.worker.engine import deepspeed_plan, partition_frozen
from pipeline.worker.pack_engine import PackEngine
from pipeline.worker.recipe import (
    Throughput,
    TrainState,
    _journal_folder,
    _peak_rss_mib,
    attempt_nodes,
    use_assigned_cpus,
)
from pipeline.worker.setup import build_data, wrap_backbone

log = logging.getLogger("adept")

RUNNING, FINISHED, FAILED, STOPPED = "running", "finished", "failed", "stopped"


@dataclass
class MemberState(TrainState):
    """A member's `TrainState` (its own epoch and position in its own data order) and how it ended."""

    status: str = RUNNING
    error: str | None = None


@dataclass
class PackState:
    """The pack's step (all running members step together) and each member's state."""

    step: int = 0
    members: list[MemberState] = field(default_factory=list)
    resumed_at: list[int] = field(default_factory=list)
    finished: bool = False
    nodes: list[list[str]] = field(default_factory=list)  # per attempt: the Ray node id of each rank

    def to_dict(self) -> dict:
        return {"step": self.step, "members": [asdict(m) for m in self.members], "resumed_at": self.resumed_at,
                "finished": self.finished, "nodes": self.nodes}

    @classmethod
    def from_dict(cls, data: dict) -> PackState:
        return cls(data["step"], [MemberState.from_dict(m) for m in data["members"]], data.get("resumed_at", []),
                   data.get("finished", False), data.get("nodes", []))


class PackRecipe:
    def __init__(self, loop_config: dict):
        apply_driver_env(loop_config.get("env", {}))
        configure_worker_logging()
        self.loop_config = loop_config
        self.members: list[ResolvedRun] = loop_config["members"]
        self.run_ids: list[str | None] = loop_config.get("mlflow_run_ids") or [None] * len(self.members)
        self.cfg = dataclasses.replace(self.members[0].config, name=loop_config["pack_name"])  # pack-wide
        self.callbacks = build_callbacks(self.cfg.callbacks)
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        use_assigned_cpus()
        self.device = ray.train.torch.get_device() if self.cfg.use_gpu else torch.device("cpu")
        self.state = PackState(members=[MemberState() for _ in self.members])
        self.run_folder = Path(self.cfg.storage_path) / self.cfg.run_name
        self.best: list[dict[str, torch.Tensor] | None] = [None] * len(self.members)
        self.seconds = {"startup": max(0.0, time.time() - loop_config.get("launched_at", time.time())),
                        "setup": 0.0, "train": 0.0, "eval": 0.0, "checkpoint": 0.0}

    # ------------------------------------------------------------------------------------------ setup
    def setup(self) -> None:
        started = time.perf_counter()
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        # ZeRO-3 partitions the one backbone (built partitioned: no rank holds it whole); ZeRO-1/2 would shard only
        # trainable state, which in a pack is K tiny adapters that the pack engine keeps whole, member by member.
        plan = deepspeed_plan(cfg, self.device) if cfg.deepspeed and cfg.zero_stage == 3 else None
        base, self.tokenizer, _ = load_backbone(cfg.backbone, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
        if plan is None:
            base = base.to(self.device)
        wrapped, streams = [], []
        for member in self.members:  # each seeded as alone; its dropout stream starts where its solo fit's does
            wrapped.append(wrap_backbone(base, member, self.tokenizer))
            streams.append(_rng_now(self.device))
        self.model = PackedAdeptModel(wrapped)
        self.model.use_member_rng(streams)
        self.backbone_engine = partition_frozen(plan, base) if plan is not None else None
        self.data = build_data(self.members[0], self.tokenizer, verbose=self.rank == 0)  # one tokenisation for all
        self.collates = [make_collator(self.tokenizer, m.tokenize, pad_to_length=m.eval.pad_to_length)
                         for m in self.members]
        for member in self.members:
            if len(self.data.train) // self.world < member.config.micro_batch_size:
                raise UserError(f"the train split has {len(self.data.train)} rows: too few for {self.world} workers "
                                f"× micro batch {member.config.micro_batch_size}; lower batch_size or num_workers.")
        self.engine = PackEngine(self.model, [m.config for m in self.members], self.device, self.world)
        checkpoint = ray.train.get_checkpoint()
        if checkpoint:
            with checkpoint.as_directory() as folder:
                self._resume(Path(folder))
        self.state.nodes.append(attempt_nodes(self.rank, self.world))
        attempt = len(self.state.resumed_at)
        self.loggers = [RunLogger(m.tracking_uri, run_id, self.rank, folder=_journal_folder(m.config),
                                  budget_s=m.config.tracking_outage_s, attempt=attempt)
                        for m, run_id in zip(self.members, self.run_ids, strict=True)]
        if not self.state.resumed_at:
            frames = self.data.frames()
            for k, (member, logger) in enumerate(zip(self.members, self.loggers, strict=True)):
                logger.dict(member.to_json(), "config/resolved_config.json")
                logger.datasets(frames, self.data.task.name, source=member.config.task)
                if k == 0:  # the first stores the dataset rows; the others only link them (no racing inserts)
                    logger.flush(timeout_s=30)
        self.windows = [Throughput() for _ in self.members]
        self.cursors = [(s.epoch, s.batch_in_epoch) for s in self.state.members]
        self.progress = TrainProgress(cfg.max_steps, self.state.step)
        self.last_train: list[dict[str, float]] = [{} for _ in self.members]
        self.seconds["setup"] = time.perf_counter() - started

    def _resume(self, latest: Path) -> None:
        refused: list[Path] = []
        folder = ckpt.latest_good(latest, refused)
        saved, tensors = ckpt.read(folder)
        gather_objects(None, self.world)
        if self.rank == 0:
            ckpt.quarantine(refused)
        self.state = PackState.from_dict(saved)
        if self.state.finished:
            return
        self.engine.restore(ckpt.TrainerSnapshot(tensors, saved["engine"]))
        for k in range(len(self.members)):
            if (folder / "members" / str(k) / "best_adapter").is_dir():
                self.best[k] = read_adapter_state_dict(folder / "members" / str(k) / "best_adapter")
        rng = ckpt.rank_rng(saved, tensors, self.rank)
        if rng is not None:
            ckpt.set_rng_state(*rng)
            self.model.use_member_rng([rng[0][f"member{k}"] for k in range(len(self.members))])
        self.state.resumed_at.append(self.state.step)
        if self.rank == 0:
            log.info(f"[adept] pack resumed from {folder.name} at step {self.state.step}")

    def running(self) -> list[int]:
        return [k for k, s in enumerate(self.state.members) if s.status == RUNNING]

    # ------------------------------------------------------------------------------------------ train
    def train(self) -> None:
        cfg, state = self.cfg, self.state
        started, paused_total = time.perf_counter(), 0.0
        while self.running():
            active, micro_started = self.running(), time.perf_counter()
            batches, tokens, rows = {}, {}, {}
            for k in active:
                picked = [self.data.train[i] for i in self._next_rows(k)]
                batches[k] = self.collates[k](picked)
                tokens[k], rows[k] = int(batches[k]["attention_mask"].sum()), len(picked)
            chunks = [self._to_device(concat_member_batches(group, pad_token_id=self.tokenizer.pad_token_id or 0))
                      for group in self._chunks(batches)]
            losses, stepped, failed = self.engine.train_micro_batch(chunks, active)
            # Each member is charged its tokens' share of the pack's micro-step, so its perf/step_s (the method
            # comparison's step column) is what it costs in the pack, not the pack's whole step.
            seconds, total = time.perf_counter() - micro_started, max(sum(tokens.values()), 1)
            for k in active:
                self.windows[k].add(losses[k], tokens[k], rows[k], seconds=seconds * tokens[k] / total)
            if not stepped:
                continue
            state.step += 1
            for k in active:
                member = state.members[k]
                member.step, (member.epoch, member.batch_in_epoch) = state.step, self.cursors[k]
            for k in failed:
                self._fail(k, f"the training loss or the adapter became non-finite at step {state.step}")
            for callback in self.callbacks:
                if hasattr(callback, "on_step_end"):
                    callback.on_step_end(self)
            if state.step % cfg.log_steps == 0 or state.step == cfg.max_steps:
                self.log_training()
            if state.step % cfg.eval_steps == 0 or state.step == cfg.max_steps:
                paused = time.perf_counter()
                self.validate_and_checkpoint()
                paused = time.perf_counter() - paused
                for window in self.windows:
                    window.paused += paused
                self.progress.paused += paused
                paused_total += paused
        self.seconds["train"] = time.perf_counter() - started - paused_total

    def _chunks(self, batches: dict[int, dict]) -> list[dict[int, dict]]:
        """The members' batches in forward passes of at most `rows_per_forward` rows (whole members; 0 = all in
        one): one pass fills a GPU; on a CPU, passes of one member keep the activations of one trial in memory."""
        limit, groups, rows = self.loop_config.get("rows_per_forward") or 0, [], 0
        for k, batch in batches.items():
            n = len(batch["input_ids"])
            if not groups or (limit and rows + n > limit):
                groups.append({})
                rows = 0
            groups[-1][k], rows = batch, rows + n
        return groups

    def _next_rows(self, k: int) -> list[int]:
        """Member k's next micro-batch, from its own seeded epoch order (`epoch_batches`, as in its solo fit)."""
        member = self.members[k].config
        epoch, index = self.cursors[k]
        while True:
            batches = epoch_batches(len(self.data.train), epoch, self.rank, self.world, member.micro_batch_size,
                                    member.seed)
            if index < len(batches):
                self.cursors[k] = (epoch, index + 1)
                return batches[index]
            epoch, index = epoch + 1, 0

    def _fail(self, k: int, what: str) -> None:
        member = self.members[k].config
        message = (f"{what}: member {k} diverged (prompt_lr={member.prompt_lr}, offset_lr={member.offset_lr}); "
                   "the rest of the pack trains on.")
        self.state.members[k].status, self.state.members[k].error = FAILED, message
        self.loggers[k].tags({"adept.error": message})
        if self.rank == 0:
            log.warning(f"[adept] {message}")

    def log_training(self) -> None:
        lines = []
        for k in range(len(self.members)):
            if not self.windows[k].micro:  # left the batch before this window (the same on every rank)
                continue
            values = {**self.windows[k].summary(self.world),
                      **{f"train/lr_{name}": lr for name, lr in self.engine.member_learning_rates(k).items()}}
            self.loggers[k].metrics(values, step=self.state.step)
            self.last_train[k] = values
            self.windows[k] = Throughput()
            lines.append(f"m{k} {values['train/loss']:.4f}")
        if self.rank == 0:
            log.info("[adept] " + self.progress.line(self.state.step, "loss " + " · ".join(lines)))

    def validate_and_checkpoint(self) -> None:
        report: dict[str, float | int | str] = {}
        for k in self.running():
            member = self.state.members[k]
            if not all(torch.isfinite(t).all() for t in self.engine.adapter_state(k).values()):
                self._fail(k, f"the adapter became non-finite by step {self.state.step}")
                continue
            result = self._evaluate(k, "validation", self.data.validation)
            improved = member.best_score is None or result.score > member.best_score
            if improved:
                member.best_score, member.best_step = result.score, member.step
                self.best[k] = self.engine.adapter_state(k)
            best_metrics = result.metrics if improved else member.history[-1]["best_metrics"]
            member.history.append({"step": member.step, "metrics": result.metrics, "best_metrics": best_metrics})
            metrics = {**{f"val/{n}": v for n, v in result.metrics.items()}, "val/best": member.best_score}
            self.loggers[k].metrics(metrics, step=member.step)
            if improved:
                self.loggers[k].table(result.table(), "predictions/validation_best.json")
            report.update(_member_keys(k, {**self.last_train[k], **metrics, "best_step": member.best_step}))
            if member.step >= self.members[k].config.max_steps:
                member.status = FINISHED
        self._early_stopping(report)
        if self.rank == 0:
            log.info(f"[adept] step {self.state.step} validation: " + ", ".join(
                f"m{k} {m.history[-1]['metrics']}" for k, m in enumerate(self.state.members)
                if m.history and m.history[-1]["step"] == self.state.step))
        self._checkpoint_and_report(report, log_best=True)

    def _early_stopping(self, report: dict) -> None:
        """A sweep's ASHA (the RungKeeper) decides for each member still short of max_steps; the stopped ones leave
        the batch from the next step. Rank 0 asks; every rank applies its answers."""
        rungs, metric = self.loop_config.get("rungs"), self.loop_config.get("metric")
        stop: list[int] = []
        if rungs is not None and self.rank == 0:
            for k in self.running():
                member, score = self.state.members[k], report.get(f"m{k}_{metric}")
                if score is not None and member.step < self.members[k].config.max_steps and not ray.get(
                        rungs.decide.remote(self.members[k].config.run_name, member.step, float(score))):
                    stop.append(k)
        for k in gather_objects(stop, self.world)[0]:
            self.state.members[k].status, self.state.members[k].error = STOPPED, None
            if self.rank == 0:
                log.info(f"[adept] m{k} stopped by ASHA at step {self.state.step} ({metric} "
                         f"{report.get(f'm{k}_{metric}')}); it leaves the batch")

    # ------------------------------------------------------------------------------------------ test
    def test(self) -> None:
        final: dict[str, float | int | str] = {}
        for k, member in enumerate(self.state.members):
            if member.status == FINISHED:
                if self.best[k] is not None:
                    load_adapter_state_dict(self.model.member_model(k), self.best[k], "best adapter")
                result = self._evaluate(k, "test", self.data.test)
                best = member.history[-1]["best_metrics"] if member.history else {}
                values = {**{f"val/{n}": v for n, v in best.items()}, **{f"test/{n}": v for n, v in result.metrics.items()}}
                self.loggers[k].metrics({n: v for n, v in values.items() if n.startswith("test/")}, step=member.step)
                self.loggers[k].table(result.table(), "predictions/test.json")
                final.update(_member_keys(k, {**values, "best_step": member.best_step}))
            final[f"m{k}_status"] = member.status
            final[f"m{k}_stopped_at"] = member.step
            final[f"m{k}_error"] = member.error or ""
        memory = gather_objects(_peak_rss_mib(), self.world)
        for k, logger in enumerate(self.loggers):
            logger.metrics({**{f"perf/{n}_s": v for n, v in self.seconds.items()},
                            **{f"perf/peak_rss_mib_r{r}": m for r, m in enumerate(memory)}},
                           step=self.state.members[k].step)
            unsent = logger.close()
            final[f"m{k}_tracking_unsent"] = int(unsent is not None)
            final[f"m{k}_tracking_message"] = unsent or ""
        if self.rank == 0:
            log.info("[adept] pack done: " + ", ".join(f"m{k} {m.status} best {m.best_score} at {m.best_step}"
                                                       for k, m in enumerate(self.state.members)))
        self.state.finished = True
        self._checkpoint_and_report(final, final=True)

    def run(self) -> None:
        try:
            self.setup()
            if self.state.finished:
                return
            self.train()
            self.test()
        finally:
            for logger in getattr(self, "loggers", []):
                logger.close()

    # ------------------------------------------------------------------------------------------ helpers
    def _evaluate(self, k: int, split: str, dataset):
        started = time.perf_counter()
        progress = EvalProgress(f"m{k} {split}", len(dataset), emit=None if self.rank == 0 else (lambda _: None))
        progress.start()
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16")
        with autocast:
            result = distributed_evaluate(self.model.member_model(k), self.tokenizer, self.data.task, dataset,
                                          self.members[k].eval, self.rank, self.world,
                                          synced_generate=self.backbone_engine is not None, progress=progress)
        progress.end(", ".join(f"{n} {v:.2f}" for n, v in result.metrics.items()))
        self.seconds["eval"] += time.perf_counter() - started
        return result

    def _checkpoint_and_report(self, metrics: dict, final: bool = False, log_best: bool = False) -> None:
        started = time.perf_counter()
        name = ckpt.free_name(self.run_folder, f"step_{self.state.step:08d}" + ("_final" if final else ""))
        snapshot = self.engine.snapshot([m.step for m in self.state.members])
        tensors, meta = ckpt.rng_state()
        tensors.update({f"member{k}": state for k, state in enumerate(self.model.member_rng_states or [])})
        rng = gather_objects((tensors, meta), self.world)
        report = {**metrics, "step": self.state.step,
                  "members_running": len(self.running()), "members": len(self.members)}
        with tempfile.TemporaryDirectory(prefix="adept-pack-") as tmp:
            folder, checkpoint = Path(tmp), None
            if self.rank == 0:
                for k in range(len(self.members)):
                    member_folder = folder / "members" / str(k)
                    model = self.model.member_model(k)
                    save_adapter(model, member_folder / "adapter", state=self.engine.adapter_state(k))
                    if self.best[k] is not None:
                        save_adapter(model, member_folder / "best_adapter", state=self.best[k])
                        if log_best and self.state.members[k].best_step == self.state.members[k].step:
                            self.loggers[k].artifacts(member_folder / "best_adapter", "best_adapter")
                ckpt.write(folder, snapshot, self.state.to_dict(), rng)
                checkpoint = ray.train.Checkpoint.from_directory(str(folder))
                for logger in self.loggers:
                    logger.flush(timeout_s=10)
            ray.train.report(report, checkpoint=checkpoint, checkpoint_dir_name=name)
        self.seconds["checkpoint"] += time.perf_counter() - started

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device) for k, v in batch.items()}


def _rng_now(device: torch.device) -> torch.Tensor:
    """The RNG state dropout draws from on `device` (the CPU generator, or the device's CUDA generator)."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _member_keys(k: int, values: dict) -> dict:
    """Member k's metrics as the pack reports them to Ray: "val/accuracy" -> "m3_val_accuracy"."""
    return {f"m{k}_{ray_key(name)}": value for name, value in values.items()
            if value is not None and not (isinstance(value, float) and math.isnan(value))}


def pack_loop_per_worker(loop_config: dict) -> None:
    PackRecipe(loop_config).run()


__all__ = ["MemberState", "PackRecipe", "PackState", "pack_loop_per_worker"]
