"""The cross-partition merge: fetched records leave in order-key order. Pure: no client, no clock.

Kafka orders records within a partition only, and a backlog is handed out partition by partition. If
records were decided in fetch order, a repost could be decided before the original it repeats (in
another partition, earlier by timestamp) had been seen, and two runs over the same records would
disagree. So fetched records wait in per-partition buffers, and a record is handed out only when no
partition that has not been read to its end could still hold an earlier one: its buffer reaches past
that timestamp. A partition behind its end with nothing buffered blocks everything; after
``order_wait_s`` of that, the caller stops waiting for it (``overdue``). A live stream, where every
partition is read to its end, never waits. Buffered records are never committed (only what a batch
returned is) and are fetched again after a rewind or a rebalance.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable

from worker.core.records import Partition, Record


class OrderedMerge:
    """Per-partition buffers of fetched records, merged smallest (timestamp, partition, offset) first."""

    def __init__(self, order_wait_s: float) -> None:
        self._order_wait_s = order_wait_s
        self._buffers: dict[Partition, collections.deque[Record]] = {}
        self._blocked_since: dict[Partition, float] = {}  # behind, nothing buffered: holds the rest back

    def extend(self, partition: Partition, records: Iterable[Record]) -> None:
        self._buffers.setdefault(partition, collections.deque()).extend(records)

    def bound(self, behind: Iterable[Partition], now: float) -> float:
        """Records up to this timestamp can be put in order, given the partitions not read to their end:
        each bounds it by the last timestamp buffered from it (nothing buffered from it: no record is
        safe yet, and it counts as blocking from ``now``)."""
        bound, blocked = math.inf, set()
        for partition in behind:
            buffer = self._buffers.get(partition)
            if buffer:
                bound = min(bound, buffer[-1].timestamp_ms)
            else:
                bound = -math.inf
                blocked.add(partition)
        self._blocked_since = {p: self._blocked_since.get(p, now) for p in blocked}
        return bound

    @property
    def blocked(self) -> list[Partition]:
        """Partitions behind their end with nothing buffered, as of the last ``bound``."""
        return sorted(self._blocked_since)

    def overdue(self, now: float) -> bool:
        """A partition has held the others back for ``order_wait_s`` without a record arriving."""
        return any(now - since >= self._order_wait_s for since in self._blocked_since.values())

    def ready(self, bound: float, want: int) -> int:
        """How many buffered records are at or below ``bound`` (counting stops at ``want``)."""
        ready = 0
        for buffer in self._buffers.values():
            for record in buffer:
                if record.timestamp_ms > bound or ready >= want:
                    break
                ready += 1
        return ready

    def take(self, want: int, bound: float) -> list[Record]:
        """Up to ``want`` buffered records at or below ``bound``, smallest order key first."""
        records: list[Record] = []
        while len(records) < want:
            heads = [b for b in self._buffers.values() if b and b[0].timestamp_ms <= bound]
            if not heads:
                break
            first = min(heads, key=lambda b: (b[0].timestamp_ms, b[0].partition, b[0].offset))
            records.append(first.popleft())
        return records

    def drop(self, partitions: Iterable[Partition]) -> None:
        """Forget what was fetched from these partitions (a rebalance took them)."""
        for partition in partitions:
            self._buffers.pop(partition, None)

    def clear(self) -> dict[Partition, int]:
        """Forget everything buffered; returns where each non-empty buffer started (to seek back to)."""
        starts = {p: buffer[0].offset for p, buffer in self._buffers.items() if buffer}
        self._buffers.clear()
        return starts
