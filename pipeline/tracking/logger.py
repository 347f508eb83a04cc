"""Rank 0's writer into a run: metrics, tables, dicts, artifacts and dataset inputs that never block training.

Each call is journaled, copied if it refers to files (adapters live in temp folders), and queued; one
background thread sends the queue in order, retrying with backoff while the tracking server is
unreachable, so an outage costs no training steps. `close()` waits for the queue to drain; if the server
stays away longer than the outage budget it returns a message naming what was not logged and the command
that logs it later (`python -m pipeline.tracking relog ...`, which reads the journal).

The journal (`metrics.jsonl` beside the run's checkpoints) keeps every metric point the worker computed,
replays after a resume included; a point is sent only if its step is past what the run already holds for
that key, so a resumed fit never writes a second point at a step.

Exactly once through an outage: a request can reach the server and be stored while its reply is lost (the
server stopped, the connection dropped). So after any failed attempt, before sending the points again, the
logger reads back the last step the run holds for each key (one `get_run`) and sends only what is missing.
Each point also keeps the time it was computed (the journal's), so a resend is the identical point (which
MLflow's SQL stores keep once) and the chart's time axis shows when the step ran, not when it was sent.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from pipeline.tracking.store import DEFAULT_OUTAGE_BUDGET_S, TrackingOutage, client, is_transient

log = logging.getLogger("adept")
JOURNAL = "metrics.jsonl"
STAGING = "tracking-staging"
_STOP = object()


class RunLogger:
    """Buffered, retried MLflow logging into one run; a no-op on ranks other than 0 or without a run."""

    def __init__(self, uri: str | None, run_id: str | None, rank: int, folder: Path | None = None,
                 budget_s: float = DEFAULT_OUTAGE_BUDGET_S, attempt: int = 0):
        self.enabled = bool(uri and run_id and rank == 0)
        self.uri, self.run_id, self.budget_s, self.attempt = uri, run_id, budget_s, attempt
        self.folder = Path(folder) if folder is not None else None
        self._queue: queue.Queue = queue.Queue()
        self._failed: list[str] = []
        self._unsent_artifacts: list[tuple[Path, str]] = []
        self._outage_since: float | None = None
        self._sent_steps: dict[str, int] | None = None
        self._closing = threading.Event()  # set by close(): retry now and then often, not after a long backoff
        self._seq = 0
        if self.enabled:
            # We retry with our own budget; MLflow's client would otherwise retry each request for minutes.
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
            if self.folder is not None:
                self.folder.mkdir(parents=True, exist_ok=True)
            self._thread = threading.Thread(target=self._send_loop, name="adept-mlflow", daemon=True)
            self._thread.start()
            self._system = _system_metrics(uri, run_id)

    # -------------------------------------------------------------------- what training calls
    def metrics(self, values: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        values, now = {k: float(v) for k, v in values.items()}, round(time.time(), 3)
        self._journal({"step": step, "attempt": self.attempt, "time": now, "values": values})
        self._queue.put(("metrics", step, (values, round(now * 1000))))

    def table(self, columns: dict[str, list], artifact_file: str) -> None:
        if self.enabled:
            self._queue.put(("table", columns, artifact_file))

    def dict(self, data: dict, artifact_file: str) -> None:
        if self.enabled:
            self._queue.put(("dict", json.loads(json.dumps(data, default=str)), artifact_file))

    def artifacts(self, local_dir: str | Path, artifact_path: str) -> None:
        if self.enabled:
            self._queue.put(("artifacts", self._stage(Path(local_dir)), artifact_path))

    def tags(self, values: dict[str, str]) -> None:
        """Run tags (setting one again with the same value is harmless: a resumed attempt may)."""
        if self.enabled:
            self._queue.put(("tags", {k: str(v)[:5000] for k, v in values.items()}, ", ".join(values)))

    def datasets(self, frames: dict[str, Any], name: str, source: str) -> None:
        """The task's splits as dataset inputs (MLflow's Dataset column), each with its digest and context."""
        if self.enabled:
            self._queue.put(("datasets", frames, (name, source)))

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until everything queued so far is sent; False if that took longer than `timeout_s`.

        During an outage it returns at once: training never waits for the server.
        """
        if not self.enabled or self._outage_since is not None:
            return not self.enabled
        done = threading.Event()
        self._queue.put(("barrier", done, None))
        return done.wait(timeout_s)

    def close(self) -> str | None:
        """Send what is left (waiting at most the outage budget), then stop.

        Returns None when everything reached the run, else a message naming what did not and the commands
        that log it once the server is back (training is never failed by the logger itself).
        """
        if not self.enabled:
            return None
        self._queue.put((_STOP, None, None))
        self._closing.set()
        self._thread.join(self.budget_s + 60)
        self.enabled = False
        if self._system is not None:
            self._system.finish()
        self._failed.extend(self._drain())
        if not self._failed and not self._thread.is_alive():
            return None
        journal = self.folder / JOURNAL if self.folder else "<journal>"
        fixes = [f"python -m pipeline.tracking relog --journal {journal} --run-id {self.run_id} --mlflow-uri {self.uri}"]
        fixes += [f"mlflow artifacts log-artifacts --local-dir {d} --run-id {self.run_id} --artifact-path {p}"
                  for d, p in self._unsent_artifacts]
        return (f"MLflow at {self.uri} did not take {len(self._failed)} item(s) of run {self.run_id} within the "
                f"tracking outage budget of {self.budget_s:.0f} s ({', '.join(self._failed[:4])}"
                f"{', ...' if len(self._failed) > 4 else ''}). Log them once the server is back: " + " ; ".join(fixes))

    # -------------------------------------------------------------------- the sender thread
    def _send_loop(self) -> None:
        while True:
            op, a, b = self._queue.get()
            if op is _STOP:
                return
            if op == "barrier":
                a.set()
                continue
            try:
                self._retry(lambda retried, op=op, a=a, b=b: self._send(op, a, b, retried), op)
            except TrackingOutage as err:
                self._failed.append(_describe(op, a, b))
                if op == "artifacts":
                    self._unsent_artifacts.append((a, b))
                log.error(f"[adept] {err}")
                # The budget is spent: record the rest as not sent instead of waiting again for each item.
                self._failed.extend(self._drain())
                return
            except Exception as err:  # noqa: BLE001 - a refused request must not kill training
                self._failed.append(f"{_describe(op, a, b)} ({type(err).__name__}: {err})")
                log.warning(f"[adept] MLflow refused {op}: {err}")

    def _retry(self, send, what: str) -> None:
        """`send(retried)` until it succeeds; `retried` is True after a failed attempt (it may have been stored)."""
        delay, retried = 1.0, False
        while True:
            try:
                send(retried)
                if self._outage_since is not None:
                    log.warning(f"[adept] MLflow reachable again after {time.monotonic() - self._outage_since:.0f} s;"
                                " buffered logs sent")
                self._outage_since = None
                return
            except Exception as err:  # noqa: BLE001
                if not is_transient(err):
                    raise
                now = time.monotonic()
                if self._outage_since is None:
                    self._outage_since = now
                    log.warning(f"[adept] MLflow unreachable ({type(err).__name__}); training continues, logs are "
                                f"buffered for up to {self.budget_s:.0f} s")
                if now - self._outage_since >= self.budget_s:
                    raise TrackingOutage(f"MLflow unreachable for {now - self._outage_since:.0f} s "
                                         f"(last error {type(err).__name__}: {str(err)[:200]})") from err
                retried = True
                if self._closing.is_set():  # the job waits on this thread: look again every 2 s, not every 15 s
                    time.sleep(min(delay, 2.0))
                else:
                    self._closing.wait(delay)  # close() cuts a long backoff short
                delay = min(delay * 2, 15.0)

    def _send(self, op: str, a, b, retried: bool = False) -> None:
        mlflow_client = client(self.uri)
        if op == "metrics":
            if self._sent_steps is None:
                self._sent_steps = last_steps(mlflow_client, self.run_id)
            elif retried:  # the failed attempt may have been stored all the same: read back what the run holds
                held = last_steps(mlflow_client, self.run_id)
                self._sent_steps.update({k: max(s, self._sent_steps.get(k, -1)) for k, s in held.items()})
            values, timestamp_ms = b
            log_new_points(mlflow_client, self.run_id, a, values, self._sent_steps, timestamp_ms)
        elif op == "table":
            mlflow_client.log_table(self.run_id, data=a, artifact_file=b)
        elif op == "dict":
            mlflow_client.log_dict(self.run_id, a, b)
        elif op == "artifacts":
            mlflow_client.log_artifacts(self.run_id, str(a), b)
        elif op == "datasets":
            log_dataset_inputs(mlflow_client, self.run_id, a, *b)
        elif op == "tags":
            for key, value in a.items():
                mlflow_client.set_tag(self.run_id, key, value)

    # -------------------------------------------------------------------- helpers
    def _journal(self, entry: dict) -> None:
        if self.folder is not None:
            with open(self.folder / JOURNAL, "a") as fh:
                fh.write(json.dumps(entry) + "\n")

    def _stage(self, local_dir: Path) -> Path:
        """A private copy of a folder the caller may delete before it is sent."""
        self._seq += 1
        root = self.folder if self.folder is not None else Path(local_dir).parent
        target = root / STAGING / f"{self._seq:06d}-{local_dir.name}"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(local_dir, target)
        return target

    def _drain(self) -> list[str]:
        """Descriptions of what is still queued (and so will not be sent)."""
        left = []
        while True:
            try:
                op, a, b = self._queue.get_nowait()
            except queue.Empty:
                return left
            if op == "barrier":
                a.set()
            elif op is not _STOP:
                left.append(_describe(op, a, b))
                if op == "artifacts":
                    self._unsent_artifacts.append((a, b))


