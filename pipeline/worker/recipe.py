"""The Ray Train worker as a recipe: one ADePT / DePT / prompt-tuning fit, read top to bottom.

    recipe = FitRecipe(loop_config)       # on every worker of the TorchTrainer; loop_config["run"] is the
                                          # ResolvedRun the driver built (pipeline.driver.launch.prepare)
    recipe.setup()      backbone + adapter, task data, DeepSpeed engine (or DDP), MLflow logger, resume
    recipe.train()      micro-batches -> optimizer steps; every `eval_steps`: validate_and_checkpoint()
    recipe.test()       reload the best adapter, score the test split, final report

State lives on the object (engine, data, best adapter, throughput window, logger, progress), so a new
metric is one line in one method. Checkpoints are `pipeline.worker.checkpoint` folders written by rank 0
after the collective gathers, reported to Ray Train; a resumed fit restores weights, AdamW moments,
scheduler, data position and every rank's RNG, so replayed steps compute what they computed before.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import ray.train
import torch

from adept.io import load_adapter_state_dict, read_adapter_state_dict, save_adapter
from pipeline.core.config import TrainConfig, apply_driver_env
from pipeline.core.errors import UserError
from pipeline.core.logs import configure_worker_logging
from pipeline.core.progress import EvalProgress, TrainProgress
from pipeline.core.resolve import ResolvedRun
from pipeline.tracking import RunLogger, clear_stopped_early, ray_key
from pipeline.worker import checkpoint as ckpt
from pipeline.worker.callbacks import build_callbacks
from pipeline.worker.distributed import distributed_evaluate, epoch_batches, gather_objects, reduce_sums
from pipeline.worker.engine import build_engine, deepspeed_plan, linear_warmup_schedule
from pipeline.worker.setup import build_data, build_model

log = logging.getLogger("adept")


class DivergenceError(RuntimeError):
    """The loss or the adapter became non-finite: the fit stops, nothing non-finite becomes "best"."""


@dataclass
class TrainState:
    """Everything besides tensors that a resumed run needs to continue exactly where it stopped."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_score: float | None = None
    best_step: int | None = None
    history: list[dict] = field(default_factory=list)
    resumed_at: list[int] = field(default_factory=list)  # steps this run restarted from
    nodes: list[list[str]] = field(default_factory=list)  # per attempt: the Ray node id of each rank
    finished: bool = False  # the final (test) report was made: a re-run changes nothing

    @classmethod
    def from_dict(cls, data: dict) -> TrainState:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class Throughput:
    """Training-only counters since the last log line: validation and checkpoint time is left out. A member of a
    pack is `charged` its share of each pack step instead of the wall time (see PackRecipe.train)."""

    loss: float = 0.0
    micro: int = 0
    tokens: int = 0
    samples: int = 0
    t0: float = field(default_factory=time.perf_counter)
    paused: float = 0.0
    charged: float | None = None

    def add(self, loss: float, tokens: int, samples: int, seconds: float | None = None) -> None:
        self.loss, self.micro = self.loss + loss, self.micro + 1
        self.tokens, self.samples = self.tokens + tokens, self.samples + samples
        if seconds is not None:
            self.charged = (self.charged or 0.0) + seconds

    def summary(self, world: int) -> dict[str, float]:
        """Mean loss and rates over the fit's `world` ranks (a collective call)."""
        loss, micro, tokens, samples = reduce_sums([self.loss, self.micro, self.tokens, self.samples], world)
        wall = time.perf_counter() - self.t0 - self.paused
        seconds = max(wall if self.charged is None else self.charged, 1e-9)
        return {"train/loss": loss / max(micro, 1), "perf/tokens_per_s": tokens / seconds,
                "perf/samples_per_s": samples / seconds, "perf/step_s": seconds / max(micro, 1)}


