"""A batch's messages → Kafka, framed per batch: the loop's ``worker.core.ports.BatchPublisher``.

- ``KafkaPublisher`` (at-least-once): an idempotent producer (``acks=all``, ``enable_idempotence``);
  ``flush`` waits for every acknowledgement and raises if any send failed; then the *consumer* commits.
  A crash between flush and commit replays the batch, whose messages are byte-identical and keyed.
- ``TransactionalPublisher`` (exactly-once): ``begin_transaction`` before the batch, sends, flush,
  ``send_offsets_to_transaction`` with the consumer's group metadata, ``commit_transaction``; any
  failure aborts. After a failed abort it drops the producer; the next batch builds a fresh one, whose
  ``init_transactions`` fences the old one and (on Apache Kafka) aborts its open transaction.

kafka-python failures are translated into ``worker.core.errors`` here, so the loop never sees them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from kafka.errors import KafkaTimeoutError

from worker.core.errors import BrokerUnavailableError, FatalError, RebalancedError, TwinflagError
from worker.core.ports import RecordSource
from worker.core.records import Offsets
from worker.kafka.config import REFUSED_COMMIT, to_kafka


def _translate(error: Exception, doing: str) -> TwinflagError:
    """A kafka-python error → ours: retriable ones are an outage, the rest are fatal."""
    name = type(error).__name__
    if isinstance(error, KafkaTimeoutError) or getattr(type(error), "retriable", False) is True:
        return BrokerUnavailableError(f"{doing}: {name}")
    return FatalError(f"{doing}: {name}")


class KafkaPublisher:
    """At-least-once output through an idempotent ``KafkaProducer`` (built with ``acks="all"``)."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer
        self._pending: list[Any] = []

    def begin(self) -> None:
        self._pending.clear()

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        try:
            self._pending.append(self._producer.send(topic, value=value, key=key))
        except Exception as error:  # kafka-python raises from send() for metadata timeouts and sizes
            raise _translate(error, f"send to {topic}") from error

    def flush(self, timeout_s: float) -> None:
        """Wait for every acknowledgement; ``KafkaProducer.flush`` alone does not report failed sends."""
        try:
            self._producer.flush(timeout=timeout_s)
        except Exception as error:
            raise _translate(error, "flush") from error
        failed = [future for future in self._pending if future.failed()]
        if failed:
            first: Exception = failed[0].exception
            raise _translate(first, f"{len(failed)} of {len(self._pending)} sends failed") from first
        self._pending.clear()

    def commit(self, offsets: Offsets, source: RecordSource) -> None:
        source.commit(offsets)

    def abort(self) -> None:
        self._pending.clear()  # sent records may still arrive: a replay republishes identical bytes

    def close(self, timeout_s: float) -> None:
        self._producer.close(timeout=timeout_s)


def _bounded(call: Callable[[], None], timeout_s: float, doing: str) -> None:
    """Run a blocking kafka-python transaction call with a deadline (they wait without one)."""
    outcome: list[BaseException] = []

    def target() -> None:
        try:
            call()
        except BaseException as error:  # handed to the caller's thread below
            outcome.append(error)

    thread = threading.Thread(target=target, name=f"twinflag-{doing}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise BrokerUnavailableError(f"{doing}: no answer in {timeout_s:g} s")
    if outcome:
        raise outcome[0]


class TransactionalPublisher(KafkaPublisher):
    """Exactly-once output: flags, dead letters and consumed offsets in one Kafka transaction."""

    def __init__(self, make_producer: Callable[[], Any], timeout_s: float) -> None:
        super().__init__(None)
        self._make_producer = make_producer
        self._timeout_s = timeout_s
        self._in_transaction = False

    def begin(self) -> None:
        if self._producer is None:
            producer = self._make_producer()  # transactional_id set; its init fences older instances
            try:
                _bounded(producer.init_transactions, self._timeout_s, "init_transactions")
            except Exception as error:
                producer.close(timeout=0)
                raise _translate(error, "init_transactions") from error
            self._producer = producer
        super().begin()
        try:
            self._producer.begin_transaction()
        except Exception as error:  # the producer is in an error state: the next batch starts afresh
            self._producer.close(timeout=0)
            self._producer = None
            raise _translate(error, "begin_transaction") from error
        self._in_transaction = True

    def commit(self, offsets: Offsets, source: RecordSource) -> None:
        producer, metadata = self._producer, source.group_metadata()
        try:
            _bounded(
                lambda: producer.send_offsets_to_transaction(to_kafka(offsets), metadata),
                self._timeout_s,
                "send_offsets_to_transaction",
            )
            _bounded(producer.commit_transaction, self._timeout_s, "commit_transaction")
        except TwinflagError:
            raise
        except REFUSED_COMMIT as e:
            raise RebalancedError(f"transaction offsets refused: {type(e).__name__}") from e
        except Exception as error:
            raise _translate(error, "commit_transaction") from error
        self._in_transaction = False

    def abort(self) -> None:
        super().abort()
        if not self._in_transaction or self._producer is None:
            return
        self._in_transaction = False
        try:
            _bounded(self._producer.abort_transaction, self._timeout_s, "abort_transaction")
        except Exception:  # state unknown: start over with a fresh producer on the next batch
            self._producer.close(timeout=0)
            self._producer = None

    def close(self, timeout_s: float) -> None:
        if self._producer is not None:
            self._producer.close(timeout=timeout_s)
