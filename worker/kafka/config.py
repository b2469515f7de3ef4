"""Kafka client settings and options, the topics the worker creates, and the offsets' wire form.

``KafkaSettings`` is the ``kafka`` group of the worker's settings (``TWINFLAG_KAFKA__*``, read once by
``worker.service.settings.WorkerSettings``). ``kafka_options`` is the only place a Kafka secret is
revealed: straight into a client's configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self

from kafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)
from kafka.structs import OffsetAndMetadata, TopicPartition
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from worker.core.logs import get_logger
from worker.core.messages import DEFAULT_DEAD_LETTER_BYTES
from worker.core.records import Offsets

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
Delivery = Literal["at-least-once", "exactly-once"]

REFUSED_COMMIT = (CommitFailedError, IllegalGenerationError, UnknownMemberIdError, RebalanceInProgressError)
"""kafka-python's ways of saying the group moved on: the batch's commit is refused."""

log = get_logger("kafka")


class KafkaSettings(BaseModel):
    """Where documents come from and where flags go; how the consumer group behaves."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    bootstrap_servers: str = Field(
        default="localhost:9092", description="Comma-separated `host:port` list of brokers to bootstrap from."
    )
    client_id: str = Field(
        default="twinflag-worker", description="Client id sent to the brokers (for their logs)."
    )
    group_id: str = Field(
        default="twinflag", description="Consumer group; partitions are shared between its workers."
    )
    input_topic: str = Field(default="documents", description="Topic of incoming documents.")
    flags_topic: str = Field(
        default="duplicate-flags", description="Topic of duplicate flags, keyed by document id."
    )
    dlq_topic: str = Field(
        default="documents.dlq",
        description="Dead-letter topic: bad records with the reason and source position.",
    )
    decisions_topic: str | None = Field(
        default=None, description="Topic for every decision, flagged or not; unset turns it off."
    )
    verdicts_topic: str | None = Field(
        default=None,
        description="Topic of moderators' verdicts on flags (compacted, keyed `tenant/id/duplicate_of`), "
        "read whole by every worker; unset turns the feedback loop off.",
    )
    thresholds_topic: str | None = Field(
        default=None,
        description="Topic the decision points learned from verdicts are announced on (keyed by tenant); "
        "unset: they are applied and logged only.",
    )
    security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT",
        description="Transport to the brokers; the SASL ones need a mechanism and credentials.",
    )
    sasl_mechanism: SaslMechanism | None = Field(
        default=None, description="SASL mechanism; required with SASL_PLAINTEXT or SASL_SSL."
    )
    sasl_username: str | None = Field(default=None, description="SASL user; required with a SASL protocol.")
    sasl_password: SecretStr | None = Field(
        default=None, description="SASL password (secret, never logged); required with a SASL protocol."
    )
    ssl_cafile: Path | None = Field(
        default=None,
        description="PEM file of CAs to verify the brokers with (SSL/SASL_SSL); unset: system CAs.",
    )
    ssl_certfile: Path | None = Field(default=None, description="PEM client certificate for mutual TLS.")
    ssl_keyfile: Path | None = Field(default=None, description="PEM private key of the client certificate.")
    ssl_check_hostname: bool = Field(
        default=True, description="Check that the broker certificate names its host."
    )
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        default="earliest",
        description="Where a group with no committed offset starts; `earliest` loses no post.",
    )
    max_poll_records: int = Field(default=256, ge=1, description="Most records in one batch.")
    poll_timeout_ms: int = Field(
        default=500, ge=1, description="Longest wait to fill a batch before processing what has arrived."
    )
    order_wait_ms: int = Field(
        default=5_000,
        ge=0,
        description="Longest a fetched record waits for the other partitions to be read up to its "
        "timestamp, so a backlog is decided in timestamp order across partitions and reruns agree; a "
        "stream that is read to its end never waits. 0: decide records in the order they are fetched.",
    )
    max_poll_interval_ms: int = Field(
        default=300_000,
        ge=1_000,
        description="Longest time between polls before the group evicts the worker; keep it well above "
        "the slowest batch (the worker halves its batch size when a batch takes more than half of it).",
    )
    session_timeout_ms: int = Field(
        default=10_000,
        ge=1_000,
        description="Heartbeat session: a crashed worker's partitions move after this long (heartbeats "
        "run on a background thread, so a slow batch does not end the session). On Tansu a group join "
        "takes about half of it and must finish within `max_poll_interval_ms` + 5 s.",
    )
    request_timeout_ms: int = Field(
        default=30_000, ge=1_000, description="Timeout of one request to a broker."
    )
    flush_timeout_s: float = Field(
        default=30.0, gt=0, description="Longest wait for the brokers to acknowledge a batch's output."
    )
    delivery: Delivery = Field(
        default="at-least-once",
        description="`at-least-once`: flush the idempotent producer, then commit offsets. `exactly-once`: "
        "flags and offsets in one Kafka transaction (needs `transactional_id`).",
    )
    transactional_id: str | None = Field(
        default=None, description="Transactional id, unique per worker instance; required for `exactly-once`."
    )
    dlq_max_message_bytes: int | None = Field(
        default=None,
        ge=1024,
        description="Largest message the dead-letter topic accepts (its `max.message.bytes`); a dead letter "
        "that would be larger keeps only the first bytes of the original. Unset: read from the broker at "
        "start, or 1,000,000 (under Kafka's default) when the broker does not say.",
    )
    create_topics: bool = Field(
        default=False,
        description="Create the input, flags, dead-letter, decisions, verdicts and thresholds topics at "
        "start if missing (the last two compacted).",
    )
    partitions: int = Field(default=3, ge=1, description="Partitions of topics created by `create_topics`.")
    replication_factor: int = Field(
        default=1, ge=1, description="Replication factor of topics created by `create_topics`."
    )

    @model_validator(mode="after")
    def _check_credentials(self) -> Self:
        if self.security_protocol.startswith("SASL_"):
            missing = [
                name
                for name, value in (
                    ("sasl_mechanism", self.sasl_mechanism),
                    ("sasl_username", self.sasl_username),
                    ("sasl_password", self.sasl_password),
                )
                if value is None
            ]
            if missing:
                raise ValueError(f"security_protocol={self.security_protocol} needs {', '.join(missing)}")
        if self.delivery == "exactly-once" and not self.transactional_id:
            raise ValueError("delivery=exactly-once needs a transactional_id")
        return self


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


