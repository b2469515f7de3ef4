"""The loop: poll a batch → ``run_batch`` → send its messages → flush the producer → flush the index →
commit. Repeat.

Offsets are committed only after the batch's output is acknowledged and its index writes are durable
(exactly-once: inside the producer's transaction), and always ``last_offset + 1``. So a crash anywhere
replays at most the uncommitted batch, which republishes byte-identical flags keyed by document id.

Failures follow ``worker.core.errors.policy``: an outage (broker, index) rewinds to the batch start,
backs off (bounded exponential, jittered), reports not-ready and retries by itself; a refused commit
(the group moved on) drops the batch; anything else is logged with its traceback and re-raised without
a commit, and the process exits non-zero. ``stop`` is checked between batches: a signal finishes the
current batch.
"""

from __future__ import annotations

import random
import threading
import time

from worker.core.emit import Topics, emit
from worker.core.errors import Action, Backoff, BrokerUnavailableError, policy
from worker.core.logs import get_logger
from worker.core.ports import BatchPublisher, Encoder, RecordSource, VectorIndex, Verifier
from worker.core.records import Record, first_offsets, next_offsets
from worker.core.step import StepConfig, run_batch
from worker.service.status import Metrics, Readiness

log = get_logger("loop")


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
) -> int:
    """Process batches until ``stop`` is set (production), or ``max_messages`` records are committed or
    nothing arrived for ``idle_timeout_s`` (tests). Returns the number of records committed."""
    metrics = metrics if metrics is not None else Metrics()
    readiness = readiness if readiness is not None else Readiness()
    done, failures, last_record = 0, 0, time.monotonic()
    rng = random.Random()  # noqa: S311 -- jitter for retries, not secrets
    while not stop.is_set():
        if max_messages is not None and done >= max_messages:
            break
        records: list[Record] = []
        try:
            records = consumer.poll(None if max_messages is None else max_messages - done)
            # kafka-python answers an unreachable broker with an empty poll, so only records (or a
            # poll outside a back-off) show the broker is there; a back-off ends with a committed batch.
            if records or not readiness.backing_off:
                readiness.broker_connected = True
            readiness.group_joined = consumer.joined
            if not records:
                if idle_timeout_s is not None and time.monotonic() - last_record >= idle_timeout_s:
                    break
                continue
            _batch(
                records,
                consumer,
                (encoder, verifier),
                index,
                publisher,
                config,
                topics,
                metrics,
                flush_timeout_s,
            )
        except Exception as error:
            publisher.abort()
            if records:
                consumer.rewind(first_offsets(records))
            action = policy(error)
            if action is Action.EXIT:
                log.exception("batch_failed", records=len(records), error=type(error).__name__)
                raise
            metrics.backoffs.labels(error=type(error).__name__).inc()
            if action is Action.DROP_BATCH:
                log.warning("batch_dropped", records=len(records), reason=str(error))
                continue
            readiness.backing_off = True
            readiness.broker_connected = not isinstance(error, BrokerUnavailableError)
            failures += 1
            delay = backoff.wait_s(failures, rng)
            log.warning("backing_off", seconds=round(delay, 3), records=len(records), reason=str(error))
            stop.wait(delay)
            continue
        done += len(records)
        failures, last_record = 0, time.monotonic()
        readiness.backing_off = False
    return done


def _batch(
    batch: list[Record],
    consumer: RecordSource,
    models: tuple[Encoder, Verifier | None],
    index: VectorIndex,
    publisher: BatchPublisher,
    config: StepConfig,
    topics: Topics,
    metrics: Metrics,
    flush_timeout_s: float,
) -> None:
    """One batch, start to commit. Raises on any process-level problem, before the commit."""
    started = time.perf_counter()
    publisher.begin()
    encoder, verifier = models
    result = run_batch(batch, encoder, index, config, verifier)  # upserts before anything is sent
    publishing = time.perf_counter()
    for message in emit(result, topics):
        publisher.send(message.topic, message.key, message.value)
    flushed = time.perf_counter()
    publisher.flush(flush_timeout_s)
    index.flush()
    committing = time.perf_counter()
    publisher.commit(next_offsets(batch), consumer)
    finished = time.perf_counter()
    index.maintain()
    lag = consumer.lag()
    if lag is not None:
        metrics.lag.set(lag)
    metrics.observe(result, finished - started)
    timings = {f"{stage}_ms": ms for stage, ms in result.timings_ms.items()}
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
        **timings,
        publish_ms=round((flushed - publishing) * 1000, 3),
        flush_ms=round((committing - flushed) * 1000, 3),
        commit_ms=round((finished - committing) * 1000, 3),
        total_ms=round((finished - started) * 1000, 3),
        lag=lag,
        partitions=sorted(f"{topic}/{partition}" for topic, partition in next_offsets(batch)),
    )
