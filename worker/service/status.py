"""Prometheus metrics, ``/healthz`` and ``/readyz`` over one small stdlib HTTP server thread.

``/healthz``: the process is alive and serving (200). ``/readyz``: 200 when the model is loaded, the
index ensured, the broker reachable, the consumer group has assigned this worker its partitions (none,
when there are more workers than partitions, counts) and the loop not backing off; 503 with the
missing conditions otherwise. ``/metrics``: the Prometheus text format of the worker's own registry.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
            "twinflag_consumer_lag", "Records behind the end of the assigned partitions.", registry=r
        )

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
    """``/metrics``, ``/healthz``, ``/readyz`` on a daemon thread. A context manager; ``port`` is bound."""

    def __init__(self, host: str, port: int, metrics: Metrics, readiness: Readiness) -> None:
        handler = _handler(metrics, readiness)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="twinflag-status", daemon=True
        )

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close(timeout_s=2.0)

    def close(self, timeout_s: float) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout_s)
        self._server.server_close()


def _handler(metrics: Metrics, readiness: Readiness) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._reply(200, b"ok\n", "text/plain; charset=utf-8")
            elif path == "/readyz":
                missing = readiness.missing()
                body = ("ready\n" if not missing else "not ready: " + "; ".join(missing) + "\n").encode()
                self._reply(503 if missing else 200, body, "text/plain; charset=utf-8")
            else:
                self._reply(404, b"not found\n", "text/plain; charset=utf-8")

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Probes every few seconds are not worth a log line."""

    return Handler
