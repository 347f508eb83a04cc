"""Exactly once through an outage (issue #21): rank 0's RunLogger never logs a metric point twice, even when the
server stored a batch whose reply was lost, and closes within seconds once the server is back. In process, no Ray:
a real `mlflow server` on 127.0.0.1, reached through a proxy that drops chosen replies, or stopped and restarted."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid

import pytest
from mlflow_server import MlflowServer

from pipeline.tracking import RUN_KEY_TAG, RunLogger, client, open_run

pytestmark = [pytest.mark.faults, pytest.mark.slow]

KEYS = [f"train/m{i}" for i in range(6)]  # six per-step metrics, as a fit logs


class ReplyDroppingProxy:
    """HTTP proxy on 127.0.0.1 in front of the server: each request is forwarded and answered, except that
    `drop_after_store(n)` makes the next n log-batch requests reach the server (stored) and then closes the
    client's connection without the reply, `refuse(n)` closes the next n log-batch requests unforwarded, and
    `deliver_late(delay_s)` closes the next one unanswered but hands it to the server `delay_s` later (a hung
    server that wakes up and stores a request its client gave up on, after the client's read-back and resend).
    `down = True` closes every connection at once (an outage that costs no server restart). `faulty_path` picks
    the requests these faults hit (log-batch unless told)."""

    def __init__(self, upstream: str):
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.lock = threading.Lock()
        self.stored_unanswered = self.refused = 0
        self.late: list[float] = []
        self.late_threads: list[threading.Thread] = []
        self.events: list[str] = []
        self.down, self.last_refused = False, 0.0
        self.faulty_path = "/runs/log-batch"
        threading.Thread(target=self._accept, daemon=True).start()

    def drop_after_store(self, n: int = 1) -> None:
        with self.lock:
            self.stored_unanswered += n

    def refuse(self, n: int = 1) -> None:
        with self.lock:
            self.refused += n

    def deliver_late(self, delay_s: float) -> None:
        with self.lock:
            self.late.append(delay_s)

    def close(self) -> None:
        """Stop listening, after the late deliveries."""
        for thread in self.late_threads:
            thread.join(60)
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self.down:
                self.last_refused = time.monotonic()
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            buffer = b""
            while True:
                request, buffer = _read_request(conn, buffer)
                if request is None:
                    return
                if self.down:
                    self.last_refused = time.monotonic()
                    return
                head = request.split(b"\r\n", 1)[0].decode()
                fault = None
                if self.faulty_path in head:
                    with self.lock:
                        if self.refused:
                            self.refused, fault = self.refused - 1, "refused"
                            self.events.append(fault)
                        elif self.stored_unanswered:
                            self.stored_unanswered, fault = self.stored_unanswered - 1, "stored, reply dropped"
                        elif self.late:
                            fault = "delivered late"
                            thread = threading.Thread(target=self._late, args=(request, self.late.pop(0)))
                            self.late_threads.append(thread)
                            thread.start()
                if fault in ("refused", "delivered late"):
                    return
                reply = _forward(self.upstream, request)
                if fault:
                    self.events.append(fault)
                    return  # the server has it; the client sees the connection close without a reply
                conn.sendall(reply)

    def _late(self, request: bytes, delay_s: float) -> None:
        time.sleep(delay_s)
        reply = _forward(self.upstream, request)
        self.events.append(f"delivered late: {reply.split(b' ', 2)[1].decode()}")  # the server's status code


def _read_request(conn: socket.socket, buffer: bytes) -> tuple[bytes | None, bytes]:
    """One HTTP/1.1 request (headers + Content-Length body) from a kept-alive connection."""
    while b"\r\n\r\n" not in buffer:
        chunk = conn.recv(65536)
        if not chunk:
            return None, b""
        buffer += chunk
    head, rest = buffer.split(b"\r\n\r\n", 1)
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                   if line.lower().startswith(b"content-length:")), 0)
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None, b""
        rest += chunk
    return head + b"\r\n\r\n" + rest[:length], rest[length:]


def _forward(upstream: tuple[str, int], request: bytes) -> bytes:
    """The request on a fresh upstream connection (Connection: close), the whole reply read to its end."""
    head, body = request.split(b"\r\n\r\n", 1)
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
    with socket.create_connection(upstream, timeout=30) as up:
        up.sendall(b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n" + body)
        reply = b""
        while chunk := up.recv(65536):
            reply += chunk
    return reply


def points(uri: str, run_id: str) -> dict[str, list]:
    mlflow_client = client(uri)
    return {key: mlflow_client.get_metric_history(run_id, key) for key in KEYS}


def assert_exactly_once(uri: str, run_id: str, steps: range) -> dict[str, list]:
    held = points(uri, run_id)
    for key, history in held.items():
        assert sorted(m.step for m in history) == list(steps), f"{key}: {sorted(m.step for m in history)}"
    return held


def new_run(uri: str) -> str:
    return open_run(uri, "exactly-once", f"eo-{uuid.uuid4().hex[:8]}", kind="fit").run_id


@pytest.fixture(autouse=True)
def _logger_env(monkeypatch):
    """RunLogger sets MLflow's HTTP retries and timeout for its process: restored after each test."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")


def test_a_stored_batch_whose_reply_was_lost_is_not_sent_again(mlflow_server, tmp_path):
    proxy = ReplyDroppingProxy(mlflow_server)
    run_id = new_run(mlflow_server)
    logger = RunLogger(proxy.url, run_id, rank=0, folder=tmp_path, budget_s=120)
    try:
        for step in range(1, 13):
            if step == 3:
                proxy.drop_after_store()  # the issue: stored, the connection dropped, the client retries
            if step == 6:
                proxy.drop_after_store(2)  # two in a row: step 6 (its retry finds it stored, sends nothing), then 7
            if step == 9:
                proxy.refuse()  # never reached the server: the retry must still send it
            if step == 11:
                # stored only after the logger read back and resent it: the identical point, which the store keeps once
                proxy.deliver_late(6.0)
            logger.metrics({key: step + i / 10 for i, key in enumerate(KEYS)}, step)
            logger.flush(timeout_s=60)  # one batch per request (returns at once while the logger is retrying)
        started = time.monotonic()
        assert logger.close() is None
        closed_in = time.monotonic() - started
    finally:
        proxy.close()
    assert proxy.events.count("stored, reply dropped") == 3, proxy.events
    assert "refused" in proxy.events and "delivered late: 200" in proxy.events, proxy.events
    held = assert_exactly_once(mlflow_server, run_id, range(1, 13))
    # each point keeps the time it was computed (the journal's): a resend is the identical point
    journal = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if line]
    assert len(journal) == 12
    times = {m.step: m.timestamp for m in held[KEYS[0]]}
    assert times == {e["step"]: round(e["time"] * 1000) for e in map(json.loads, journal)}
    assert closed_in < 20, f"close() took {closed_in:.1f} s with the server up"


