"""``python -m worker``: wiring and CLI only. Real clients are built here from settings, nowhere else.

Commands: ``run`` (the Kafka service), ``scan`` (the batch step over a JSONL file), ``index`` (bulk-load
a corpus), ``settings --markdown`` (the settings table of the README). Exit codes: 0 after a clean stop,
1 after an unexpected error (logged with its traceback, nothing committed), 2 for configuration, model
or index problems that a restart cannot fix.

``run_worker`` takes the encoder as a parameter so the integration tests drive this same wiring with a
fast deterministic encoder (``tests/integration/driver.py``); ``cmd_run`` is the only place that loads
the real model.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from worker.core import logs
from worker.core.errors import Action, FatalError, policy
from worker.core.step import StepConfig
from worker.index.search import IndexMismatchError, VectorIndex
from worker.kafka.publish import BatchPublisher, KafkaPublisher, TransactionalPublisher
from worker.kafka.source import KafkaSource, Source
from worker.model.encode import Encoder
from worker.service.loop import Backoff
from worker.service.loop import run as run_loop
from worker.service.settings import IndexSettings, KafkaSettings, WorkerSettings, settings_markdown
from worker.service.status import Metrics, Readiness, StatusServer

log = logs.get_logger("main")
T = TypeVar("T")

EXIT_OK, EXIT_ERROR, EXIT_CONFIG = 0, 1, 2


# ----------------------------------------------------------------------------------------- wiring


def kafka_options(kafka: KafkaSettings) -> dict[str, Any]:
    """Connection and security options shared by the consumer, the producer and the admin client.

    The only place a Kafka secret is revealed: straight into the client's configuration.
    """
    options: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in kafka.bootstrap_servers.split(",") if s.strip()],
        "client_id": kafka.client_id,
        "security_protocol": kafka.security_protocol,
        "request_timeout_ms": kafka.request_timeout_ms,
        "bootstrap_timeout_ms": kafka.request_timeout_ms,
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_check_hostname"] = kafka.ssl_check_hostname
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(kafka, name)
            if path is not None:
                options[name] = str(path)
    if kafka.security_protocol.startswith("SASL_") and kafka.sasl_password is not None:
        options["sasl_mechanism"] = kafka.sasl_mechanism
        options["sasl_plain_username"] = kafka.sasl_username
        options["sasl_plain_password"] = kafka.sasl_password.get_secret_value()
    return options


def dlq_max_bytes(settings: WorkerSettings) -> int:
    """A dead letter carries the original bytes in base64 (4/3 of them) plus its reason and source."""
    return 2 * settings.max_message_bytes + 64 * 1024


def ensure_topics(settings: WorkerSettings) -> list[str]:
    """Create the worker's topics when missing (``TWINFLAG_KAFKA__CREATE_TOPICS``); returns those created."""
    from kafka import KafkaAdminClient

    kafka = settings.kafka
    names = [kafka.input_topic, kafka.flags_topic, kafka.dlq_topic]
    names += [kafka.decisions_topic] if kafka.decisions_topic else []
    spec: dict[str, dict[str, Any]] = {
        name: {"num_partitions": kafka.partitions, "replication_factor": kafka.replication_factor}
        for name in names
    }
    spec[kafka.dlq_topic]["configs"] = {"max.message.bytes": str(dlq_max_bytes(settings))}
    admin = KafkaAdminClient(**kafka_options(kafka))
    try:
        existing = set(admin.list_topics())
        missing = {name: spec[name] for name in names if name not in existing}
        if missing:
            admin.create_topics(missing, raise_errors=False, wait_for_metadata=True)
            log.info("topics_created", topics=sorted(missing))
    finally:
        admin.close()
    return sorted(missing)


