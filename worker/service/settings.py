"""The worker's settings: one ``WorkerSettings`` read from ``TWINFLAG_*`` environment variables.

Each room owns its group (``worker.kafka.config.KafkaSettings``, ``worker.index.config.IndexSettings``,
``worker.model.config.ModelSettings``); this class composes them with the process-wide settings. Built
once by the command that runs and passed down; nothing else reads ``os.environ``. Nested groups use ``__``:
``TWINFLAG_KAFKA__BOOTSTRAP_SERVERS``, ``TWINFLAG_INDEX__API_KEY``, ``TWINFLAG_MODEL__PATH``. Credentials
are ``SecretStr`` with no default: they never appear in ``repr``, logs or errors, and are revealed only
where a client is built. ``settings_markdown()`` renders every setting for the README.
"""

from __future__ import annotations

import difflib
import json
import os
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.core.feedback import Recalibration
from worker.core.parse import TombstoneScope
from worker.index.config import IndexSettings
from worker.kafka.config import KafkaSettings
from worker.model.config import ModelSettings

ENV_PREFIX = "TWINFLAG_"
NESTED_DELIMITER = "__"


class HttpSettings(BaseModel):
    """The HTTP API of ``python -m worker serve`` (``worker.service.http``): ``TWINFLAG_HTTP__*``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(default="127.0.0.1", description="Address of the HTTP API (`0.0.0.0` in a container).")
    port: int = Field(default=8080, ge=0, le=65535, description="Port of the HTTP API.")
    keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='API keys by tenant, JSON: `{"tenant-a": "key-a"}`. A key sees and changes only its '
        "tenant's documents. `serve` refuses to start without one.",
    )
    max_body_bytes: int = Field(
        default=262_144, ge=1024, description="Largest request body; larger ones get 413."
    )
    max_text_chars: int = Field(
        default=20_000, ge=1, description="Longest text a request may carry; longer ones get 422."
    )
    timeout_s: float = Field(
        default=10.0, gt=0, description="Longest a request waits for its answer; then 503 (`timeout`)."
    )
    max_batch: int = Field(
        default=64, ge=1, description="Most requests answered by one batch step (checks wait together)."
    )
    max_pending: int = Field(
        default=1024, ge=1, description="Requests queued at most; more get 503 (`busy`) at once."
    )

    @field_validator("keys")
    @classmethod
    def _distinct(cls, keys: dict[str, SecretStr]) -> dict[str, SecretStr]:
        values = [key.get_secret_value() for key in keys.values()]
        if len(set(values)) != len(values) or any(len(value) < 16 for value in values):
            raise ValueError("each tenant needs its own key of at least 16 characters")
        return keys


class FeedbackSettings(BaseModel):
    """Moderators' verdicts (``worker.core.feedback``): ``TWINFLAG_FEEDBACK__*``. The worker reads them
    from ``TWINFLAG_KAFKA__VERDICTS_TOPIC``; ``serve`` and the Python API keep them in ``store``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_verdicts: int = Field(
        default=40, ge=2, description="Verdicts a tenant needs before its decision point is re-chosen."
    )
    min_each: int = Field(
        default=5,
        ge=1,
        description="...of which at least this many of each answer; the point goes below the model's only "
        "where reviewers rejected this many pairs below it.",
    )
    min_precision: float = Field(
        default=0.8,
        gt=0,
        lt=1,
        description="A point goes down only where the reviewed pairs it would add are duplicates at least "
        "this often, by the 95% Wilson lower bound.",
    )
    min_gain: float = Field(
        default=0.01,
        ge=0,
        lt=1,
        description="A learned point must beat the current one's F1 over the reviewed pairs by this much.",
    )
    store: Path | None = Field(
        default=None,
        description="File of verdicts and what their pairs resolved to (JSON lines, appended): `serve` and "
        "`twinflag.Detector` keep their verdicts there, the worker what a later-deleted post's pair was. "
        "Unset: `verdicts.jsonl` in an embedded index's directory; none with a Qdrant server.",
    )
    catch_up_s: float = Field(
        default=30.0,
        gt=0,
        description="At start, longest the worker reads the verdicts topic before deciding posts.",
    )

    def rules(self) -> Recalibration:
        return Recalibration(self.min_verdicts, self.min_each, self.min_precision, self.min_gain)


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
    http: HttpSettings = Field(
        default_factory=lambda: HttpSettings(), description="HTTP API settings (`serve`)."
    )
    feedback: FeedbackSettings = Field(
        default_factory=lambda: FeedbackSettings(), description="Moderators' verdicts."
    )
    top_k: int = Field(default=5, ge=1, le=100, description="Matches listed on a flag (best first).")
    commit_interval_ms: int = Field(
        default=5000,
        ge=0,
        description="Longest a decided batch waits for its commit: the output and index flushes and the "
        "offset commit then cover every batch sent since (0: after every batch; a stop or an empty poll "
        "commits at once). Flushing the embedded index costs 50-400 ms at 100k points however little "
        "changed; a crash replays up to this much more work (byte-identical output). Exactly-once: "
        "flags become readable up to this late.",
    )
    max_message_bytes: int = Field(
        default=1_000_000, ge=1, description="Records larger than this go to the dead-letter topic."
    )
    tombstones: TombstoneScope = Field(
        default="all_tenants",
        description="What a Kafka tombstone (null value, key = id) deletes: `all_tenants` (that id in every "
        "tenant: one tenant only), `default_tenant`, or `refuse` (dead letter; multi-tenant deployments "
        'delete with `{"id", "tenant", "deleted": true}`).',
    )
    metrics_host: str = Field(
        default="0.0.0.0",  # noqa: S104 -- probes and scrapers reach the container from outside
        description="Address of the metrics, /healthz and /readyz endpoint (0.0.0.0: probes and scrapers "
        "reach a container from outside). It holds at most 256 connections, 3 s each: idle or slow "
        "clients cannot take the worker's file descriptors.",
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


OTHER_PROCESSES = ("TWINFLAG_TRAIN_",)
"""Prefixes another process of the project owns (the trainer's ``TrainSettings``): not the worker's."""


def setting_names() -> list[str]:
    """Every variable ``WorkerSettings`` reads: ``TWINFLAG_TOP_K``, ``TWINFLAG_KAFKA__BOOTSTRAP_SERVERS``...
    (a group may also be given whole, as JSON: ``TWINFLAG_KAFKA``)."""
    return [env for env, _, _ in _fields(WorkerSettings, ENV_PREFIX)]


def unknown_variables(environ: Mapping[str, str]) -> dict[str, list[str]]:
    """``TWINFLAG_*`` variables no setting reads (a typo is silently ignored otherwise), each with the
    closest setting names."""
    known = setting_names()
    return {
        name: _close_names(name.upper(), known)
        for name in sorted(environ)
        if name.upper().startswith(ENV_PREFIX)
        and not name.upper().startswith(OTHER_PROCESSES)
        and name.upper() not in known
    }


def _close_names(name: str, known: list[str]) -> list[str]:
    """Settings whose own name is the one given (``COLLECTION`` → ``INDEX__COLLECTION``), then the
    nearest spellings, compared without the shared prefix."""
    last = name.rsplit(NESTED_DELIMITER, 1)[-1].removeprefix(ENV_PREFIX)
    same = [k for k in known if k.rsplit(NESTED_DELIMITER, 1)[-1].removeprefix(ENV_PREFIX) == last]
    bare = {k.removeprefix(ENV_PREFIX): k for k in known}
    near = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), list(bare), n=2, cutoff=0.75)
    return list(dict.fromkeys([*same, *(bare[n] for n in near)]))[:3]


