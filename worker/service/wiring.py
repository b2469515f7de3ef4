"""Real clients, built from settings: the only place they are. And the service's start and stop.

``run_worker`` takes the encoder as a parameter so the integration tests drive this same wiring with a
fast deterministic encoder (``tests/integration/driver.py``); ``worker.service.commands.cmd_run`` is
the only place that loads the real model. Exit codes: 0 after a clean stop, 1 after an unexpected
error (logged with its traceback, nothing committed), 2 for configuration, model or index problems
that a restart cannot fix.
"""

from __future__ import annotations

import random
import resource
import signal
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from worker.core.emit import Topics
from worker.core.errors import Action, Backoff, FatalError, IndexMismatchError, policy
from worker.core.logs import get_logger
from worker.core.messages import DEFAULT_DEAD_LETTER_BYTES
from worker.core.policy import DecisionPlan, Policy
from worker.core.ports import BatchPublisher, Encoder, RecordSource, VectorIndex
from worker.core.step import StepConfig
from worker.index.config import IndexSettings, mask_credentials
from worker.kafka.config import consumer_options, dead_letter_limit, ensure_topics, producer_options
from worker.model.manifest import ModelFormatError, calibrated_policy
from worker.service.loop import run as run_loop
from worker.service.settings import WorkerSettings
from worker.service.status import Metrics, Readiness, StatusServer

if TYPE_CHECKING:
    from worker.model.encode import DirectoryEncoder
    from worker.service.feedback import ReviewFile, StreamFeedback

log = get_logger("main")
T = TypeVar("T")

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


def load_model(settings: WorkerSettings, model_dir: Path | None = None) -> tuple[DirectoryEncoder, float]:
    """The encoder the model directory asks for (``encode.load_encoder``: torch, ONNX Runtime for int8,
    numpy for a static model) and the manifest's decision threshold. A missing, unsafe or unreadable
    model directory is a ``FatalError`` naming the path."""
    from worker.model.encode import limit_kernel_cache, load_encoder

    path = model_dir if model_dir is not None else settings.model.path
    model = settings.model
    try:
        limit_kernel_cache(model.cpu_kernel_cache)
        encoder = load_encoder(path, model.device, model.max_batch_tokens, model.max_batch_size)
    except (ModelFormatError, FileNotFoundError) as error:  # UnsafeModelError is a ModelFormatError
        raise FatalError(f"model directory refused: {error}") from error
    return encoder, encoder.manifest.thresholds.decision


def decision_of(
    settings: WorkerSettings, encoder: DirectoryEncoder, threshold: float | None = None
) -> DecisionPlan:
    """The model's own decision (its calibration, its verifier), unless a threshold is forced (the
    argument, else ``TWINFLAG_MODEL__THRESHOLD``): then the cosine decides alone. torch is imported
    only for a verifier: an int8 or static model runs without it."""
    model, manifest = settings.model, encoder.manifest
    forced = threshold if threshold is not None else model.threshold
    points = model.tenant_thresholds
    policy = None if forced is not None else calibrated_policy(manifest, points, verify=model.verifier)
    if policy is None:
        cosine = forced if forced is not None else manifest.thresholds.decision
        return DecisionPlan(Policy(cosine, tenant_points=points))
    section = manifest.verifier
    if not policy.verifies or section is None:
        return DecisionPlan(policy)
    from worker.model.verify import TorchVerifier

    try:
        verifier = TorchVerifier(
            encoder.root, section, encoder.tokenizer, manifest.pad_token_id, device=model.device
        )
    except (ModelFormatError, FileNotFoundError) as error:
        raise FatalError(f"model directory refused: {error}") from error
    return DecisionPlan(policy, verifier, section.keep_text)


def step_config(
    settings: WorkerSettings,
    encoder: Encoder,
    threshold: float,
    dead_letter_bytes: int = DEFAULT_DEAD_LETTER_BYTES,
    decision: DecisionPlan | None = None,
) -> StepConfig:
    return StepConfig(
        threshold=threshold,
        model_version=encoder.version,
        top_k=settings.top_k,
        max_message_bytes=settings.max_message_bytes,
        max_dead_letter_bytes=dead_letter_bytes,
        tombstones=settings.tombstones,
        policy=None if decision is None else decision.policy,
        keep_text=0 if decision is None else decision.keep_text,
    )