def test_a_run_whose_create_reply_was_lost_is_created_once(mlflow_server):
    """The server created the run but the client never heard: the retry finds that run (by its key) rather than
    creating a second one beside it, and gives it the params."""
    proxy = ReplyDroppingProxy(mlflow_server)
    proxy.faulty_path = "/runs/create"
    proxy.drop_after_store()
    key = f"eo-{uuid.uuid4().hex[:8]}"
    try:
        ref = open_run(proxy.url, "exactly-once", key, kind="fit", params={"seed": 7}, budget_s=60)
    finally:
        proxy.close()
    assert proxy.events == ["stored, reply dropped"]
    runs = client(mlflow_server).search_runs([ref.experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'")
    assert [r.info.run_id for r in runs] == [ref.run_id]
    assert runs[0].data.params == {"seed": "7"}


def test_close_returns_within_seconds_of_the_server_coming_back(mlflow_server, tmp_path):
    """The fit ends during the outage: close() waits for the server, then returns within seconds of its return
    rather than after the logger's longest backoff (15 s between attempts)."""
    proxy = ReplyDroppingProxy(mlflow_server)
    run_id = new_run(mlflow_server)
    logger = RunLogger(proxy.url, run_id, rank=0, folder=tmp_path, budget_s=120)
    closed: list = []
    try:
        logger.metrics({key: 1.0 for key in KEYS}, 1)
        assert logger.flush(timeout_s=60)
        proxy.down = True
        for step in range(2, 6):
            logger.metrics({key: float(step) for key in KEYS}, step)
        time.sleep(17)  # long enough for the backoff to reach its longest wait (after 1 + 2 + 4 + 8 s)
        closing = time.monotonic()
        closer = threading.Thread(target=lambda: closed.append(logger.close()))
        closer.start()
        deadline = time.monotonic() + 30
        while proxy.last_refused < closing and time.monotonic() < deadline:
            time.sleep(0.05)  # an attempt since close() began: the next one comes after the logger's wait
        proxy.down = False
        back = time.monotonic()
        closer.join(60)
        after_back = time.monotonic() - back
    finally:
        proxy.down = False
        proxy.close()
    assert closed == [None]
    assert_exactly_once(mlflow_server, run_id, range(1, 6))
    assert after_back < 8, f"close() returned {after_back:.1f} s after the server was back"


def test_a_real_outage_logs_each_point_once_and_closes_promptly(tmp_path):
    """A real server stopped mid-run (whatever request is in flight) and started again while close() waits."""
    server = MlflowServer(tmp_path / "server").start()
    closed: list = []
    try:
        run_id = new_run(server.url)
        logger = RunLogger(server.url, run_id, rank=0, folder=tmp_path / "run", budget_s=300)
        for step in range(1, 31):
            logger.metrics({key: step + i / 10 for i, key in enumerate(KEYS)}, step)
            time.sleep(0.2)
            if step == 10:
                server.stop()
        closer = threading.Thread(target=lambda: closed.append(logger.close()))
        closer.start()  # training ended during the outage: the job waits in close()
        time.sleep(3)
        server.start()
        back = time.monotonic()
        closer.join(120)
        after_back = time.monotonic() - back
        assert closed == [None]
        assert_exactly_once(server.url, run_id, range(1, 31))
    finally:
        server.stop()
    # a behaviour bound, not a benchmark: once the server is back the close waits for no long backoff
    assert after_back < 20, f"close() returned {after_back:.1f} s after the server was back"


def test_a_status_is_read_as_a_status_not_as_digits_in_the_text():
    """What the logger retries: connection trouble and 5xx/429 replies; a refusal is not retried for the whole
    budget because its text happens to hold "503" (a run id, a port, a value)."""
    import requests
    from mlflow.exceptions import MlflowException, RestException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

    from pipeline.tracking.store import is_transient

    def http_error(status: int) -> requests.HTTPError:
        response = requests.Response()
        response.status_code = status
        return requests.HTTPError(f"{status} error", response=response)

    refused = MlflowException("Run 'ab503cd504ef502a' not found (port 55031)", error_code=RESOURCE_DOES_NOT_EXIST)
    assert not is_transient(refused)
    assert not is_transient(RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "step 503 is bad"}))
    assert not is_transient(http_error(404)) and not is_transient(http_error(403))
    assert is_transient(http_error(503)) and is_transient(http_error(502)) and is_transient(http_error(429))
    assert is_transient(RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "try later"}))
    assert is_transient(MlflowException("API request to endpoint /api/2.0/mlflow/runs/log-batch failed with error "
                                        "code 502 != 200. Response body: 'Bad Gateway'"))
    assert is_transient(MlflowException("API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/get failed with "
                                        "exception HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries "
                                        "exceeded (Caused by NewConnectionError('Connection refused'))"))
    assert is_transient(ConnectionResetError()) and is_transient(requests.ConnectionError("aborted"))
