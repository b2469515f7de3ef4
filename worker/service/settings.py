"""The worker's settings: one ``WorkerSettings`` read from ``TWINFLAG_*`` environment variables.

Built once in ``__main__`` and passed down; nothing else reads ``os.environ``. Nested groups use ``__``:
``TWINFLAG_KAFKA__BOOTSTRAP_SERVERS``, ``TWINFLAG_INDEX__API_KEY``, ``TWINFLAG_MODEL__PATH``. Credentials
are ``SecretStr`` with no default: they never appear in ``repr``, logs or errors, and are revealed only
where a client is built. ``settings_markdown()`` renders every setting for the README.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any, Literal, Self, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "TWINFLAG_"
NESTED_DELIMITER = "__"

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
Delivery = Literal["at-least-once", "exactly-once"]


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
    create_topics: bool = Field(
        default=False,
        description="Create the input, flags, dead-letter and decisions topics at start if missing.",
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


class IndexSettings(BaseModel):
    """The worker's memory: Qdrant Edge on local disk, or a Qdrant server."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    backend: Literal["embedded", "qdrant"] = Field(
        default="embedded",
        description="`embedded` (Qdrant Edge on disk) or `qdrant` (a server); `qdrant` if `url` set.",
    )
    path: Path = Field(default=Path("data/index"), description="Directory of the embedded index.")
    url: str | None = Field(default=None, description="Qdrant server URL, e.g. `https://qdrant:6333`.")
    api_key: SecretStr | None = Field(default=None, description="Qdrant API key (secret, never logged).")
    https: bool | None = Field(
        default=None, description="Force TLS to the Qdrant server; unset: from the URL scheme."
    )
    collection: str = Field(default="twinflag", description="Qdrant collection name.")
    timeout_s: float = Field(default=10.0, gt=0, description="Timeout of one request to the Qdrant server.")
    hnsw_m: int = Field(default=16, ge=4, description="HNSW graph degree of a new collection.")
    hnsw_ef_construct: int = Field(
        default=100, ge=4, description="HNSW build-time beam width of a new collection."
    )
    hnsw_ef: int = Field(default=128, ge=1, description="HNSW search-time beam width.")
    quantization: Literal["none", "scalar"] = Field(
        default="none", description="Vector quantisation of a new collection (`scalar`: int8, 4x smaller)."
    )
    shard_number: int | None = Field(
        default=None,
        ge=1,
        description="Qdrant server: shards of a new collection (unset: the server's default).",
    )
    replication_factor: int | None = Field(
        default=None, ge=1, description="Qdrant server: copies of each shard of a new collection."
    )
    write_consistency_factor: int | None = Field(
        default=None, ge=1, description="Qdrant server: replicas that must confirm a write (new collection)."
    )
    optimize_every: int = Field(
        default=10_000,
        ge=1,
        description="Embedded index: run the segment optimiser after this many new points.",
    )

    @model_validator(mode="before")
    @classmethod
    def _backend_from_url(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("url") and "backend" not in data:
            return {**data, "backend": "qdrant"}
        return data

    @model_validator(mode="after")
    def _check_url(self) -> Self:
        if self.backend == "qdrant" and not self.url:
            raise ValueError("index backend qdrant needs a url")
        return self


class ModelSettings(BaseModel):
    """The model directory the trainer exports, and how to run it."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    path: Path = Field(
        default=Path("models/default"), description="Model directory (manifest.json + safetensors)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="`auto`: CUDA when present, else CPU."
    )
    max_batch_tokens: int = Field(default=16_384, ge=1, description="Token budget of one forward pass.")
    max_batch_size: int = Field(default=128, ge=1, description="Most texts in one forward pass.")
    cpu_kernel_cache: int = Field(
        default=64,
        ge=0,
        description="Compiled CPU kernels (oneDNN primitives) kept for reuse, one per batch shape. A "
        "stream's batches come in many shapes: with oneDNN's own default (1024), embedding 27k posts in "
        "stream-sized batches grew the process by 800 MiB; 64 holds it flat at about 6% less speed, 0 "
        "keeps the least memory at about 10% less.",
    )
    threshold: float | None = Field(
        default=None, gt=0, le=1, description="Decision threshold (cosine); unset: the model manifest's."
    )


class WorkerSettings(BaseSettings):
    """Everything `python -m worker run` reads from the environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        frozen=True,
        extra="forbid",
        hide_input_in_errors=True,  # a validation error must not print a secret it was given
    )

    kafka: KafkaSettings = Field(
        default_factory=lambda: KafkaSettings(), description="Kafka client settings."
    )
    index: IndexSettings = Field(
        default_factory=lambda: IndexSettings(), description="Vector index settings."
    )
    model: ModelSettings = Field(default_factory=lambda: ModelSettings(), description="Model settings.")
    top_k: int = Field(default=5, ge=1, le=100, description="Matches listed on a flag (best first).")
    max_message_bytes: int = Field(
        default=1_000_000, ge=1, description="Records larger than this go to the dead-letter topic."
    )
    metrics_host: str = Field(
        default="0.0.0.0",  # noqa: S104 -- probes and scrapers reach the container from outside
        description="Address of the metrics, /healthz and /readyz endpoint.",
    )
    metrics_port: int | None = Field(
        default=9108,
        ge=0,
        le=65535,
        description="Port of that endpoint (0: any free port, logged at start).",
    )
    shutdown_timeout_s: float = Field(
        default=10.0, gt=0, description="Bound on closing the clients after the last batch on SIGTERM/SIGINT."
    )
    backoff_initial_s: float = Field(
        default=0.5,
        gt=0,
        description="First wait after the broker or index is unavailable; doubles per failure.",
    )
    backoff_max_s: float = Field(
        default=30.0, gt=0, description="Longest wait between retries while unavailable."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Log level.")
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="`auto`: console on a terminal, JSON lines otherwise."
    )


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(f'`"{arg}"`' for arg in get_args(annotation))
    if origin in (Union, types.UnionType):
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        inner = " \\| ".join(_type_name(arg) for arg in args)
        return f"{inner} (optional)" if len(args) < len(get_args(annotation)) else inner
    if isinstance(annotation, type):
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            annotation.__name__, annotation.__name__
        )
    return str(annotation)


def _rows(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    for name, field in model.model_fields.items():
        env = f"{prefix}{name.upper()}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += _rows(annotation, env + NESTED_DELIMITER)
            continue
        if field.is_required():
            default = "required"
        elif field.default is None:
            default = "—"
        else:
            shown = str(field.default).lower() if isinstance(field.default, bool) else str(field.default)
            default = f"`{shown}`"
        rows.append((f"`{env}`", _type_name(annotation), default, field.description or ""))
    return rows


def settings_markdown() -> str:
    """Every setting as a Markdown table: environment variable, type, default, description."""
    lines = ["| Variable | Type | Default | Description |", "|---|---|---|---|"]
    lines += [
        f"| {env} | {kind} | {default} | {text} |"
        for env, kind, default, text in _rows(WorkerSettings, ENV_PREFIX)
    ]
    return "\n".join(lines) + "\n"
