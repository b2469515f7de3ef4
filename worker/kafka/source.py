"""Kafka → batches of ``Record``s; commit what was processed. Auto-commit is off: nothing is committed
that the loop has not finished (published, flushed, indexed).

``KafkaSource`` is the loop's ``worker.core.ports.RecordSource``: it wraps a ``kafka.KafkaConsumer``
and translates its failures into ``worker.core.errors`` (an outage is ``BrokerUnavailableError``, a
group that moved on is ``RebalancedError``), so the loop never handles a kafka-python exception.

Group membership and slow batches. kafka-python heartbeats from a background thread, so a long batch
does not end the *session*; but a gap between two polls longer than ``max_poll_interval_ms`` makes the
consumer leave the group, its commit is refused, and the batch is redone by whoever gets the partition.
To keep that from turning into a loop, ``KafkaSource`` measures the gap between polls and halves its
batch size whenever a batch used more than half of ``max_poll_interval_ms`` (or a commit was refused),
then grows it back one step per quick batch. Rebalances themselves need no care on revoke: the loop
commits after each finished batch and before the next poll (where rebalance callbacks run), so at
revoke time nothing half-done exists, and a new owner starts from the last commit.

Partitions are merged in order-key order by ``worker.kafka.ordering.OrderedMerge``; this module feeds it
and asks the consumer, without a request, which partitions are not yet read to their end.
"""

from __future__ import annotations

import math
import time
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError

from worker.core.errors import BrokerUnavailableError, RebalancedError
from worker.core.logs import get_logger
from worker.core.records import Offsets, Partition, Record, next_offsets
from worker.kafka.config import REFUSED_COMMIT, to_kafka
from worker.kafka.ordering import OrderedMerge

log = get_logger("consume")