def _describe(op: str, a, b) -> str:
    return f"metrics at step {a}" if op == "metrics" else f"{op} {b if op != 'datasets' else b[0]}"


def _system_metrics(uri: str, run_id: str):
    """CPU / memory / GPU curves of the worker node (MLflow's `system/` charts); None when unavailable."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=uri)
        monitor.start()
        return monitor
    except Exception as err:  # noqa: BLE001 - optional: psutil missing, server away at start, ...
        log.debug(f"[adept] no system metrics: {err}")
        return None


def last_steps(mlflow_client, run_id: str) -> dict[str, int]:
    """The highest step the run holds for each of its metrics: one request, whatever the history's length.

    A run's metrics are its latest point per key, the one at the highest step (MLflow's "latest metrics", which
    its own system-metrics monitor reads the same way); the public proto carries their steps.
    """
    return {m.key: m.step for m in mlflow_client.get_run(run_id).data.to_proto().metrics}


def log_new_points(mlflow_client, run_id: str, step: int, values: dict[str, float], sent: dict[str, int],
                   timestamp_ms: int | None = None) -> None:
    """Log the values whose step is past the run's last point for that key (a resumed fit replays steps).

    `timestamp_ms`: when the point was computed (the journal's time); now if not given.
    """
    from mlflow.entities import Metric

    when = round(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
    fresh = {k: v for k, v in values.items() if step > sent.get(k, -1)}
    if fresh:
        mlflow_client.log_batch(run_id, metrics=[Metric(k, v, when, step) for k, v in fresh.items()])
        sent.update({k: step for k in fresh})


def log_dataset_inputs(mlflow_client, run_id: str, frames: dict[str, Any], name: str, source: str) -> None:
    import mlflow.data
    from mlflow.entities import DatasetInput, InputTag

    inputs = []
    for split, frame in frames.items():
        dataset = mlflow.data.from_pandas(frame, source=dataset_source(source), name=f"{name}/{split}")
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", split)]))
    mlflow_client.log_inputs(run_id, datasets=inputs)


def dataset_source(task: str):
    """Where a task's rows come from: built by pipeline/tasks from a registry name or a custom task's YAML.

    Given as an explicit source: a bare path makes MLflow guess among its (duplicate) local-file sources and warn.
    """
    from mlflow.data.code_dataset_source import CodeDatasetSource

    return CodeDatasetSource(tags={"adept.task": task})


def relog(journal: Path, uri: str, run_id: str) -> int:
    """Send a journal's metric points to the run, skipping steps it already holds; returns points sent."""
    mlflow_client = client(uri)
    sent = last_steps(mlflow_client, run_id)
    count = 0
    for line in Path(journal).read_text().splitlines():
        entry = json.loads(line)
        before = dict(sent)
        when = round(entry["time"] * 1000) if "time" in entry else None
        log_new_points(mlflow_client, run_id, entry["step"], entry["values"], sent, when)
        count += sum(sent.get(k) != before.get(k) for k in entry["values"])
    return count