class FitRecipe:
    def __init__(self, loop_config: dict):
        apply_driver_env(loop_config.get("env", {}))
        configure_worker_logging()
        self.loop_config = loop_config
        self.run_spec: ResolvedRun = loop_config["run"]
        self.cfg = self.run_spec.config
        self.callbacks = build_callbacks(self.cfg.callbacks)
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        use_assigned_cpus()
        self.device = ray.train.torch.get_device() if self.cfg.use_gpu else torch.device("cpu")
        self.state = TrainState()
        self.run_folder = Path(self.cfg.storage_path) / self.cfg.run_name  # its checkpoints, journal, quarantine
        self.best_adapter: dict[str, torch.Tensor] | None = None
        self.last_train_metrics: dict[str, float] = {}
        # Where this attempt's time goes (logged at the end as perf/*_s): Ray Train's start-up until this worker
        # runs, building model/data/engine, training steps, evaluation, checkpoint + report.
        self.seconds = {"startup": max(0.0, time.time() - loop_config.get("launched_at", time.time())),
                        "setup": 0.0, "train": 0.0, "eval": 0.0, "checkpoint": 0.0}

    # ------------------------------------------------------------------------------------------ setup
    def setup(self) -> None:
        started = time.perf_counter()
        self.rss_before_model = _rss_mib()  # the memory benchmark subtracts it: what the model and data add
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        plan = deepspeed_plan(cfg, self.device)  # before the model: ZeRO-3 builds the backbone partitioned
        self.model, self.tokenizer = build_model(self.run_spec, self.device, plan)
        self.data = build_data(self.run_spec, self.tokenizer, verbose=self.rank == 0)
        if len(self.data.train) // self.world < cfg.micro_batch_size:
            raise UserError(f"the train split has {len(self.data.train)} rows: too few for {self.world} workers × "
                             f"micro batch {cfg.micro_batch_size}; lower batch_size or num_workers.")
        optimizer = torch.optim.AdamW(self.model.parameter_groups(cfg.prompt_lr, cfg.offset_lr, cfg.weight_decay),
                                      eps=1e-6)
        scheduler = linear_warmup_schedule(optimizer, cfg.warmup_steps, cfg.max_steps)
        self.engine = build_engine(cfg, self.model, optimizer, scheduler, self.device, self.world, plan)
        checkpoint = ray.train.get_checkpoint()
        if checkpoint:
            with checkpoint.as_directory() as folder:
                self._resume(Path(folder))
        self.state.nodes.append(attempt_nodes(self.rank, self.world))
        self.logger = RunLogger(self.run_spec.tracking_uri, self.loop_config.get("mlflow_run_id"), self.rank,
                                folder=_journal_folder(cfg), budget_s=cfg.tracking_outage_s,
                                attempt=len(self.state.resumed_at))
        if ckpt.quarantined(self.run_folder):  # by this attempt or an earlier one: named on the run
            self.logger.tags({"adept.quarantined": ", ".join(p.name for p in ckpt.quarantined(self.run_folder))})
        if not self.state.resumed_at:
            self.logger.dict(self.run_spec.to_json(), "config/resolved_config.json")
            self.logger.datasets(self.data.frames(), self.data.task.name, source=cfg.task)
        self.progress = TrainProgress(cfg.max_steps, self.state.step)
        self.window = Throughput()
        self.seconds["setup"] = time.perf_counter() - started

    def _resume(self, latest: Path) -> None:
        refused: list[Path] = []
        folder = ckpt.latest_good(latest, refused)
        saved, tensors = ckpt.read(folder)
        gather_objects(None, self.world)  # every rank has read the good one: now the refused ones may move
        if self.rank == 0:
            ckpt.quarantine(refused)  # kept as evidence, out of reach of Ray Train's checkpoint retention
        self.state = TrainState.from_dict(saved)
        if self.state.finished:
            return
        warmup = self.data.collate([self.data.train[i] for i in range(self.cfg.micro_batch_size)])
        self.engine.restore(ckpt.TrainerSnapshot(tensors, saved["engine"]), self._to_device(warmup))
        if (folder / "best_adapter").is_dir():
            self.best_adapter = read_adapter_state_dict(folder / "best_adapter")
        rng = ckpt.rank_rng(saved, tensors, self.rank)
        if rng is not None:  # a run resumed on more workers than it had: the new ranks keep their seed
            ckpt.set_rng_state(*rng)
        self.state.resumed_at.append(self.state.step)
        if self.rank == 0:
            log.info(f"[adept] resumed from {folder.name} at step {self.state.step} (epoch {self.state.epoch}, "
                     f"batch {self.state.batch_in_epoch})")

    # ------------------------------------------------------------------------------------------ train
    def train(self) -> None:
        cfg, state = self.cfg, self.state
        started, paused_total = time.perf_counter(), 0.0
        while state.step < cfg.max_steps:
            batches = epoch_batches(len(self.data.train), state.epoch, self.rank, self.world, cfg.micro_batch_size,
                                    cfg.seed)
            for index in range(state.batch_in_epoch, len(batches)):
                rows = [self.data.train[i] for i in batches[index]]
                batch = self.data.collate(rows)
                try:
                    loss, stepped = self.engine.train_micro_batch(self._to_device(batch))
                except RuntimeError as err:  # AdamW's step size itself overflows float32
                    if "overflow" not in str(err):
                        raise
                    raise self._diverged(f"the optimizer step overflowed ({err})") from err
                if not math.isfinite(loss):
                    raise self._diverged(f"the training loss became {loss}")
                self.window.add(loss, int(batch["attention_mask"].sum()), len(rows))
                if not stepped:
                    continue
                state.step, state.batch_in_epoch = state.step + 1, index + 1
                for callback in self.callbacks:
                    if hasattr(callback, "on_step_end"):
                        callback.on_step_end(self)
                if state.step % cfg.log_steps == 0 or state.step == cfg.max_steps:
                    self.log_training()
                if state.step % cfg.eval_steps == 0 or state.step == cfg.max_steps:
                    paused = time.perf_counter()
                    self.validate_and_checkpoint()
                    paused = time.perf_counter() - paused
                    self.window.paused += paused
                    self.progress.paused += paused
                    paused_total += paused
                if state.step >= cfg.max_steps:
                    break
            else:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        self.seconds["train"] = time.perf_counter() - started - paused_total

    def log_training(self) -> None:
        values = {**self.window.summary(self.world),
                  **{f"train/lr_{k}": v for k, v in self.engine.learning_rates().items()}}
        self.logger.metrics(values, step=self.state.step)
        self.last_train_metrics = values
        if self.rank == 0:
            lrs = " ".join(f"{k.removeprefix('train/')} {v:.1e}" for k, v in values.items() if "/lr_" in k)
            log.info("[adept] " + self.progress.line(self.state.step, f"loss {values['train/loss']:.4f} · {lrs} · "
                                                                      f"{values['perf/tokens_per_s']:.0f} tok/s"))
        self.window = Throughput()

    def validate_and_checkpoint(self) -> None:
        state = self.state
        self._check_finite_adapter()
        result = self._evaluate("validation", self.data.validation)
        improved = state.best_score is None or result.score > state.best_score
        if improved:
            state.best_score, state.best_step = result.score, state.step
            self.best_adapter = self.engine.adapter_state()  # fp32 masters; collective under DeepSpeed
            self.logger.table(result.table(), "predictions/validation_best.json")
        best_metrics = result.metrics if improved else state.history[-1]["best_metrics"]
        state.history.append({"step": state.step, "metrics": result.metrics, "best_metrics": best_metrics})
        metrics = {**{f"val/{k}": v for k, v in result.metrics.items()}, "val/best": state.best_score}
        self.logger.metrics(metrics, step=state.step)
        if self.rank == 0:
            log.info(f"[adept] step {state.step} validation {result.metrics} (best "
                     f"{self.data.task.primary_metric} {state.best_score:.2f} at step {state.best_step})")
        self._checkpoint_and_report({**metrics, "best_step": state.best_step}, log_best=improved)

    # ------------------------------------------------------------------------------------------ test
    def test(self) -> None:
        state = self.state
        if self.best_adapter is not None:
            load_adapter_state_dict(self.engine.module, self.best_adapter, "best adapter")
        result = self._evaluate("test", self.data.test)
        best = state.history[-1]["best_metrics"] if state.history else {}
        final = {**{f"val/{k}": v for k, v in best.items()}, **{f"test/{k}": v for k, v in result.metrics.items()},
                 "best_step": state.best_step}
        self.logger.metrics({k: v for k, v in final.items() if k.startswith("test/")}, step=state.step)
        self.logger.table(result.table(), "predictions/test.json")
        if self.rank == 0:
            log.info(f"[adept] done: best validation {self.data.task.primary_metric} {state.best_score} at step "
                     f"{state.best_step}; test {result.metrics}")
        # per rank: MiB before setup, peak, and the parameters it holds (its ZeRO-3 partition, else all of them)
        memory = gather_objects((self.rss_before_model, _peak_rss_mib(), _held_param_mib(self.engine.module)),
                                self.world)
        self.logger.metrics({**{f"perf/{k}_s": v for k, v in self.seconds.items()},
                             **{f"perf/rss_before_model_mib_r{k}": m[0] for k, m in enumerate(memory)},
                             **{f"perf/peak_rss_mib_r{k}": m[1] for k, m in enumerate(memory)},
                             **{f"perf/params_held_mib_r{k}": m[2] for k, m in enumerate(memory)}}, step=state.step)
        if self.rank == 0:
            log.info("[adept] time: " + " · ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items()))
        unsent = self.logger.close()  # before the final report, so the driver learns what MLflow lacks
        if unsent is None and self.rank == 0 and self.loop_config.get("mlflow_run_id"):
            try:  # a sweep's STOP can reach us after we passed its rung: we completed, so no stopped-early tags
                clear_stopped_early(self.run_spec.tracking_uri, self.loop_config["mlflow_run_id"], budget_s=30.0)
            except Exception as err:  # noqa: BLE001 - the fit is done; a tracking problem must not fail it
                log.warning(f"[adept] could not check the run's stopped-early tags: {err}")
        final.update(tracking_unsent=int(unsent is not None), tracking_message=unsent or "",
                     quarantined=len(ckpt.quarantined(self.run_folder)))
        state.finished = True
        self._checkpoint_and_report(final, final=True)

    def run(self) -> None:
        try:
            self.setup()
            if self.state.finished:
                if self.rank == 0:
                    log.info(f"[adept] run already finished at step {self.state.step}; nothing to do")
                return
            self.train()
            self.test()
        finally:
            if hasattr(self, "logger"):
                self.logger.close()  # a no-op after test(); on a failure, sends what it can

    # ------------------------------------------------------------------------------------------ helpers
    def _evaluate(self, split: str, dataset):
        started = time.perf_counter()
        progress = EvalProgress(split, len(dataset), emit=None if self.rank == 0 else (lambda _: None))
        progress.start()
        # DDP bf16 trains under autocast on fp32 weights: evaluate the same way (DeepSpeed bf16 holds bf16 weights).
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16,
                                  enabled=self.cfg.precision == "bf16" and not self.cfg.deepspeed)
        with autocast:
            result = distributed_evaluate(self.engine.module, self.tokenizer, self.data.task, dataset,
                                          self.data.eval_config, self.rank, self.world,
                                          synced_generate=self.cfg.deepspeed and self.cfg.zero_stage == 3,
                                          progress=progress)
        progress.end(", ".join(f"{k} {v:.2f}" for k, v in result.metrics.items()))
        self.seconds["eval"] += time.perf_counter() - started
        return result

    def _diverged(self, what: str) -> DivergenceError:
        cfg = self.cfg
        return DivergenceError(
            f"{what} at step {self.state.step + 1}: the fit diverged. Likely cause: a learning rate too high for "
            f"this backbone (prompt_lr={cfg.prompt_lr}, offset_lr={cfg.offset_lr}); lower them (SmolLM2-sized "
            "embeddings want ~1e-2 / 3e-4, T5's 0.3 / 1e-4).")

    def _check_finite_adapter(self) -> None:
        state = self.engine.adapter_state()  # collective under DeepSpeed
        bad = [name for name, tensor in state.items() if not torch.isfinite(tensor).all()]
        if bad:
            raise DivergenceError(f"adapter tensor(s) {bad} became non-finite by step {self.state.step}: the fit "
                                  f"diverged (prompt_lr={self.cfg.prompt_lr}, offset_lr={self.cfg.offset_lr}); "
                                  "lower the learning rates.")

    def _checkpoint_and_report(self, metrics: dict, final: bool = False, log_best: bool = False) -> None:
        """Gather on every rank, write on rank 0, report everywhere (Ray persists rank 0's folder)."""
        started = time.perf_counter()
        # before any collective, so that every rank names it alike: not a quarantined checkpoint's stub folder
        name = ckpt.free_name(self.run_folder, f"step_{self.state.step:08d}" + ("_final" if final else ""))
        snapshot = self.engine.snapshot(self.state.step)  # collective under DeepSpeed
        current = {k.removeprefix("param/"): v for k, v in snapshot.tensors.items() if k.startswith("param/")}
        rng = gather_objects(ckpt.rng_state(), self.world)
        report = {ray_key(k): v for k, v in {**self.last_train_metrics, **metrics}.items()}
        report["step"] = self.state.step
        with tempfile.TemporaryDirectory(prefix="adept-ckpt-") as tmp:
            folder = Path(tmp)
            checkpoint = None
            if self.rank == 0:
                save_adapter(self.engine.module, folder / "adapter", state=current)
                if self.best_adapter is not None:
                    save_adapter(self.engine.module, folder / "best_adapter", state=self.best_adapter)
                    if log_best:
                        self.logger.artifacts(folder / "best_adapter", "best_adapter")
                ckpt.write(folder, snapshot, asdict(self.state), rng)
                checkpoint = ray.train.Checkpoint.from_directory(str(folder))
                # A sweep's scheduler may stop this trial as soon as it sees the report: send the best adapter
                # first (waiting at most briefly: during an outage the logger keeps it for later).
                self.logger.flush(timeout_s=10)
            ray.train.report(report, checkpoint=checkpoint, checkpoint_dir_name=name)
        self.seconds["checkpoint"] += time.perf_counter() - started

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device) for k, v in batch.items()}


