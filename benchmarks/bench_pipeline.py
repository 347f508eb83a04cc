"""Item 3 (pipeline overhead): the same training work run by different runners.

A `TrainWork` is plain data (backbone name, method, batch size, input length, steps, seed), so any runner
rebuilds the identical model and the identical batches from it (`build_model`, `build_batches`).
A runner is a function `TrainWork -> RunnerResult`; `RUNNERS` maps its name to it. Each step does the
work of the pipeline's training step (`pipeline.worker.engine.DDPTrainEngine.train_micro_batch`, 1 worker, no
accumulation): forward (`loss_only=True`), backward, clip the global grad norm to 1.0, AdamW step over the
two groups, linear warm-up schedule step, zero grads, `loss.item()`.

Measured here: `bare`, a plain PyTorch loop in this process. Ray Train rows (1 worker; + DeepSpeed ZeRO-2)
plug in as modules `benchmarks/runner_<name>.py` that call `register_runner(name, fn)` on import;
`run.py` imports them all (`load_runner_modules`) and `--pipeline-runners bare,<name>` selects them.
A runner reports `startup_s` (its own setup until the first step starts) apart from per-step times, which
it measures around each step inside the worker. See the README's Benchmarks section.
"""

from __future__ import annotations

import importlib
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import bench_common as bc
import torch


@dataclass(frozen=True)
class TrainWork:
    backbone: str = "tiny"
    method: str = "adept"
    batch_size: int = 4
    length: int = 64
    warmup_steps: int = 2     # first steps, timed but left out of the steady state
    measured_steps: int = 8   # steady-state steps
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    max_grad_norm: float = 1.0

    @property
    def steps(self) -> int:
        return self.warmup_steps + self.measured_steps

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RunnerResult:
    runner: str
    startup_s: float          # runner start (process / cluster / engine setup, model and data build) to step 1
    step_s: list[float]       # every step, warm-up steps first
    tokens_per_step: int      # input tokens (prompt positions not counted)
    notes: dict = field(default_factory=dict)

    def steady(self, work: TrainWork) -> list[float]:
        return self.step_s[work.warmup_steps:]


def build_model(work: TrainWork):
    """(adapter model in train mode, its two-group AdamW, linear warm-up scheduler, pad id)."""
    from transformers import get_linear_schedule_with_warmup

    backbone = bc.load_backbone(work.backbone, work.device, work.dtype)
    spec = bc.method_spec(work.method, backbone.config.hidden_size)
    torch.manual_seed(work.seed)
    model = bc.build_adapter(backbone, spec).train()
    optimizer = bc.make_optimizer(model)
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=work.steps, num_training_steps=10 * work.steps)
    return model, optimizer, scheduler, spec


def build_batches(work: TrainWork, vocab_size: int, pad_id: int, spec: bc.MethodSpec) -> list[dict]:
    """`work.steps` distinct batches (seed + step), DePT inputs padded to s; on the CPU, moved by the runner."""
    pad_to = spec.s if spec.method == "dept" else None
    return [bc.make_batch(work.batch_size, work.length, vocab_size, seed=work.seed + 1000 + i, pad_to=pad_to,
                          pad_id=pad_id) for i in range(work.steps)]


def pipeline_step(model, optimizer, scheduler, batch: dict, max_grad_norm: float) -> float:
    loss = model(**batch, loss_only=True).loss  # as the engines: the LM head only at labelled positions
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def run_bare_loop(work: TrainWork) -> RunnerResult:
    t0 = time.perf_counter()
    model, optimizer, scheduler, spec = build_model(work)
    config = model.base_model.config
    batches = [{k: v.to(work.device) for k, v in b.items()}
               for b in build_batches(work, config.vocab_size, config.pad_token_id or 0, spec)]
    bc.sync(work.device)
    startup = time.perf_counter() - t0
    times, losses = [], []
    for batch in batches:
        start = time.perf_counter()
        losses.append(pipeline_step(model, optimizer, scheduler, batch, work.max_grad_norm))
        bc.sync(work.device)
        times.append(time.perf_counter() - start)
    return RunnerResult("bare", startup, times, work.batch_size * work.length,
                        {"label": "bare PyTorch loop (this process)", "first_loss": losses[0], "last_loss": losses[-1]})


RUNNERS: dict[str, Callable[[TrainWork], RunnerResult]] = {"bare": run_bare_loop}
BASELINE = "bare"


def register_runner(name: str, fn: Callable[[TrainWork], RunnerResult]) -> None:
    """Add a runner (e.g. Ray Train with 1 worker) to compare against the bare loop on the same TrainWork."""
    RUNNERS[name] = fn


def load_runner_modules() -> list[str]:
    """Import every `runner_*.py` beside this file (each registers its runners); returns their names."""
    names = sorted(path.stem for path in Path(__file__).resolve().parent.glob("runner_*.py"))
    for name in names:
        importlib.import_module(name)
    return names


def run(work: TrainWork, runners: list[str], log=print) -> list[dict]:
    if BASELINE not in runners:
        runners = [BASELINE, *runners]
    results = {}
    for name in runners:
        if name not in RUNNERS:
            raise ValueError(f"unknown pipeline runner {name!r}; registered: {sorted(RUNNERS)}")
        log(f"[pipeline] {name}: {work.backbone} {work.method} L={work.length} B={work.batch_size}, "
            f"{work.warmup_steps} warm-up + {work.measured_steps} steps")
        results[name] = RUNNERS[name](work)
    base = statistics.median(results[BASELINE].steady(work))
    rows = []
    for name, res in results.items():
        steady = res.steady(work)
        step = bc.summary(steady, 1000.0)
        rows.append({
            "item": "pipeline", "runner": name, "label": res.notes.get("label", name), "work": work.to_dict(),
            "startup_s": res.startup_s, "first_step_ms": res.step_s[0] * 1000.0, "step_ms": step,
            # runners run one after another, so this is a ratio of medians (bare: exactly 1)
            "ratio": {k: (v / 1000.0) / base if k != "n" else v for k, v in step.items()},
            "tokens_per_s": res.tokens_per_step / (step["median"] / 1000.0), "notes": res.notes,
        })
    return rows