def build_consumer(settings: WorkerSettings) -> KafkaSource:
    """A ``KafkaSource`` over a consumer with auto-commit off, reading committed transactions only."""
    from kafka import KafkaConsumer

    kafka = settings.kafka
    consumer = KafkaConsumer(
        **kafka_options(kafka),
        group_id=kafka.group_id,
        enable_auto_commit=False,
        auto_offset_reset=kafka.auto_offset_reset,
        isolation_level="read_committed",
        allow_auto_create_topics=False,
        max_poll_records=kafka.max_poll_records,
        max_poll_interval_ms=kafka.max_poll_interval_ms,
        session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=min(3000, kafka.session_timeout_ms // 3),
        receive_message_max_bytes=max(100_000_000, 2 * settings.max_message_bytes),
        reconnect_backoff_max_ms=int(settings.backoff_max_s * 1000),
    )
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

    kafka = settings.kafka
    options = {
        **kafka_options(kafka),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "max_block_ms": kafka.request_timeout_ms,
        "max_request_size": dlq_max_bytes(settings),
        "reconnect_backoff_max_ms": int(settings.backoff_max_s * 1000),
    }
    if kafka.delivery == "exactly-once":
        timeout_s = kafka.request_timeout_ms / 1000
        return TransactionalPublisher(
            lambda: KafkaProducer(**options, transactional_id=kafka.transactional_id), timeout_s
        )
    return KafkaPublisher(KafkaProducer(**options))


def build_index(index: IndexSettings, stack: ExitStack) -> VectorIndex:
    """EdgeIndex at the configured path, or QdrantIndex over a client built from URL, API key, TLS."""
    from worker.index.search import EdgeIndex, QdrantIndex

    if index.backend == "embedded":
        edge = EdgeIndex(
            index.path,
            hnsw_m=index.hnsw_m,
            hnsw_ef_construct=index.hnsw_ef_construct,
            ef_search=index.hnsw_ef,
            optimize_every=index.optimize_every,
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


def load_model(settings: WorkerSettings, model_dir: Path | None = None) -> tuple[Encoder, float]:
    """The encoder and the manifest's decision threshold. A missing, unsafe or unreadable model
    directory is a ``FatalError`` naming the path."""
    from worker.model.encode import limit_kernel_cache, load_encoder
    from worker.model.manifest import ModelFormatError, UnsafeModelError

    path = model_dir if model_dir is not None else settings.model.path
    model = settings.model
    limit_kernel_cache(model.cpu_kernel_cache)
    try:
        encoder = load_encoder(path, model.device, model.max_batch_tokens, model.max_batch_size)
    except (ModelFormatError, UnsafeModelError, FileNotFoundError) as error:
        raise FatalError(f"model directory refused: {error}") from error
    return encoder, encoder.manifest.thresholds.decision


def step_config(settings: WorkerSettings, encoder: Encoder, threshold: float) -> StepConfig:
    kafka = settings.kafka
    return StepConfig(
        threshold=threshold,
        model_version=encoder.version,
        flags_topic=kafka.flags_topic,
        dlq_topic=kafka.dlq_topic,
        decisions_topic=kafka.decisions_topic,
        top_k=settings.top_k,
        max_message_bytes=settings.max_message_bytes,
    )


def stop_on_signals() -> threading.Event:
    """SIGTERM (docker stop, Kubernetes) and SIGINT (Ctrl+C) only set the flag the loop checks."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def retrying(what: str, build: Callable[[], T], settings: WorkerSettings, stop: threading.Event) -> T | None:
    """Build a client, backing off while its server is unavailable; None if stopped meanwhile."""
    delay = settings.backoff_initial_s
    while not stop.is_set():
        try:
            return build()
        except Exception as error:
            if policy(error) is not Action.BACK_OFF:
                raise
            log.warning("unavailable", what=what, error=type(error).__name__, retry_in_s=delay)
            stop.wait(delay)
            delay = min(delay * 2, settings.backoff_max_s)
    return None


def start(
    settings: WorkerSettings,
    encoder: Encoder,
    stop: threading.Event,
    readiness: Readiness,
    metrics: Metrics,
    stack: ExitStack,
) -> tuple[VectorIndex, Source, BatchPublisher] | None:
    """Status endpoint, index (checked against the model), topics, consumer, producer; each close on
    ``stack``. Waits out unavailable servers; None if stopped meanwhile."""
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
    if (
        settings.kafka.create_topics
        and retrying("topics", lambda: ensure_topics(settings), settings, stop) is None
    ):
        return None
    consumer: KafkaSource | None = retrying("consumer", lambda: build_consumer(settings), settings, stop)
    if consumer is None:
        return None
    close_s = settings.shutdown_timeout_s / 2  # the two Kafka clients share the budget
    stack.callback(consumer.close, close_s)
    publisher: BatchPublisher | None = retrying("producer", lambda: build_publisher(settings), settings, stop)
    if publisher is None:
        return None
    stack.callback(publisher.close, close_s)
    return index, consumer, publisher


def run_worker(
    settings: WorkerSettings,
    encoder: Encoder,
    threshold: float,
    stop: threading.Event,
    *,
    readiness: Readiness | None = None,
    metrics: Metrics | None = None,
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
        index, consumer, publisher = started
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
                step_config(settings, encoder, threshold),
                stop,
                metrics=metrics,
                readiness=readiness,
                backoff=Backoff(settings.backoff_initial_s, settings.backoff_max_s),
                flush_timeout_s=settings.kafka.flush_timeout_s,
            )
        except Exception:  # logged with its traceback by the loop; nothing was committed
            return EXIT_ERROR
        closing = time.monotonic()
    log.info("worker_stopped", records=committed, close_s=round(time.monotonic() - closing, 3))
    return EXIT_OK


# -------------------------------------------------------------------------------------------- CLI


def load_settings() -> WorkerSettings:
    """Settings from the environment; an invalid one exits 2 naming the setting, never its value."""
    try:
        return WorkerSettings()
    except ValidationError as error:
        for problem in error.errors(include_input=False, include_url=False):
            where = "__".join(str(part).upper() for part in problem["loc"])
            print(f"invalid setting TWINFLAG_{where}: {problem['msg']}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def cmd_run(_args: argparse.Namespace) -> int:
    settings = load_settings()
    logs.configure(settings.log_level, settings.log_format)
    stop = stop_on_signals()
    encoder, threshold = load_model(settings)
    if settings.model.threshold is not None:
        threshold = settings.model.threshold
    return run_worker(settings, encoder, threshold, stop, readiness=Readiness(model_loaded=True))


def cmd_scan(args: argparse.Namespace) -> int:
    from worker.index.search import EdgeIndex
    from worker.service.scan import scan

    settings = load_settings()
    logs.configure(settings.log_level, settings.log_format)
    encoder, threshold = load_model(settings, args.model)
    threshold = args.threshold if args.threshold is not None else threshold
    with ExitStack() as stack:
        path = (
            args.index if args.index is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        )
        index = EdgeIndex(path)
        stack.callback(index.close)
        summary = scan(
            args.input,
            args.output,
            encoder,
            index,
            threshold,
            batch_size=args.batch_size,
            top_k=settings.top_k,
            max_message_bytes=settings.max_message_bytes,
            progress=not args.quiet,
        )
    print(json.dumps({"threshold": threshold, **asdict(summary)}))
    return EXIT_OK


def cmd_index(args: argparse.Namespace) -> int:
    from worker.service.load import load_corpus

    settings = load_settings()
    logs.configure(settings.log_level, settings.log_format)
    encoder, _ = load_model(settings, args.model)
    with ExitStack() as stack:
        index = build_index(settings.index, stack)
        summary = load_corpus(
            args.input,
            encoder,
            index,
            batch_size=args.batch_size,
            max_message_bytes=settings.max_message_bytes,
            progress=not args.quiet,
        )
    print(
        json.dumps(
            {
                "lines": summary.lines,
                "loaded": summary.loaded,
                "skipped": summary.skipped,
                "errors": len(summary.errors),
            }
        )
    )
    for line, reason in summary.errors[:20]:
        print(f"line {line}: {reason}", file=sys.stderr)
    return EXIT_OK


def cmd_settings(args: argparse.Namespace) -> int:
    if args.markdown:
        sys.stdout.write(settings_markdown())
    else:
        print(load_settings().model_dump_json(indent=2))  # secrets print as '**********'
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m worker", description=__doc__.split("\n\n", 1)[0])
    commands = top.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="consume documents, publish duplicate flags (settings: TWINFLAG_*)")
    run.set_defaults(func=cmd_run)

    scan = commands.add_parser("scan", help="the batch step over a JSONL file, one decision per line")
    scan.add_argument("--model", type=Path, required=True, help="model directory")
    scan.add_argument("--input", type=Path, required=True, help="posts, one JSON document per line")
    scan.add_argument("--output", type=Path, required=True, help="decisions, one JSON object per line")
    scan.add_argument(
        "--index", type=Path, help="embedded index to match against and add to (default: fresh)"
    )
    scan.add_argument("--threshold", type=float, help="decision threshold (default: the model's)")
    scan.add_argument("--batch-size", type=int, default=256)
    scan.add_argument("--quiet", action="store_true", help="no progress bar")
    scan.set_defaults(func=cmd_scan)

    index = commands.add_parser("index", help="bulk-load a corpus into the configured index (resumable)")
    index.add_argument("--input", type=Path, required=True, help="corpus, one JSON document per line")
    index.add_argument("--model", type=Path, help="model directory (default: TWINFLAG_MODEL__PATH)")
    index.add_argument("--batch-size", type=int, default=256)
    index.add_argument("--quiet", action="store_true", help="no progress bar")
    index.set_defaults(func=cmd_index)

    settings = commands.add_parser("settings", help="show the settings (values, secrets masked)")
    settings.add_argument("--markdown", action="store_true", help="every setting as a Markdown table")
    settings.set_defaults(func=cmd_settings)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except FatalError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    return code


if __name__ == "__main__":
    sys.exit(main())
