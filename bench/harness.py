"""What the reliability benches (``bench.crash``, ``bench.soak``) share: topics, a producer that keeps each
post's position, ``python -m worker run`` as a child process they can SIGKILL, a tail of the decisions
topic, and a full read of an output topic.

The launcher mirrors ``bench.throughput.worker_process`` rather than reusing it: these benches need a
separate log per life of the worker, their own flags topic, the integration tests' group timeouts
(Tansu joins take about half the session timeout) and a process they may kill at any moment. Topic
names, topic creation and reading topics back are ``devkit.kafka``'s, shared with the tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from devkit.broker import free_port
from devkit.kafka import Names, group_timeout_env

ROOT = Path(__file__).resolve().parent.parent

Position = tuple[int, int]
"""(partition, offset) of a record of the input topic."""


def stamp(post: dict[str, Any]) -> int:
    """The post's ``created_at`` in ms: its Kafka timestamp, so order keys follow the stream."""
    created = datetime.fromisoformat(str(post["created_at"]).replace("Z", "+00:00"))
    return int(created.timestamp() * 1000)


class Producer:
    """Sends posts keyed by id and remembers where each landed (to map positions back to documents)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from kafka import KafkaProducer

        self._producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        self._topic = topic
        self._pending: list[tuple[dict[str, Any], Any]] = []
        self.positions: dict[Position, dict[str, Any]] = {}

    def send(self, post: dict[str, Any]) -> None:
        future = self._producer.send(
            self._topic,
            key=str(post["id"]).encode(),
            value=json.dumps(post).encode(),
            timestamp_ms=stamp(post),
        )
        self._pending.append((post, future))

    def flush(self, timeout_s: float = 60.0) -> int:
        """Wait for every acknowledgement; returns the number of posts acknowledged so far."""
        self._producer.flush(timeout_s)
        for post, future in self._pending:
            meta = future.get(timeout_s)
            self.positions[(meta.partition, meta.offset)] = post
        self._pending = []
        return len(self.positions)

    def close(self) -> None:
        self.flush()
        self._producer.close(5)


def worker_env(
    bootstrap: str,
    model: Path,
    names: Names,
    index: Path,
    *,
    batch: int = 256,
    delivery: str = "at-least-once",
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """``TWINFLAG_*`` settings of one worker run (one index and one group per run)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWINFLAG_")}
    kafka = {
        "BOOTSTRAP_SERVERS": bootstrap,
        "GROUP_ID": names.group,
        "INPUT_TOPIC": names.input,
        "FLAGS_TOPIC": names.flags,
        "DECISIONS_TOPIC": names.decisions,
        "DLQ_TOPIC": names.dlq,
        "MAX_POLL_RECORDS": str(batch),
        "POLL_TIMEOUT_MS": "200",
        "REQUEST_TIMEOUT_MS": "10000",
        "CREATE_TOPICS": "false",
        "DELIVERY": delivery,
        **group_timeout_env(),
    }
    if delivery == "exactly-once":
        kafka["TRANSACTIONAL_ID"] = f"bench-{names.group}"  # the same across restarts: fences the dead
    env.update({f"TWINFLAG_KAFKA__{k}": v for k, v in kafka.items()})
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(ROOT),
            "TWINFLAG_INDEX__BACKEND": "embedded",
            "TWINFLAG_INDEX__PATH": str(index),
            "TWINFLAG_MODEL__PATH": str(model),
            "TWINFLAG_MODEL__DEVICE": "cpu",
            "TWINFLAG_METRICS_HOST": "127.0.0.1",
            "TWINFLAG_METRICS_PORT": str(free_port()),
            "TWINFLAG_SHUTDOWN_TIMEOUT_S": "4",
            "TWINFLAG_LOG_FORMAT": "json",
            **(extra or {}),
        }
    )
    return env


def start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """``python -m worker run``, its JSON log to ``log_path``."""
    with log_path.open("wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "worker", "run"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
        )


def stop_worker(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int:
    """SIGTERM (finish the batch, commit, exit 0); SIGKILL only if it does not exit in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)


def log_events(log_path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a worker log (anything else, e.g. a traceback on stderr, is skipped)."""
    rows: list[dict[str, Any]] = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


class Tail:
    """A background reader of the decisions topic: copies seen, distinct input positions decided."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._bootstrap, self._topic = bootstrap, topic
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.copies = 0
        self.decided: set[Position] = set()
        self.last_arrival = 0.0
        self._thread = threading.Thread(target=self._run, name=f"tail-{topic}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(
            self._topic,
            bootstrap_servers=self._bootstrap,
            auto_offset_reset="earliest",
            group_id=None,
            fetch_max_wait_ms=20,  # see new records within milliseconds (aimed kills race the commit)
        )
        try:
            while not self._stop.is_set():
                for records in consumer.poll(timeout_ms=100).values():
                    sources = [json.loads(r.value)["source"] for r in records]
                    with self._lock:
                        self.copies += len(records)
                        self.decided.update((int(s["partition"]), int(s["offset"])) for s in sources)
                        self.last_arrival = time.monotonic()
        finally:
            consumer.close()

    def snapshot(self) -> tuple[int, int]:
        """(copies read, distinct positions decided)."""
        with self._lock:
            return self.copies, len(self.decided)

    def decided_positions(self) -> set[Position]:
        with self._lock:
            return set(self.decided)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


def rel(path: Path) -> str:
    """A path as the command line would show it: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def dump(result: dict[str, Any], out: Path | None) -> None:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")


def argv_command(module: str, argv: Sequence[str]) -> str:
    """The command that reproduces this run, for the summary and the JSON."""
    import shlex

    return " ".join(["python", "-m", module, *(shlex.quote(a) for a in argv)])
