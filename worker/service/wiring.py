"""Real clients, built from settings (the model's in ``worker.service.decision``, the verdicts topic's in
``worker.service.feedback``), and the service's start and stop.

``run_worker`` takes the encoder as a parameter so the integration tests drive this same wiring with a
fast deterministic encoder (``tests/integration/driver.py``); ``worker.service.commands.cmd_run`` is
the only place that loads the real model. Exit codes: 0 after a clean stop, 1 after an unexpected
error (logged with its traceback, nothing committed), 2 for configuration, model or index problems
that a restart cannot fix.
"""

from __future__ import annotations

import resource
import signal
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass

from worker.core.emit import Topics
from worker.core.errors import FatalError, IndexMismatchError
from worker.core.logs import get_logger
from worker.core.policy import DecisionPlan
from worker.core.ports import BatchPublisher, Encoder, RecordSource, VectorIndex
from worker.index.config import IndexSettings
from worker.kafka.config import consumer_options, dead_letter_limit, ensure_topics, producer_options
from worker.service.decision import step_config, stream_config
from worker.service.feedback import build_feedback
from worker.service.loop import run as run_loop
from worker.service.retry import backoff_of, retrying
from worker.service.settings import WorkerSettings
from worker.service.status import Metrics, Readiness, StatusServer

log = get_logger("main")

EXIT_OK, EXIT_ERROR, EXIT_CONFIG = 0, 1, 2


def raise_descriptor_limit(wanted: int = 65_536) -> None:
    """Raise the soft limit on open files towards the hard one: the embedded index keeps a descriptor
    per segment file, and the 1,024 many systems start with leaves little room beside the clients and
    the status endpoint (which holds at most ``StatusServer.max_connections``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        log.info("descriptor_limit_raised", soft=target, was=soft)


def build_consumer(settings: WorkerSettings) -> RecordSource:
    """A ``KafkaSource`` over a consumer with auto-commit off, reading committed transactions only."""
    from kafka import KafkaConsumer

    from worker.kafka.source import KafkaSource

    kafka = settings.kafka
    consumer = KafkaConsumer(**consumer_options(kafka, settings.max_message_bytes, settings.backoff_max_s))
    return KafkaSource(
        consumer,
        kafka.input_topic,
        max_records=kafka.max_poll_records,
        poll_timeout_s=kafka.poll_timeout_ms / 1000,
        order_wait_s=kafka.order_wait_ms / 1000,
        max_poll_interval_s=kafka.max_poll_interval_ms / 1000,
        request_timeout_s=kafka.request_timeout_ms / 1000,
    )


def build_publisher(settings: WorkerSettings) -> BatchPublisher:
    """``KafkaPublisher`` (at-least-once) or ``TransactionalPublisher`` (exactly-once)."""
    from kafka import KafkaProducer

    from worker.kafka.publish import KafkaPublisher, TransactionalPublisher

    kafka = settings.kafka
    options = producer_options(kafka, settings.max_message_bytes, settings.backoff_max_s)
    if kafka.delivery == "exactly-once":
        timeout_s = kafka.request_timeout_ms / 1000
        return TransactionalPublisher(
            lambda: KafkaProducer(**options, transactional_id=kafka.transactional_id), timeout_s
        )
    return KafkaPublisher(KafkaProducer(**options))


def build_index(index: IndexSettings, stack: ExitStack) -> VectorIndex:
    """EdgeIndex at the configured path, or QdrantIndex over a client built from URL, API key, TLS."""
    from worker.index.edge import EdgeIndex
    from worker.index.qdrant import QdrantIndex

    if index.backend == "embedded":
        edge = EdgeIndex(
            index.path,
            hnsw_m=index.hnsw_m,
            hnsw_ef_construct=index.hnsw_ef_construct,
            ef_search=index.hnsw_ef,
            optimize_every=index.optimize_every,
            scalar_quantization=index.quantization == "scalar",
        )
        stack.callback(edge.close)
        return edge
    from qdrant_client import QdrantClient

    client = QdrantClient(
        url=index.url,
        api_key=None if index.api_key is None else index.api_key.get_secret_value(),
        https=index.https,
        timeout=max(1, round(index.timeout_s)),
    )
    stack.callback(client.close)
    server = QdrantIndex(
        client,
        index.collection,
        hnsw_m=index.hnsw_m,
        hnsw_ef_construct=index.hnsw_ef_construct,
        ef_search=index.hnsw_ef,
        scalar_quantization=index.quantization == "scalar",
        shard_number=index.shard_number,
        replication_factor=index.replication_factor,
        write_consistency_factor=index.write_consistency_factor,
    )
    stack.callback(server.close)
    return server


def topics(settings: WorkerSettings) -> Topics:
    kafka = settings.kafka
    return Topics(flags=kafka.flags_topic, dlq=kafka.dlq_topic, decisions=kafka.decisions_topic)


def stop_on_signals() -> threading.Event:
    """SIGTERM (docker stop, Kubernetes) and SIGINT (Ctrl+C) only set the flag the loop checks."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def start(
    settings: WorkerSettings,
    encoder: Encoder,
    stop: threading.Event,
    readiness: Readiness,
    metrics: Metrics,
    stack: ExitStack,
) -> Started | None:
    """Status endpoint, index (checked against the model), topics and the dead-letter topic's limit,
    consumer, producer; each close on ``stack``. Waits out unavailable servers; None if stopped
    meanwhile."""
    raise_descriptor_limit()
    if settings.metrics_port is not None:
        try:
            server = StatusServer(settings.metrics_host, settings.metrics_port, metrics, readiness)
        except OSError as error:
            raise FatalError(
                f"cannot serve on {settings.metrics_host}:{settings.metrics_port}: {error}"
            ) from error
        stack.enter_context(server)
        log.info("status_endpoint", host=settings.metrics_host, port=server.port)
    index = build_index(settings.index, stack)

    def ensure() -> VectorIndex:
        index.ensure(encoder.dim, encoder.version)  # refuses another model's vector space
        return index

    if retrying("index", ensure, settings, stop) is None:
        return None
    readiness.index_ready = True
    created: list[str] = []
    if settings.kafka.create_topics:
        made = retrying(
            "topics", lambda: ensure_topics(settings.kafka, settings.max_message_bytes), settings, stop
        )
        if made is None:
            return None
        created = made
    consumer: RecordSource | None = retrying("consumer", lambda: build_consumer(settings), settings, stop)
    if consumer is None:
        return None
    close_s = settings.shutdown_timeout_s / 2  # the two Kafka clients share the budget
    stack.callback(consumer.close, close_s)
    publisher: BatchPublisher | None = retrying("producer", lambda: build_publisher(settings), settings, stop)
    if publisher is None:
        return None
    stack.callback(publisher.close, close_s)
    # asked once the broker has answered the consumer: an unreachable broker would make this wait
    dead_letter_bytes = dead_letter_limit(
        settings.kafka, settings.kafka.dlq_topic in created, settings.max_message_bytes
    )
    log.info("dead_letter_limit", topic=settings.kafka.dlq_topic, bytes=dead_letter_bytes)
    return Started(index, consumer, publisher, dead_letter_bytes)