def stream_config(settings: WorkerSettings, config: StepConfig) -> StepConfig:
    """``config`` with the retention (``TWINFLAG_INDEX__RETENTION_DAYS``): the stream's alone, as only
    the loop expires points, and a check (at the largest timestamp) would see nothing through it."""
    return replace(config, retention=settings.index.retention())


def build_feedback(
    settings: WorkerSettings, index: VectorIndex, config: StepConfig, stack: ExitStack, stop: threading.Event
) -> StreamFeedback | None:
    """The verdicts topic read to its end, as the loop's feedback (None: ``verdicts_topic`` unset, or
    stopped while the broker was away). Closes on ``stack``."""
    from worker.core.feedback import Feedback
    from worker.kafka.verdicts import EventProducer, VerdictReader
    from worker.service.feedback import FeedbackFeed, StreamFeedback

    kafka = settings.kafka
    if kafka.verdicts_topic is None:
        return None
    topic = kafka.verdicts_topic
    options = consumer_options(kafka, settings.max_message_bytes, settings.backoff_max_s)
    reader = retrying("verdicts", lambda: VerdictReader(options, topic), settings, stop)
    producer_settings = producer_options(kafka, settings.max_message_bytes, settings.backoff_max_s)
    producer = retrying("producer", lambda: EventProducer(producer_settings), settings, stop)
    if reader is None or producer is None:
        return None
    close_s = settings.shutdown_timeout_s / 2
    stack.callback(reader.close)
    stack.callback(producer.close, close_s)
    feed = FeedbackFeed.for_step(
        config,
        index,
        Feedback(settings.feedback.rules()),
        review_file(settings),
        send=producer.send,
        dlq_topic=kafka.dlq_topic,
        points_topic=kafka.thresholds_topic,
    )
    feed.open()
    flush_s = kafka.flush_timeout_s
    source = StreamFeedback(feed, lambda timeout_ms: reader.read(timeout_ms), lambda: producer.flush(flush_s))
    source.catch_up(reader.read_to_end(settings.feedback.catch_up_s))
    return source


def review_file(settings: WorkerSettings, index: IndexSettings | None = None) -> ReviewFile | None:
    """Where verdicts and their resolved pairs are kept: the setting, else inside an embedded index."""
    from worker.service.feedback import ReviewFile

    chosen = index if index is not None else settings.index
    path = settings.feedback.store
    if path is None and chosen.backend == "embedded":
        path = chosen.path / "verdicts.jsonl"
    return None if path is None else ReviewFile(path)


def topics(settings: WorkerSettings) -> Topics:
    kafka = settings.kafka
    return Topics(flags=kafka.flags_topic, dlq=kafka.dlq_topic, decisions=kafka.decisions_topic)


def stop_on_signals() -> threading.Event:
    """SIGTERM (docker stop, Kubernetes) and SIGINT (Ctrl+C) only set the flag the loop checks."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def server_of(what: str, settings: WorkerSettings) -> dict[str, str]:
    """Where a client connects and the setting that says so: what an operator fixes when it is down."""
    if what == "index":
        if settings.index.url is None:
            return {"address": str(settings.index.path), "setting": "TWINFLAG_INDEX__PATH"}
        return {"address": mask_credentials(settings.index.url), "setting": "TWINFLAG_INDEX__URL"}
    return {"address": settings.kafka.bootstrap_servers, "setting": "TWINFLAG_KAFKA__BOOTSTRAP_SERVERS"}


def retrying(what: str, build: Callable[[], T], settings: WorkerSettings, stop: threading.Event) -> T | None:
    """Build a client, backing off while its server is unavailable; None if stopped meanwhile. Each
    retry's log line names the address and the setting that holds it."""
    backoff, failures = backoff_of(settings), 0
    rng = random.Random()  # noqa: S311 -- jitter for retries, not secrets
    while not stop.is_set():
        try:
            return build()
        except Exception as error:
            if policy(error) is not Action.BACK_OFF:
                raise
            failures += 1
            delay = backoff.wait_s(failures, rng)
            log.warning(
                "unavailable",
                what=what,
                **server_of(what, settings),
                error=type(error).__name__,
                retry_in_s=round(delay, 3),
            )
            stop.wait(delay)
    return None


def backoff_of(settings: WorkerSettings) -> Backoff:
    return Backoff(settings.backoff_initial_s, settings.backoff_max_s)


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