def dlq_max_bytes(max_message_bytes: int) -> int:
    """A dead letter carries the original bytes in base64 (4/3 of them) plus its reason and source."""
    return 2 * max_message_bytes + 64 * 1024


def consumer_options(kafka: KafkaSettings, max_message_bytes: int, backoff_max_s: float) -> dict[str, Any]:
    """A consumer with auto-commit off, reading committed transactions only, in the worker's group."""
    return {
        **kafka_options(kafka),
        "group_id": kafka.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": kafka.auto_offset_reset,
        "isolation_level": "read_committed",
        "allow_auto_create_topics": False,
        "max_poll_records": kafka.max_poll_records,
        "max_poll_interval_ms": kafka.max_poll_interval_ms,
        "session_timeout_ms": kafka.session_timeout_ms,
        "heartbeat_interval_ms": min(3000, kafka.session_timeout_ms // 3),
        "receive_message_max_bytes": max(100_000_000, 2 * max_message_bytes),
        "reconnect_backoff_max_ms": int(backoff_max_s * 1000),
    }


def producer_options(kafka: KafkaSettings, max_message_bytes: int, backoff_max_s: float) -> dict[str, Any]:
    """An idempotent producer (``acks=all``) whose requests fit the largest dead letter."""
    return {
        **kafka_options(kafka),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "max_block_ms": kafka.request_timeout_ms,
        "max_request_size": dlq_max_bytes(max_message_bytes),
        "reconnect_backoff_max_ms": int(backoff_max_s * 1000),
    }


def ensure_topics(kafka: KafkaSettings, max_message_bytes: int) -> list[str]:
    """Create the worker's topics when missing (``TWINFLAG_KAFKA__CREATE_TOPICS``); returns those created."""
    from kafka import KafkaAdminClient

    names = [kafka.input_topic, kafka.flags_topic, kafka.dlq_topic]
    names += [kafka.decisions_topic] if kafka.decisions_topic else []
    compacted = [name for name in (kafka.verdicts_topic, kafka.thresholds_topic) if name]
    names += compacted
    spec: dict[str, dict[str, Any]] = {
        name: {"num_partitions": kafka.partitions, "replication_factor": kafka.replication_factor}
        for name in names
    }
    spec[kafka.dlq_topic]["configs"] = {"max.message.bytes": str(dlq_max_bytes(max_message_bytes))}
    # the broker's clock says "earlier": a producer cannot backdate a repost to before its original
    spec[kafka.input_topic]["configs"] = {"message.timestamp.type": "LogAppendTime"}
    for name in compacted:  # the last verdict on a pair, the last point of a tenant
        spec[name]["configs"] = {"cleanup.policy": "compact"}
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


RECORD_OVERHEAD = 512
"""Bytes of a Kafka record batch that are not the dead letter's key and value (headers, lengths)."""


def dead_letter_limit(kafka: KafkaSettings, created: bool, max_message_bytes: int) -> int:
    """How large a dead letter (value and key) may be: the setting, else the limit of a topic this
    worker just created, else what the broker reports for the topic, else the safe default."""
    if kafka.dlq_max_message_bytes is not None:
        limit = kafka.dlq_max_message_bytes
    elif created:
        limit = dlq_max_bytes(max_message_bytes)
    else:
        limit = topic_message_limit(kafka, kafka.dlq_topic) or DEFAULT_DEAD_LETTER_BYTES + RECORD_OVERHEAD
    return limit - RECORD_OVERHEAD


def topic_message_limit(kafka: KafkaSettings, topic: str) -> int | None:
    """The topic's ``max.message.bytes`` as the broker reports it; None when it does not say (Tansu
    reports no configs) or cannot be asked."""
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(**kafka_options(kafka))
        try:
            described = admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": None})],
                config_filter="all",
            )
        finally:
            admin.close()
    except (KafkaError, OSError, ValueError) as error:
        log.warning("dlq_limit_unknown", topic=topic, error=type(error).__name__)
        return None
    return message_limit_of(described, topic)


def message_limit_of(described: Any, topic: str) -> int | None:
    """``max.message.bytes`` out of a ``describe_configs`` answer (``{"topic": {name: {key: {...}}}}``)."""
    try:
        entry = described["topic"][topic]["max.message.bytes"]
        return int(entry["value"] if isinstance(entry, dict) else entry)
    except (KeyError, TypeError, ValueError):
        return None


def to_kafka(offsets: Offsets) -> dict[TopicPartition, OffsetAndMetadata]:
    """Offsets in kafka-python's commit form."""
    return {TopicPartition(t, p): OffsetAndMetadata(offset, "", -1) for (t, p), offset in offsets.items()}