@dataclass(frozen=True)
class Started:
    """What ``start`` built: the clients the loop runs with, and the dead-letter topic's limit."""

    index: VectorIndex
    consumer: RecordSource
    publisher: BatchPublisher
    dead_letter_bytes: int


def run_worker(
    settings: WorkerSettings,
    encoder: Encoder,
    threshold: float,
    stop: threading.Event,
    *,
    readiness: Readiness | None = None,
    metrics: Metrics | None = None,
    decision: DecisionPlan | None = None,
) -> int:
    """Everything after the model: start, the loop until stopped, a bounded close. Returns the exit code."""
    readiness = readiness if readiness is not None else Readiness(model_loaded=True)
    metrics = metrics if metrics is not None else Metrics()
    with ExitStack() as stack:
        try:
            started = start(settings, encoder, stop, readiness, metrics, stack)
        except (IndexMismatchError, FatalError) as error:
            log.error("start_refused", error=str(error))
            return EXIT_CONFIG
        except Exception:
            log.exception("start_failed")
            return EXIT_ERROR
        if started is None:
            return EXIT_OK  # stopped while waiting for a server
        index, consumer, publisher = started.index, started.consumer, started.publisher
        config = stream_config(
            settings, step_config(settings, encoder, threshold, started.dead_letter_bytes, decision)
        )
        try:
            feedback = build_feedback(settings, index, config, stack, stop)
        except Exception:
            log.exception("start_failed")
            return EXIT_ERROR
        if settings.kafka.verdicts_topic is not None and feedback is None:
            return EXIT_OK  # stopped while waiting for the broker
        log.info(
            "worker_started",
            model=encoder.version,
            dim=encoder.dim,
            threshold=threshold,
            delivery=settings.kafka.delivery,
            index=settings.index.backend,
            topic=settings.kafka.input_topic,
            group=settings.kafka.group_id,
        )
        try:
            committed = run_loop(
                consumer,
                encoder,
                index,
                publisher,
                config,
                stop,
                verifier=None if decision is None else decision.verifier,
                topics=topics(settings),
                metrics=metrics,
                readiness=readiness,
                backoff=backoff_of(settings),
                flush_timeout_s=settings.kafka.flush_timeout_s,
                commit_interval_s=settings.commit_interval_ms / 1000,
                feedback=feedback,
            )
        except Exception:  # logged with its traceback by the loop; nothing was committed
            return EXIT_ERROR
        closing = time.monotonic()
    log.info("worker_stopped", records=committed, close_s=round(time.monotonic() - closing, 3))
    return EXIT_OK