def load_from_environment() -> WorkerSettings:
    """The settings of this process: ``ValueError`` naming each ``TWINFLAG_*`` variable that no setting
    reads, with the close names; pydantic's ``ValidationError`` for a setting out of range."""
    unknown = unknown_variables(os.environ)
    if unknown:
        lines = [
            f"unknown setting {name}" + (f" (did you mean {' or '.join(close)}?)" if close else "")
            for name, close in unknown.items()
        ]
        raise UnknownSettingError("; ".join(lines))
    return WorkerSettings()


class UnknownSettingError(ValueError):
    """A ``TWINFLAG_*`` variable that no setting reads."""


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is dict:
        return "JSON object"
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


def _fields(model: type[BaseModel], prefix: str) -> list[tuple[str, FieldInfo, bool]]:
    """Every variable of a settings class, with its field and whether it is a group (whose own
    variable takes the group as JSON), each group followed by its members."""
    found: list[tuple[str, FieldInfo, bool]] = []
    for name, field in model.model_fields.items():
        env = f"{prefix}{name.upper()}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found.append((env, field, True))
            found += _fields(annotation, env + NESTED_DELIMITER)
        else:
            found.append((env, field, False))
    return found


def _rows(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    for env, field, group in _fields(model, prefix):
        if group:  # the table lists a group's members
            continue
        annotation = field.annotation
        if field.is_required():
            default = "required"
        elif field.default_factory is not None:
            default = f"`{json.dumps(field.get_default(call_default_factory=True))}`"
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
