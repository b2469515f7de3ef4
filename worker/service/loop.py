"""The loop: poll a batch → decide it (``worker.core.step``) → send its messages → flush the producer →
flush the index → commit. Repeat.

Offsets are committed only after the batches' output is acknowledged and their index writes are
durable (exactly-once: inside the producer's transaction), and always ``last_offset + 1``. So a crash
anywhere replays at most the batches not committed, which republish byte-identical flags keyed by
document id. Two overlaps, neither of which changes that order: the encoder runs in a thread of its
own (torch releases the GIL) while the batches sent before are flushed and committed, and a commit
covers every batch sent in ``commit_interval_s`` (flushing the embedded index costs the same for one
batch as for ten).

Failures follow ``worker.core.errors.policy``: an outage (broker, index) rewinds to the first batch not
committed, backs off (bounded exponential, jittered), reports not-ready and retries by itself; a
refused commit (the group moved on) drops the batches; anything else is logged with its traceback and
re-raised without a commit, and the process exits non-zero. ``stop`` is checked between batches: a
signal finishes the current batch and commits what was sent.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Protocol

from worker.core.emit import Topics, emit
from worker.core.errors import Action, Backoff, BrokerUnavailableError, policy
from worker.core.feedback import Feedback
from worker.core.logs import get_logger
from worker.core.outcome import BatchOutcome
from worker.core.ports import BatchPublisher, Encoder, RecordSource, VectorIndex, Verifier
from worker.core.records import Record, first_offsets, next_offsets
from worker.core.step import StepConfig, embed_batch, finish_batch, prepare_batch
from worker.service.expiry import Expirer
from worker.service.status import Metrics, Readiness

log = get_logger("loop")


class FeedbackSource(Protocol):
    """What the loop asks of the feedback: read new verdicts now, and the memory to decide with."""

    @property
    def memory(self) -> Feedback: ...

    def poll(self) -> None: ...


def run(
    consumer: RecordSource,
    encoder: Encoder,
    index: VectorIndex,
    publisher: BatchPublisher,
    config: StepConfig,
    stop: threading.Event,
    *,
    topics: Topics = Topics(),
    max_messages: int | None = None,
    idle_timeout_s: float | None = None,
    metrics: Metrics | None = None,
    readiness: Readiness | None = None,
    backoff: Backoff = Backoff(),
    flush_timeout_s: float = 30.0,
    verifier: Verifier | None = None,
    commit_interval_s: float = 0.0,
    feedback: FeedbackSource | None = None,
) -> int:
    """Process batches until ``stop`` is set (production), or ``max_messages`` records are committed or
    nothing arrived for ``idle_timeout_s`` (tests). Returns the number of records committed.

    ``commit_interval_s``: how long a sent batch may wait for the flushes and the commit, which then
    cover every batch sent since (0: each batch is committed on its own). ``feedback``: moderators'
    verdicts, read before each poll and decided with (``worker.service.feedback``)."""
    metrics = metrics if metrics is not None else Metrics()
    readiness = readiness if readiness is not None else Readiness()
    timeouts = (flush_timeout_s, commit_interval_s)
    work = _Work(consumer, (encoder, verifier), index, publisher, config, topics, metrics, timeouts)
    work.feedback = None if feedback is None else feedback.memory
    failures, last_record, committed = 0, time.monotonic(), 0
    rng = random.Random()  # noqa: S311 -- jitter for retries, not secrets
    with ThreadPoolExecutor(1, thread_name_prefix="twinflag-embed") as embedder:
        while True:
            if work.done > committed:  # a commit went through: an outage, if any, is over
                committed, failures = work.done, 0
                readiness.backing_off = False
            room = None if max_messages is None else max_messages - work.done - work.in_flight
            if not work.sent and (stop.is_set() or room == 0):
                break
            records: list[Record] = []
            try:
                if stop.is_set() or room == 0:
                    work.commit_sent()  # the batch already sent, then stop
                    continue
                if feedback is not None:
                    feedback.poll()  # verdicts first: they apply to every post decided after this
                records = consumer.poll(room)
                # kafka-python answers an unreachable broker with an empty poll, so only records (or a
                # poll outside a back-off) show the broker is there; a back-off ends with a commit.
                if records or not readiness.backing_off:
                    readiness.broker_connected = True
                readiness.group_joined = consumer.joined
                if not records:
                    work.commit_sent()  # nothing more to overlap it with
                    if idle_timeout_s is not None and time.monotonic() - last_record >= idle_timeout_s:
                        break
                    continue
                work.batch(records, embedder)
            except Exception as error:
                publisher.abort()
                unfinished = [*work.drop_sent(), *records]
                if unfinished:
                    consumer.rewind(first_offsets(unfinished))
                action = policy(error)
                if action is Action.EXIT:
                    log.exception("batch_failed", records=len(unfinished), error=type(error).__name__)
                    raise
                metrics.backoffs.labels(error=type(error).__name__).inc()
                if action is Action.DROP_BATCH:
                    log.warning("batch_dropped", records=len(unfinished), reason=str(error))
                    continue
                readiness.backing_off = True
                readiness.broker_connected = not isinstance(error, BrokerUnavailableError)
                failures += 1
                delay = backoff.wait_s(failures, rng)
                log.warning(
                    "backing_off", seconds=round(delay, 3), records=len(unfinished), reason=str(error)
                )
                stop.wait(delay)
                continue
            if records:
                # Not ready again yet: records buffered before an outage decide fine, but only a commit
                # (up to commit_interval_s later) shows the broker is back.
                last_record = time.monotonic()
    if work.done > committed:
        readiness.backing_off = False
    return work.done


@dataclass(slots=True)
class _Sent:
    """A batch decided, upserted and sent, but not yet flushed and committed."""

    records: list[Record]
    result: BatchOutcome
    busy_s: float  # time spent on it so far (not on the batch it overlapped with)
    publish_ms: float


class _Work:
    """The batches of one commit, with the encoder overlapping the flushes and the commit.

    Batch N: prepare (parse, deletions, exact path: reads the index as N-1 left it) → the encoder
    starts in its own thread → meanwhile, when the commit is due, the batches sent so far are
    flushed (producer, then index) and committed → the encoder's vectors → search, decide, upsert →
    N's messages are sent. Sent batches are committed together once the oldest has waited
    ``commit_interval_s`` (0: every batch), and before the loop waits for input or stops. Ordering
    is that of a serial loop: a commit follows its batches' output and index flushes, and a new
    transaction (exactly-once) begins after the last one committed. A failure rewinds every batch
    not committed.
    """

    def __init__(
        self,
        consumer: RecordSource,
        models: tuple[Encoder, Verifier | None],
        index: VectorIndex,
        publisher: BatchPublisher,
        config: StepConfig,
        topics: Topics,
        metrics: Metrics,
        timeouts: tuple[float, float],
    ) -> None:
        self._consumer, (self._encoder, self._verifier) = consumer, models
        self._index, self._publisher, self._config, self._topics = index, publisher, config, topics
        self._metrics, (self._flush_timeout_s, self._interval_s) = metrics, timeouts
        self._expirer = Expirer(index, config.retention)  # retention: drops points no post can match
        self.feedback: Feedback | None = None
        self.sent: list[_Sent] = []
        self._oldest = 0.0  # when the first batch not committed was sent
        self.done = 0

    @property
    def in_flight(self) -> int:
        return sum(len(sent.records) for sent in self.sent)

    def drop_sent(self) -> list[Record]:
        """Forget the sent batches (a failure: they are redone from their first offsets); their records."""
        records = [record for sent in self.sent for record in sent.records]
        self.sent = []
        return records

    def batch(self, records: list[Record], embedder: ThreadPoolExecutor) -> None:
        """Decide and send ``records``; commit the batches sent before, if due, while the encoder runs."""
        started = time.perf_counter()
        prepared = prepare_batch(records, self._index, self._config)
        embedding = embedder.submit(embed_batch, prepared.texts, self._encoder)
        own = time.perf_counter() - started
        try:
            if self.sent and time.monotonic() - self._oldest >= self._interval_s:
                self.commit_sent()
        finally:
            waiting = time.perf_counter()
            wait([embedding])  # never two encoder calls at once, even after a failure
        waited = time.perf_counter()
        if not self.sent:
            self._publisher.begin()  # a new transaction for the batches of the next commit
            self._oldest = time.monotonic()
        result = finish_batch(
            prepared, embedding.result(), self._index, self._config, self._verifier, self.feedback
        )
        publishing = time.perf_counter()
        for message in emit(result, self._topics):
            self._publisher.send(message.topic, message.key, message.value)
        sent = time.perf_counter()
        result.timings_ms["wait"] = round((waited - waiting) * 1000, 3)  # the encoder not hidden
        self.sent.append(_Sent(records, result, own + sent - waiting, round((sent - publishing) * 1000, 3)))

    def commit_sent(self) -> None:
        """Flush the sent batches' output, then the index; commit their offsets (``last_offset + 1``)."""
        if not self.sent:
            return
        batches = self.sent
        records = [record for sent in batches for record in sent.records]
        flushing = time.perf_counter()
        self._publisher.flush(self._flush_timeout_s)
        self._index.flush()
        committing = time.perf_counter()
        self._publisher.commit(next_offsets(records), self._consumer)
        finished = time.perf_counter()
        self.sent, self.done = [], self.done + len(records)
        self._index.maintain()
        self._expirer.after_commit(records)
        lag = self._consumer.lag()
        if lag is not None:
            self._metrics.lag.set(lag)
        for i, sent in enumerate(batches):
            last = i == len(batches) - 1  # the commit's own time is counted once, on its last batch
            self._log(sent, lag, (committing - flushing, finished - committing) if last else (0.0, 0.0))

    def _log(self, sent: _Sent, lag: int | None, commit_s: tuple[float, float]) -> None:
        busy_s = sent.busy_s + sum(commit_s)
        self._metrics.observe(sent.result, busy_s)
        result = sent.result
        log.info(
            "batch",
            records=result.records,
            documents=result.documents,
            flags=result.flags,
            exact=result.exact,
            dead_letters=result.dead_letters,
            deletions=result.deletions,
            reused_vectors=result.reused_vectors,
            verified=result.verified,
            suppressed=result.suppressed,
            **{f"{stage}_ms": ms for stage, ms in result.timings_ms.items()},
            publish_ms=sent.publish_ms,
            flush_ms=round(commit_s[0] * 1000, 3),
            commit_ms=round(commit_s[1] * 1000, 3),
            total_ms=round(busy_s * 1000, 3),
            lag=lag,
            partitions=sorted(f"{topic}/{partition}" for topic, partition in next_offsets(sent.records)),
        )
