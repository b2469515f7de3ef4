"""The status endpoint: /healthz, /readyz with its reasons, /metrics in Prometheus text format."""

from __future__ import annotations

import contextlib
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.fakes import HashEncoder, MemoryIndex, doc_record, raw_record
from worker.core.step import StepConfig, run_batch
from worker.service.status import Metrics, Readiness, StatusServer


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_health_readiness_and_metrics() -> None:
    metrics, readiness = Metrics(), Readiness()
    with StatusServer("127.0.0.1", 0, metrics, readiness) as server:
        assert get(server.port, "/healthz") == (200, "ok\n")
        status, body = get(server.port, "/readyz")
        assert status == 503
        assert "model not loaded" in body
        assert "broker not connected" in body
        assert "no partitions assigned yet" in body

        readiness.model_loaded = readiness.index_ready = readiness.broker_connected = True
        assert get(server.port, "/readyz")[0] == 503
        readiness.group_joined = True
        assert get(server.port, "/readyz") == (200, "ready\n")
        readiness.backing_off = True
        assert get(server.port, "/readyz")[0] == 503

        batch = [
            doc_record("a", "a post", 0),
            doc_record("b", "a post", 1),  # an exact repost
            raw_record(b"{not json", 2),
            raw_record(None, 3, key=b"gone"),  # a tombstone
        ]
        result = run_batch(batch, HashEncoder(), MemoryIndex(), StepConfig(0.8, "hash-trigram-v1"))
        metrics.observe(result, 0.02)
        metrics.lag.set(7)
        status, text = get(server.port, "/metrics")
        assert status == 200
        assert "twinflag_records_total 4.0" in text
        assert 'twinflag_flags_total{stage="exact"} 1.0' in text
        assert 'twinflag_dead_letters_total{reason="invalid_json"} 1.0' in text
        assert "twinflag_consumer_lag 7.0" in text
        assert "twinflag_batch_seconds_bucket" in text
        assert get(server.port, "/nope")[0] == 404


def open_fds() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


def test_idle_and_slow_clients_cost_bounded_descriptors_and_health_still_answers() -> None:
    """1,000 idle sockets took every descriptor of the worker (a thread each, no timeout): /healthz
    timed out and the index's next flush failed with "Too many open files"."""
    metrics, readiness = Metrics(), Readiness()
    before = open_fds()
    with StatusServer("127.0.0.1", 0, metrics, readiness, max_connections=20, timeout_s=0.5) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(150)]
        slow = socket.create_connection(("127.0.0.1", server.port))
        slow.sendall(b"GET /healthz HT")  # and never the rest
        time.sleep(0.2)
        assert server.open_connections <= 20
        assert open_fds() - before <= 150 + 1 + 20 + 8  # our client sockets, 20 held, a few of the loop's
        started = time.monotonic()
        deadline = started + 5
        while True:  # the slots free up as the idle ones time out
            try:
                assert get(server.port, "/healthz") == (200, "ok\n")
                break
            except (OSError, urllib.error.URLError):
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert time.monotonic() - started < 1.5
        for sock in [*idle, slow]:
            sock.settimeout(2)
            with contextlib.suppress(ConnectionResetError):  # closed by the server, abruptly
                assert sock.recv(10) == b""  # closed by the server
            sock.close()
    assert open_fds() <= before + 1