CREATE_TIME = 0  # a record's timestamp type: 0 set by the producer, 1 by the broker (LogAppendTime)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # kafka-python is untyped
    def __init__(self, source: KafkaSource) -> None:
        self._source = source

    def on_partitions_revoked(self, revoked: Any) -> None:
        self._source.joined = False
        self._source.drop_buffers({(tp.topic, tp.partition) for tp in revoked})
        log.info("partitions_revoked", partitions=sorted(f"{tp.topic}/{tp.partition}" for tp in revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self._source.joined = True  # an empty assignment too: more workers than partitions is normal
        log.info("partitions_assigned", partitions=sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))


class KafkaSource:
    """A subscribed ``KafkaConsumer`` (built with ``enable_auto_commit=False``) as a ``RecordSource``.

    Batches are merged across partitions in order-key order (``worker.kafka.ordering``). A partition's
    first fetch can take over a second after a join (seen on Tansu), so the order wait is separate from
    ``poll_timeout_s``. While one partition stalls, buffers grow by what the others deliver in
    ``order_wait_s`` at most. (No ``pause()``: kafka-python 3.0.12 can strand a partially drained fetch
    of a paused partition and never fetch that partition again; seen against Tansu.)
    """

    def __init__(
        self,
        consumer: KafkaConsumer,
        topic: str,
        *,
        max_records: int,
        poll_timeout_s: float,
        max_poll_interval_s: float,
        request_timeout_s: float,
        order_wait_s: float = 5.0,
        probe_every_s: float = 5.0,
    ) -> None:
        if consumer.config["enable_auto_commit"]:
            raise ValueError("KafkaSource needs a consumer with enable_auto_commit=False")
        self._consumer = consumer
        self._max_records = max_records
        self._limit = max_records
        self._poll_timeout_s = poll_timeout_s
        self._order_wait_s = order_wait_s
        self._merge = OrderedMerge(order_wait_s)
        self._max_poll_interval_s = max_poll_interval_s
        self._request_timeout_ms = int(request_timeout_s * 1000)
        self._probe_every_s = probe_every_s
        self._last_poll: float | None = None
        self._last_size = 0
        self._last_contact = time.monotonic()
        self._next: dict[Partition, int] = {}  # per partition: the offset after the last record returned
        self._logged_stall: list[str] = []
        self._timestamp_types: dict[Partition, int] = {}  # 0: CreateTime, 1: LogAppendTime (per partition)
        self.joined = False  # the group has handed this member its partitions (none is an answer too)
        consumer.subscribe([topic], listener=_Listener(self))

    @property
    def batch_limit(self) -> int:
        """The current most records per batch (adapts to slow batches)."""
        return self._limit

    def poll(self, max_records: int | None = None) -> list[Record]:
        now = time.monotonic()
        if self._last_poll is not None and self._last_size:  # the gap was a batch's processing time
            self._adapt(now - self._last_poll)
        want = self._limit if max_records is None else max(1, min(self._limit, max_records))
        deadline, expired = now + self._poll_timeout_s, False
        while True:
            remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
            bound = self._bound()
            if bound < math.inf and (expired or self._merge.overdue(time.monotonic())):  # waited enough
                if not expired:
                    self._log_unordered()
                bound, expired = math.inf, True
            if remaining_ms == 0 or self._merge.ready(bound, want) >= want:
                break
            self._fetch(remaining_ms, want)
        records = self._merge.take(want, bound)
        self._last_poll, self._last_size = time.monotonic(), len(records)
        if records:
            self._last_contact = self._last_poll
            self._next.update(next_offsets(records))
        elif self._last_poll - self._last_contact > self._probe_every_s:
            self._probe()
        return records

    def _fetch(self, timeout_ms: int, want: int) -> None:
        try:
            polled = self._consumer.poll(timeout_ms=timeout_ms, max_records=want)
        except KafkaError as error:
            raise BrokerUnavailableError(f"poll failed: {type(error).__name__}") from error
        for tp, batch in polled.items():
            if batch:
                self._note_timestamp_type((tp.topic, tp.partition), getattr(batch[0], "timestamp_type", None))
            self._merge.extend(
                (tp.topic, tp.partition),
                (Record(m.topic, m.partition, m.offset, m.timestamp, m.key, m.value) for m in batch),
            )
            self._last_contact = time.monotonic()

    def _note_timestamp_type(self, partition: Partition, kind: int | None) -> None:
        """Say once per partition when its timestamps are the producers' (``CreateTime``): "earlier" is
        by record timestamp, so a producer could backdate a repost to before its original and never be
        flagged. ``message.timestamp.type=LogAppendTime`` on the topic makes the broker stamp records
        as they arrive (README, "Where the limits are")."""
        if kind is None or self._timestamp_types.get(partition) == kind:
            return
        self._timestamp_types[partition] = kind
        if kind == CREATE_TIME:
            topic, number = partition
            log.warning(
                "producer_timestamps",
                partition=f"{topic}/{number}",
                advice="message.timestamp.type=LogAppendTime on the topic: a producer can backdate a post",
            )

    def _bound(self) -> float:
        """The merge's bound over the partitions not read to their end, known without a request."""
        behind: list[Partition] = []
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)  # from the last fetch response: no request
            position = self._consumer.position(tp, timeout_ms=0)  # known after the first fetch: no request
            if highwater is None or position is None or highwater > position:
                behind.append((tp.topic, tp.partition))
        bound = self._merge.bound(behind, time.monotonic())
        if not self._merge.blocked:
            self._logged_stall = []
        return bound

    def _log_unordered(self) -> None:
        """The wait ran out: say which partitions had nothing to show, once per stall, so an operator
        can look (a partition that stays silent would otherwise log at every poll)."""
        blocked = sorted(f"{topic}/{partition}" for topic, partition in self._merge.blocked)
        if blocked != self._logged_stall:
            log.warning("order_wait_expired", seconds=self._order_wait_s, partitions=blocked)
        self._logged_stall = blocked

    def drop_buffers(self, partitions: set[Partition]) -> None:
        """Forget what was fetched but not returned (rebalance: the new owner starts at the commit)."""
        self._merge.drop(partitions)
        for partition in partitions:
            self._next.pop(partition, None)

    def _adapt(self, gap_s: float) -> None:
        if gap_s > self._max_poll_interval_s / 2 and self._limit > 1:
            self._limit = max(1, self._limit // 2)
            log.warning("slow_batch", seconds=round(gap_s, 3), batch_limit=self._limit)
        elif gap_s < self._max_poll_interval_s / 8 and self._limit < self._max_records:
            self._limit = min(self._max_records, self._limit * 2)

    def _probe(self) -> None:
        """An idle poll says nothing about the broker: ask it something cheap, with a timeout."""
        assigned = list(self._consumer.assignment())
        try:
            if assigned:
                self._consumer.end_offsets(assigned, timeout_ms=self._request_timeout_ms)
            else:
                self._consumer.topics()
        except KafkaError as error:
            raise BrokerUnavailableError(f"broker unreachable while idle: {type(error).__name__}") from error
        self._last_contact = time.monotonic()

    def commit(self, offsets: Offsets) -> None:
        if not offsets:
            return
        try:
            self._consumer.commit(to_kafka(offsets), timeout_ms=self._request_timeout_ms)
        except REFUSED_COMMIT as error:
            self._limit = max(1, self._limit // 2)
            raise RebalancedError(
                f"commit refused ({type(error).__name__}); batch limit now {self._limit}"
            ) from error
        except KafkaError as error:
            raise BrokerUnavailableError(f"commit failed: {type(error).__name__}") from error
        self._last_contact = time.monotonic()

    def rewind(self, offsets: Offsets) -> None:
        """Back to the batch's first offsets; buffered records are dropped and fetched again."""
        self._last_contact = float("-inf")  # after a failure, an empty poll proves nothing: probe first
        targets = self._merge.clear()
        targets.update(offsets)
        assigned = self._consumer.assignment()
        for (topic, partition), offset in targets.items():
            tp = TopicPartition(topic, partition)
            if tp in assigned:  # a partition revoked meanwhile restarts from its commit elsewhere
                self._consumer.seek(tp, offset)
                if (topic, partition) in offsets:
                    self._next[(topic, partition)] = offset

    def group_metadata(self) -> object:
        return self._consumer.group_metadata()

    def lag(self) -> int | None:
        """From the high watermarks of the last fetches, without a request (Tansu's ListOffsets is off)."""
        total, known = 0, False
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            position = self._next.get((tp.topic, tp.partition))
            if highwater is not None and position is not None:
                total, known = total + max(0, highwater - position), True
        return total if known else None

    def close(self, timeout_s: float) -> None:
        self._consumer.close(autocommit=False, timeout_ms=int(timeout_s * 1000))