def train_loop_per_worker(loop_config: dict) -> None:
    FitRecipe(loop_config).run()


def use_assigned_cpus() -> None:
    """As many torch threads as CPUs Ray gave this worker: torch defaults to every core of the machine, and two
    trials side by side on 2 cores then fight over both (measured: 26 instead of ~60 tokens/s each)."""
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    if cpus:
        torch.set_num_threads(max(1, int(cpus)))


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux: VmHWM)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _held_param_mib(module: torch.nn.Module) -> float:
    """Parameter bytes this process holds between steps: what is materialised (under ZeRO-3 only persistent
    small parameters stay gathered; released ones are empty) plus, under ZeRO-3, its partition (`ds_tensor`)."""
    held = 0
    for p in module.parameters():
        partition = getattr(p, "ds_tensor", None)
        held += (p.data.numel() + (partition.numel() if partition is not None else 0)) * p.element_size()
    return held / 2**20


def attempt_nodes(rank: int, world: int) -> list[str]:
    """The Ray node id of each rank of this attempt (kept in the trainer state of every checkpoint, so where a fit
    or a pack ran, and where it went after a lost node, is visible afterwards)."""
    nodes = gather_objects(ray.get_runtime_context().get_node_id(), world)
    if rank == 0 and len(set(nodes)) > 1:
        log.info(f"[adept] {world} workers on {len(set(nodes))} Ray nodes: "
                 + ", ".join(f"rank {i} {node[:8]}" for i, node in enumerate(nodes)))
    return nodes


def _journal_folder(cfg: TrainConfig) -> Path:
    """Beside the run's checkpoints on a shared filesystem; a local temp folder for remote storage (s3://)."""
    if "://" in cfg.storage_path:
        return Path(tempfile.gettempdir()) / "adept-journals" / cfg.run_name
    return Path(cfg.storage_path) / cfg.run_name


__all__ = ["DivergenceError", "FitRecipe", "Throughput", "TrainState", "train_loop_per_worker"]
