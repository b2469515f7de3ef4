"""Consumed records, their order keys, and the offsets a batch commits. Transport-neutral and pure.

"Earlier" means a smaller order key ``(ts, pos)``: the record timestamp in ms, then
``partition << 40 | offset`` (DEVELOPERS.md, "Order keys"). Every room agrees on this one definition:
the batch step ranks and filters by it, the index stores it with each point, the Kafka source merges
partitions by it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

OrderKey = tuple[int, int]
"""``(timestamp_ms, partition << 40 | offset)``; for ``scan`` ``(0, 1 << 40 | line)``, for a bulk-loaded
corpus ``(0, line)`` (always earlier than any stream document)."""

Partition = tuple[str, int]
"""(topic, partition); ``kafka.TopicPartition`` is a namedtuple of the same shape."""

Offsets = Mapping[Partition, int]

MAX_TIMESTAMP_MS = 2**53 - 1  # the index compares order keys through f64


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed record, transport-neutral (Kafka or a line of a JSONL file)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


def order_key(record: Record) -> OrderKey:
    """What "earlier" means: record timestamp, then partition and offset (DEVELOPERS.md).

    Timestamps outside ``[0, 2**53)`` (Kafka's -1 for "none", garbage) are clamped into it: such a
    record still gets a decision instead of stopping the worker on the index's range check.
    """
    timestamp = min(max(record.timestamp_ms, 0), MAX_TIMESTAMP_MS)
    return (timestamp, record.partition << 40 | record.offset)


def next_offsets(records: Sequence[Record]) -> dict[Partition, int]:
    """The offsets to commit after ``records``: per partition, the last offset + 1."""
    offsets: dict[Partition, int] = {}
    for record in records:
        key = (record.topic, record.partition)
        offsets[key] = max(offsets.get(key, 0), record.offset + 1)
    return offsets


def first_offsets(records: Sequence[Record]) -> dict[Partition, int]:
    """Where ``records`` started, per partition: where to rewind to if the batch is not finished."""
    offsets: dict[Partition, int] = {}
    for record in records:
        key = (record.topic, record.partition)
        offsets[key] = min(offsets.get(key, record.offset), record.offset)
    return offsets
