"""Prometheus metrics, ``/healthz`` and ``/readyz`` over one small HTTP server thread with bounded work.

``/healthz``: the process is alive and serving (200). ``/readyz``: 200 when the model is loaded, the
index ensured, the broker reachable, the consumer group has assigned this worker its partitions (none,
when there are more workers than partitions, counts) and the loop not backing off; 503 with the
missing conditions otherwise. ``/metrics``: the Prometheus text format of the worker's own registry.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from dataclasses import dataclass
from typing import Self

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from worker.core.outcome import BatchOutcome


class Metrics:
    """The worker's counters, in a registry of their own (tests build as many as they like)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.records = Counter("twinflag_records", "Records consumed and committed.", registry=r)
        self.documents = Counter("twinflag_documents", "Valid documents decided.", registry=r)
        self.deletions = Counter("twinflag_deletions", "Deletions applied to the index.", registry=r)
        self.flags = Counter("twinflag_flags", "Duplicate flags published, by stage.", ["stage"], registry=r)
        self.dead_letters = Counter(
            "twinflag_dead_letters",
            "Records sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.batches = Counter("twinflag_batches", "Batches committed.", registry=r)
        self.backoffs = Counter(
            "twinflag_backoffs", "Batches not committed and retried, by error.", ["error"], registry=r
        )
        self.batch_seconds = Histogram(
            "twinflag_batch_seconds",
            "Wall time of a batch, poll to commit.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=r,
        )
        self.batch_size = Histogram(
            "twinflag_batch_records",
            "Records per batch.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
            registry=r,
        )
        self.lag = Gauge(
            "twinflag_consumer_lag",
            "Records behind the end of the assigned partitions; NaN until the first commit measures it.",
            registry=r,
        )
        self.lag.set(float("nan"))  # not 0: a worker that has read nothing yet has not caught up

    def observe(self, result: BatchOutcome, seconds: float) -> None:
        self.records.inc(result.records)
        self.documents.inc(result.documents)
        self.deletions.inc(result.deletions)
        for stage, count in result.flags_by_stage().items():
            self.flags.labels(stage=stage).inc(count)
        for reason, count in result.dead_letters_by_code().items():
            self.dead_letters.labels(reason=reason).inc(count)
        self.batches.inc()
        self.batch_seconds.observe(seconds)
        self.batch_size.observe(result.records)


@dataclass
class Readiness:
    """What ``/readyz`` reports; the wiring and the loop set these (plain attribute writes)."""

    model_loaded: bool = False
    index_ready: bool = False
    broker_connected: bool = False
    group_joined: bool = False
    backing_off: bool = False

    def missing(self) -> list[str]:
        checks = {
            "model not loaded": self.model_loaded,
            "index not ensured": self.index_ready,
            "broker not connected": self.broker_connected,
            "no partitions assigned yet (group join)": self.group_joined,
            "backing off after an outage": not self.backing_off,
        }
        return [name for name, ok in checks.items() if not ok]

    @property
    def ready(self) -> bool:
        return not self.missing()


class StatusServer:
    """``/metrics``, ``/healthz``, ``/readyz`` served by one asyncio loop on a daemon thread, with bounded
    work: at most ``max_connections`` waiting for their request at once (a new one pushes out the one
    that has waited longest), each given ``timeout_s`` to send a request head of at most 8 KiB,
    answered once and closed.

    A thread per connection with no timeout (the stdlib server it replaces) let 1,000 idle sockets take
    every file descriptor: the status thread spun, ``/healthz`` timed out, and the index's next flush
    failed with "Too many open files". Here idle and slow clients cost one descriptor each, for
    ``timeout_s`` at most, and never more than ``max_connections`` of them. A context manager; ``port``
    is bound when it is built.
    """

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics,
        readiness: Readiness,
        *,
        max_connections: int = 256,
        timeout_s: float = 3.0,
    ) -> None:
        self._metrics, self._readiness = metrics, readiness
        self._max_connections, self._timeout_s = max_connections, timeout_s
        self._sock = socket.create_server((host, port), backlog=128)
        self.port: int = self._sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._stopping: asyncio.Event | None = None
        self._reading: dict[asyncio.StreamWriter, None] = {}  # in arrival order: the oldest first
        self._thread = threading.Thread(target=self._run, name="twinflag-status", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close(timeout_s=2.0)

    def close(self, timeout_s: float) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop)
            self._thread.join(timeout_s)
        self._sock.close()

    def _stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._handle, sock=self._sock, limit=MAX_HEAD_BYTES)
        async with server:
            await self._stopping.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._reading) >= self._max_connections:
            # Full: the connection that has waited longest without sending a request goes, so a probe,
            # which asks at once, always gets through a crowd of idle or slow clients.
            oldest = next(iter(self._reading))
            del self._reading[oldest]
            oldest.transport.abort()
        self._reading[writer] = None
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self._timeout_s)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.transport.abort()  # idle, slow, oversized, evicted or gone: nothing to answer
            return
        finally:
            self._reading.pop(writer, None)
        status, body, content_type = self._answer(head)
        writer.write(_response(status, body, content_type, with_body=not head.startswith(b"HEAD ")))
        writer.close()  # after the buffered answer is sent
        try:
            await asyncio.wait_for(writer.wait_closed(), self._timeout_s)
        except (TimeoutError, ConnectionError):
            writer.transport.abort()

    @property
    def open_connections(self) -> int:
        """Connections still sending their request (answered ones close at once)."""
        return len(self._reading)

    def _answer(self, head: bytes) -> tuple[int, bytes, str]:
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(request_line) < 2 or request_line[0] not in ("GET", "HEAD"):
            return 405, b"method not allowed\n", TEXT
        path = request_line[1].split("?", 1)[0]
        if path == "/metrics":
            return 200, generate_latest(self._metrics.registry), CONTENT_TYPE_LATEST
        if path == "/healthz":
            return 200, b"ok\n", TEXT
        if path == "/readyz":
            missing = self._readiness.missing()
            body = ("ready\n" if not missing else "not ready: " + "; ".join(missing) + "\n").encode()
            return (503 if missing else 200), body, TEXT
        return 404, b"not found\n", TEXT


MAX_HEAD_BYTES = 8 * 1024
TEXT = "text/plain; charset=utf-8"
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def _response(status: int, body: bytes, content_type: str, *, with_body: bool) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + (body if with_body else b"")
