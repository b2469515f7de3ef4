"""The verdicts topic, read whole by every worker, and the producer of what the feedback derives.

Every worker needs every verdict (any post may meet any rejected pair of its tenant), so this consumer
joins no group: it is assigned all the topic's partitions, starts at their beginning and commits
nothing. A restart reads the compacted topic again, which is how the pair memory and the learned
points survive one. ``read_to_end`` waits for that catch-up before the first batch (bounded).
"""

from __future__ import annotations

import time
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from worker.core.errors import BrokerUnavailableError
from worker.core.logs import get_logger
from worker.core.records import Record

log = get_logger("verdicts")


class VerdictReader:
    """All partitions of one topic from the beginning, returned in record-time order."""

    def __init__(self, options: dict[str, Any], topic: str, max_records: int = 1000) -> None:
        self._consumer = KafkaConsumer(**{**options, "group_id": None, "enable_auto_commit": False})
        self._topic, self._max_records = topic, max_records
        partitions = self._consumer.partitions_for_topic(topic) or set()
        if not partitions:
            self._consumer.close()
            raise BrokerUnavailableError(f"topic {topic} has no partitions (does it exist?)")
        self._partitions = [TopicPartition(topic, p) for p in sorted(partitions)]
        self._consumer.assign(self._partitions)
        self._consumer.seek_to_beginning(*self._partitions)

    def read(self, timeout_ms: int = 0) -> list[Record]:
        """What arrived since the last read (nothing waits longer than ``timeout_ms``)."""
        try:
            polled = self._consumer.poll(timeout_ms=timeout_ms, max_records=self._max_records)
        except KafkaError as error:
            raise BrokerUnavailableError(f"verdicts poll failed: {type(error).__name__}") from error
        records = [
            Record(m.topic, m.partition, m.offset, m.timestamp, m.key, m.value)
            for batch in polled.values()
            for m in batch
        ]
        return sorted(records, key=lambda r: (r.timestamp_ms, r.partition, r.offset))

    def read_to_end(self, limit_s: float) -> list[Record]:
        """Everything in the topic now: until the positions reach the ends the broker reports and two
        reads in a row bring nothing (some brokers under-report ends), or ``limit_s`` passes."""
        deadline = time.monotonic() + limit_s
        try:
            ends = self._consumer.end_offsets(self._partitions)
        except KafkaError as error:
            raise BrokerUnavailableError(f"verdicts end offsets: {type(error).__name__}") from error
        records: list[Record] = []
        quiet = 0
        while time.monotonic() < deadline and quiet < 2:
            batch = self.read(500)
            records += batch
            at_end = all(self._consumer.position(tp) >= ends.get(tp, 0) for tp in self._partitions)
            quiet = quiet + 1 if not batch and at_end else 0
        if quiet < 2:
            log.warning("verdicts_catch_up_incomplete", topic=self._topic, read=len(records), limit_s=limit_s)
        return sorted(records, key=lambda r: (r.timestamp_ms, r.partition, r.offset))

    def close(self) -> None:
        self._consumer.close()


class EventProducer:
    """Sends the feedback's own messages (dead letters of bad verdicts, learned points): at least once,
    outside the documents' transactions; a restart derives them again, byte for byte."""

    def __init__(self, options: dict[str, Any]) -> None:
        self._producer = KafkaProducer(**options)

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        try:
            self._producer.send(topic, key=key, value=value)
        except KafkaError as error:
            raise BrokerUnavailableError(f"feedback send failed: {type(error).__name__}") from error

    def flush(self, timeout_s: float) -> None:
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as error:
            raise BrokerUnavailableError(f"feedback flush failed: {type(error).__name__}") from error

    def close(self, timeout_s: float) -> None:
        self._producer.close(timeout=timeout_s)


def read_positions(
    options: dict[str, Any], topic: str, positions: list[tuple[int, int]], timeout_s: float = 10.0
) -> dict[tuple[int, int], bytes | None]:
    """The values at (partition, offset) of ``topic``; None where the topic no longer holds the offset
    (retention) or it cannot be read within ``timeout_s``."""
    consumer = KafkaConsumer(
        **{**options, "group_id": None, "enable_auto_commit": False, "auto_offset_reset": "earliest"}
    )
    found: dict[tuple[int, int], bytes | None] = {}
    try:
        for partition, offset in sorted(set(positions)):
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            consumer.seek(tp, offset)
            deadline, value = time.monotonic() + timeout_s, None
            while time.monotonic() < deadline:
                batch = consumer.poll(timeout_ms=500, max_records=1).get(tp, [])
                if batch:
                    value = batch[0].value if batch[0].offset == offset else None  # moved on: deleted
                    break
            found[(partition, offset)] = value
    except KafkaError as error:
        raise BrokerUnavailableError(f"reading {topic}: {type(error).__name__}") from error
    finally:
        consumer.close()
    return found
