"""The Kafka adapters the loop drives, against fake kafka-python clients: failed sends are noticed,
transactions are framed and bounded, refused commits and slow batches shrink the batch."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import structlog
from kafka import TopicPartition
from kafka.errors import (
    CommitFailedError,
    KafkaTimeoutError,
    NotLeaderForPartitionError,
    TopicAuthorizationFailedError,
)
from kafka.structs import OffsetAndMetadata

from worker.core.errors import BrokerUnavailableError, FatalError, RebalancedError
from worker.core.records import Record, first_offsets, next_offsets
from worker.kafka.publish import KafkaPublisher, TransactionalPublisher
from worker.kafka.source import KafkaSource


class Future:
    def __init__(self, error: Exception | None = None) -> None:
        self.exception = error

    def failed(self) -> bool:
        return self.exception is not None


class FakeProducer:
    def __init__(self, fail_with: Exception | None = None, flush_error: Exception | None = None) -> None:
        self.calls: list[str] = []
        self.fail_with, self.flush_error = fail_with, flush_error
        self.hang: threading.Event | None = None
        self.abort_error: Exception | None = None

    def send(self, topic: str, value: bytes, key: bytes | None) -> Future:
        self.calls.append(f"send:{topic}")
        return Future(self.fail_with)

    def flush(self, timeout: float) -> None:
        self.calls.append("flush")
        if self.flush_error:
            raise self.flush_error

    def init_transactions(self) -> None:
        self.calls.append("init")

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def send_offsets_to_transaction(self, offsets: dict[Any, Any], metadata: object) -> None:
        self.calls.append(
            f"offsets:{sorted((tp.partition, o.offset) for tp, o in offsets.items())}:{metadata}"
        )

    def commit_transaction(self) -> None:
        if self.hang is not None:
            self.hang.wait(5)
        self.calls.append("commit")

    def abort_transaction(self) -> None:
        self.calls.append("abort")
        if self.abort_error:
            raise self.abort_error

    def close(self, timeout: float) -> None:
        self.calls.append("close")


class Source:
    def __init__(self) -> None:
        self.commits: list[dict[tuple[str, int], int]] = []

    def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        self.commits.append(dict(offsets))

    def group_metadata(self) -> str:
        return "group-md"


def published(producer: FakeProducer) -> KafkaPublisher:
    publisher = KafkaPublisher(producer)
    publisher.begin()
    publisher.send("flags", b"k", b"v")
    return publisher


def test_at_least_once_flush_raises_when_a_send_failed() -> None:
    published(FakeProducer()).flush(1.0)
    retriable = published(FakeProducer(fail_with=NotLeaderForPartitionError()))
    with pytest.raises(BrokerUnavailableError):
        retriable.flush(1.0)
    fatal = published(FakeProducer(fail_with=TopicAuthorizationFailedError()))
    with pytest.raises(FatalError, match="TopicAuthorizationFailedError"):
        fatal.flush(1.0)
    timing_out = published(FakeProducer(flush_error=KafkaTimeoutError()))
    with pytest.raises(BrokerUnavailableError):
        timing_out.flush(1.0)


def test_at_least_once_commits_through_the_consumer() -> None:
    source = Source()
    KafkaPublisher(FakeProducer()).commit({("documents", 0): 8}, source)  # type: ignore[arg-type]
    assert source.commits == [{("documents", 0): 8}]


def test_exactly_once_frames_each_batch_in_a_transaction() -> None:
    producers: list[FakeProducer] = []

    def make() -> FakeProducer:
        producers.append(FakeProducer())
        return producers[-1]

    publisher, source = TransactionalPublisher(make, timeout_s=1.0), Source()
    for batch in range(2):
        publisher.begin()
        publisher.send("flags", b"k", b"v")
        publisher.flush(1.0)
        publisher.commit({("documents", 0): 10 * (batch + 1)}, source)  # type: ignore[arg-type]
    assert len(producers) == 1
    assert producers[0].calls == [
        "init", "begin", "send:flags", "flush", "offsets:[(0, 10)]:group-md", "commit",
        "begin", "send:flags", "flush", "offsets:[(0, 20)]:group-md", "commit",
    ]  # fmt: skip
    assert source.commits == []  # offsets went inside the transaction, not through the consumer


def test_exactly_once_abort_and_a_fresh_producer_after_a_failed_abort() -> None:
    producers: list[FakeProducer] = []

    def make() -> FakeProducer:
        producers.append(FakeProducer())
        producers[-1].abort_error = KafkaTimeoutError() if len(producers) == 1 else None
        return producers[-1]

    publisher = TransactionalPublisher(make, timeout_s=1.0)
    publisher.begin()
    publisher.abort()  # fails: state unknown, so the producer is dropped
    assert producers[0].calls[-2:] == ["abort", "close"]
    publisher.begin()
    assert len(producers) == 2
    assert producers[1].calls == ["init", "begin"]
    publisher.abort()
    assert producers[1].calls[-1] == "abort"


def test_exactly_once_commit_that_hangs_is_an_outage_not_a_hang() -> None:
    producer = FakeProducer()
    producer.hang = threading.Event()
    publisher = TransactionalPublisher(lambda: producer, timeout_s=0.2)
    publisher.begin()
    with pytest.raises(BrokerUnavailableError, match="commit_transaction"):
        publisher.commit({("documents", 0): 1}, Source())  # type: ignore[arg-type]
    producer.hang.set()


class FakeConsumer:
    """Partitions as lists of record timestamps; each ``poll`` hands out the next scripted fetch."""

    def __init__(self, logs: dict[int, list[int]], fetches: list[tuple[int, int]]) -> None:
        self.config = {"enable_auto_commit": False}
        self.logs, self.fetches = logs, fetches
        self.position_of = dict.fromkeys(logs, 0)
        self.assigned = {TopicPartition("documents", p) for p in logs}
        self.paused_set: set[TopicPartition] = set()
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.polls: list[int] = []
        self.refuse = False
        self.stamped_by_broker: set[int] = set()  # partitions whose records carry LogAppendTime

    def subscribe(self, topics: list[str], listener: object) -> None:
        pass

    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        self.polls.append(max_records)
        if not self.fetches:
            return {}
        partition, count = self.fetches.pop(0)
        if count > max_records:  # like kafka-python: the rest of the fetch comes with the next poll
            self.fetches.insert(0, (partition, count - max_records))
        start = self.position_of[partition]
        stamps = self.logs[partition][start : start + min(count, max_records)]
        self.position_of[partition] += len(stamps)
        records = [_Msg(partition, start + i, ts) for i, ts in enumerate(stamps)]
        for record in records:
            record.timestamp_type = int(partition in self.stamped_by_broker)
        return {TopicPartition("documents", partition): records} if records else {}

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata], timeout_ms: int) -> None:
        if self.refuse:
            raise CommitFailedError("generation moved on")

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))
        self.position_of[tp.partition] = offset

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.logs[tp.partition])

    def position(self, tp: TopicPartition, timeout_ms: int) -> int:
        return self.position_of[tp.partition]

    def pause(self, *tps: TopicPartition) -> None:
        self.paused_set |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused_set -= set(tps)

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_set)


class _Msg:
    def __init__(self, partition: int, offset: int, timestamp: int) -> None:
        self.topic, self.partition, self.offset, self.timestamp = "documents", partition, offset, timestamp
        self.key, self.value = b"k", b"{}"
        self.timestamp_type = 0  # CreateTime, as most topics are


def source_over(
    consumer: FakeConsumer, interval_s: float = 1.0, max_records: int = 8, order_wait_s: float = 5.0
) -> KafkaSource:
    return KafkaSource(
        consumer,  # type: ignore[arg-type]
        "documents",
        max_records=max_records,
        poll_timeout_s=0.05,
        max_poll_interval_s=interval_s,
        request_timeout_s=1.0,
        order_wait_s=order_wait_s,
    )


def test_poll_fills_a_batch_from_several_fetches_up_to_the_limit() -> None:
    consumer = FakeConsumer({0: list(range(20))}, [(0, 3), (0, 3), (0, 3)])
    source = source_over(consumer)
    records = source.poll()
    assert [r.offset for r in records] == list(range(8))
    assert source.lag() == 20 - 8


def test_a_backlog_is_merged_across_partitions_in_timestamp_order() -> None:
    # partition 0 is fetched first and holds the later posts; partition 1 holds the earlier ones
    consumer = FakeConsumer({0: [20, 40, 60, 80], 1: [10, 30, 50, 70]}, [(0, 4), (1, 4)])
    source = source_over(consumer, max_records=4)
    first = source.poll()
    assert [(r.partition, r.timestamp_ms) for r in first] == [(1, 10), (0, 20), (1, 30), (0, 40)]
    second = source.poll()
    assert [r.timestamp_ms for r in second] == [50, 60, 70, 80]
    assert next_offsets(first) == {("documents", 0): 2, ("documents", 1): 2}  # buffered ones not committed


def test_records_wait_past_the_poll_timeout_for_a_partition_not_yet_fetched() -> None:
    # a partition's first fetch can come seconds after a join: its earlier posts must still go first
    consumer = FakeConsumer({0: [20, 40], 1: [10, 30]}, [(0, 2)])
    source = source_over(consumer, max_records=4)
    assert source.poll() == []  # poll_timeout_s (0.05 s) is up, but partition 1 may hold earlier posts
    assert source.poll() == []
    consumer.fetches = [(1, 2)]
    assert [(r.partition, r.timestamp_ms) for r in source.poll()] == [(1, 10), (0, 20), (1, 30), (0, 40)]


def test_a_partition_that_shows_nothing_for_order_wait_no_longer_holds_the_others() -> None:
    consumer = FakeConsumer({0: [20, 40], 1: [10, 30]}, [(0, 2)])
    source = source_over(consumer, max_records=4, order_wait_s=0.3)
    started = time.monotonic()
    records: list[Record] = []
    with structlog.testing.capture_logs() as events:
        while not records and time.monotonic() - started < 5:
            records = source.poll()
        assert time.monotonic() - started >= 0.3
        assert [(r.partition, r.timestamp_ms) for r in records] == [(0, 20), (0, 40)]
        source.poll(), source.poll()  # partition 1 stays silent: one warning for the whole stall
    stalls = [e for e in events if e["event"] == "order_wait_expired"]
    assert [e["partitions"] for e in stalls] == [["documents/1"]]


def test_a_buffered_backlog_waiting_its_turn_is_not_a_stalled_partition() -> None:
    # partition 0 arrives whole at once; partition 1 trickles in, a little per poll, slower than
    # order_wait_s overall: every batch must still come out in timestamp order
    consumer = FakeConsumer({0: [2, 4, 6, 8, 10, 12], 1: [1, 3, 5, 7, 9, 11]}, [(0, 6)] + [(1, 1)] * 6)
    source = source_over(consumer, max_records=2, order_wait_s=0.1)
    stamps: list[int] = []
    for _ in range(6):
        stamps += [r.timestamp_ms for r in source.poll()]
        time.sleep(0.06)  # processing: the backlog of partition 0 waits longer than order_wait_s
    assert stamps == list(range(1, 13))


def test_refused_commit_is_a_rebalance_and_halves_the_batch() -> None:
    consumer = FakeConsumer({0: list(range(8))}, [(0, 8)])
    source = source_over(consumer)
    source.poll()
    consumer.refuse = True
    with pytest.raises(RebalancedError):
        source.commit({("documents", 0): 8})
    assert source.batch_limit == 4


def test_a_batch_over_half_the_poll_interval_halves_the_next_one_and_quick_ones_grow_it_back() -> None:
    consumer = FakeConsumer({0: list(range(40))}, [(0, 8)] * 6)
    source = source_over(consumer, interval_s=0.2)
    source.poll()
    threading.Event().wait(0.15)  # a batch that took 3/4 of the interval
    assert len(source.poll()) == 4
    assert source.batch_limit == 4
    source.poll()  # the 4-record batch was quick
    assert source.batch_limit == 8


def test_rewind_goes_back_to_the_batch_start_and_refetches_what_was_buffered() -> None:
    consumer = FakeConsumer({0: list(range(10)), 1: list(range(10))}, [(0, 10), (1, 10)])
    source = source_over(consumer, max_records=4)
    batch = source.poll()
    source.rewind(first_offsets(batch))
    assert sorted(consumer.seeks) == [
        (TopicPartition("documents", 0), 0),
        (TopicPartition("documents", 1), 0),
    ]
    consumer.fetches = [(0, 10), (1, 10)]
    assert source.poll() == batch  # the same records again, none lost and none doubled


def test_rewind_skips_partitions_no_longer_assigned() -> None:
    consumer = FakeConsumer({0: []}, [])
    source = source_over(consumer)
    source.rewind({("documents", 0): 5, ("documents", 1): 7})
    assert consumer.seeks == [(TopicPartition("documents", 0), 5)]


def test_producer_timestamps_are_reported_once_per_partition() -> None:
    """ "Earlier" is by record timestamp: with CreateTime a producer can backdate a repost to before its
    original (timestamp_ms=1) and never be flagged. The operator is told, once, what closes it."""
    consumer = FakeConsumer({0: [1, 2, 3, 4], 1: [1, 2, 3, 4]}, [(0, 2), (1, 2), (0, 2), (1, 2)])
    consumer.stamped_by_broker = {1}
    source = source_over(consumer, max_records=2, order_wait_s=0.0)
    with structlog.testing.capture_logs() as events:
        for _ in range(6):
            source.poll()
    warned = [e for e in events if e["event"] == "producer_timestamps"]
    assert [e["partition"] for e in warned] == ["documents/0"]
    assert "LogAppendTime" in warned[0]["advice"]


def test_an_unreachable_server_is_named_with_the_setting_that_holds_its_address() -> None:

    from worker.service.retry import retrying
    from worker.service.settings import WorkerSettings

    settings = WorkerSettings.model_validate(
        {"kafka": {"bootstrap_servers": "broker-x:9092"}, "index": {"url": "http://u:pw@qdrant:6333"}}
    )
    stop = threading.Event()

    def refused() -> None:
        stop.set()  # one attempt is enough to see the line
        raise ConnectionRefusedError(111, "Connection refused")

    with structlog.testing.capture_logs() as logs:
        assert retrying("consumer", refused, settings, stop) is None
        stop.clear()
        assert retrying("index", refused, settings, stop) is None
    kafka_line, index_line = [line for line in logs if line["event"] == "unavailable"]
    assert kafka_line["address"] == "broker-x:9092"
    assert kafka_line["setting"] == "TWINFLAG_KAFKA__BOOTSTRAP_SERVERS"
    assert index_line["setting"] == "TWINFLAG_INDEX__URL"
    assert "pw" not in index_line["address"]  # credentials never reach a log
