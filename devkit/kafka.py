"""Kafka helpers shared by the integration tests and the benches: names, topics, producing, reading back.

Everything here talks to a real broker (the Tansu broker of ``devkit.broker`` in tests and benches).
Tansu's ListOffsets answers are not usable (it reports 1 for a 350-record partition), so the ends of
topics come from the high watermarks of fetch responses and from the producer's own acknowledgements.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

GROUP_TIMEOUTS = {"max_poll_interval_ms": 10_000, "session_timeout_ms": 6_000}
"""Consumer-group timeouts for a worker on Tansu: a group join takes about half the session timeout, and
must finish within ``max_poll_interval_ms`` + 5 s."""


def group_timeout_env() -> dict[str, str]:
    """``GROUP_TIMEOUTS`` as the worker's ``TWINFLAG_KAFKA__*`` variable suffixes."""
    return {name.upper(): str(value) for name, value in GROUP_TIMEOUTS.items()}


@dataclass(frozen=True)
class Names:
    """One run's topics and group: runs side by side on one broker never see each other."""

    input: str
    flags: str
    dlq: str
    decisions: str
    group: str

    @classmethod
    def fresh(cls) -> Names:
        tag = uuid.uuid4().hex[:10]
        return cls(f"docs-{tag}", f"flags-{tag}", f"dlq-{tag}", f"decisions-{tag}", f"group-{tag}")

    @classmethod
    def for_run(cls, run: str, input_topic: str) -> Names:
        return cls(input_topic, f"flags-{run}", f"dlq-{run}", f"decisions-{run}", f"group-{run}")


@dataclass(frozen=True)
class Output:
    """One record read back from a topic."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes


def create_topics(bootstrap: str, names: Names, partitions: int = 2, *, with_input: bool = True) -> None:
    """The input topic with ``partitions``, the three outputs with one each (one order per topic)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    topics = [NewTopic(names.input, partitions, 1)] if with_input else []
    topics += [NewTopic(t, 1, 1) for t in (names.flags, names.dlq, names.decisions)]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics(topics)
    finally:
        admin.close()


def produce(bootstrap: str, topic: str, values: list[tuple[bytes | None, bytes | None]]) -> None:
    """Send (key, value) pairs in order, synchronously acknowledged. Timestamps increase by 1 ms."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_request_size=4_000_000)
    try:
        start = int(time.time() * 1000) - len(values)
        for i, (key, value) in enumerate(values):
            producer.send(topic, key=key, value=value, timestamp_ms=start + i)
        producer.flush(30)
    finally:
        producer.close(5)


def _read(
    bootstrap: str,
    topic: str,
    done: Callable[[list[Output], bool], bool],
    *,
    read_committed: bool,
    idle_s: float | None,
    timeout_s: float,
) -> list[Output]:
    """Every record of ``topic`` from the beginning, until ``done(records, at_end)``, nothing arrives for
    ``idle_s`` (None: wait until ``timeout_s``), or ``timeout_s`` passes (``at_end``: every partition's
    position has reached its high watermark)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed" if read_committed else "read_uncommitted",
        max_poll_records=2000,
    )
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or set())]
        consumer.assign(parts)
        consumer.seek_to_beginning()
        out: list[Output] = []
        deadline, last = time.monotonic() + timeout_s, time.monotonic()
        while time.monotonic() < deadline and (idle_s is None or time.monotonic() - last < idle_s):
            for records in consumer.poll(timeout_ms=200).values():
                out += [Output(r.partition, r.offset, r.key, r.value) for r in records]
                last = time.monotonic()
            ends = [consumer.highwater(tp) for tp in parts]
            at_end = all(
                end is not None and consumer.position(tp) >= end for tp, end in zip(parts, ends, strict=True)
            )
            if done(out, at_end):
                break
        return out
    finally:
        consumer.close()


def read_topic(
    bootstrap: str,
    topic: str,
    *,
    expect: int | None = None,
    idle_s: float = 1.5,
    timeout_s: float = 30.0,
    read_committed: bool = False,
) -> list[tuple[bytes | None, bytes]]:
    """Every (key, value) of a topic from the beginning: until ``expect`` records, or idle for ``idle_s``
    (a worker may still be writing: the high watermark is not the end)."""

    def done(out: list[Output], _at_end: bool) -> bool:
        return expect is not None and len(out) >= expect

    idle = idle_s if expect is None else None  # waiting for records a worker has yet to write
    found = _read(bootstrap, topic, done, read_committed=read_committed, idle_s=idle, timeout_s=timeout_s)
    return [(o.key, o.value) for o in found]


def read_all(
    bootstrap: str, topic: str, *, read_committed: bool = False, idle_s: float = 3.0, timeout_s: float = 180.0
) -> list[Output]:
    """Every record of a finished topic: until each partition's position reaches its high watermark (from
    the fetches) or nothing arrives for ``idle_s``."""
    return _read(
        bootstrap,
        topic,
        lambda _out, at_end: at_end,
        read_committed=read_committed,
        idle_s=idle_s,
        timeout_s=timeout_s,
    )


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets on ``topic``, by partition (absent: nothing committed)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets({group: None}).get(group, {})
    finally:
        admin.close()
    return {
        tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0
    }
