"""Typed messages in and out, and the builders of the outgoing ones. Parsing is ``worker.core.parse``.

In (topic ``documents``): ``{"id", "text", "tenant"?, "created_at"?, "meta"?}`` or a deletion
``{"id", "tenant"?, "deleted": true}``; a Kafka tombstone (null value, key = document id) deletes that id
in every tenant. Out: ``DuplicateFlag`` (flags topic), ``Decision`` (optional decisions topic) and
``DeadLetter`` (DLQ).

Determinism: every outgoing message is serialised by ``dumps`` (sorted keys, compact separators, UTF-8,
scores rounded to 6 decimals) and carries ``detected_at`` derived from the *record's* timestamp, not the
wall clock. A batch replayed after a crash therefore republishes byte-identical messages, which a keyed
consumer or a compacted topic collapses into one.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from worker.core.decide import DecidedBy, Verdict, round_score
from worker.core.normalize import ExactBy, normal_forms
from worker.core.ports import Stage
from worker.core.records import Record

DEFAULT_MAX_ID_CHARS = 256
MAX_TENANT_CHARS = 256

ReasonCode = Literal[
    "oversized",
    "invalid_utf8",
    "invalid_json",
    "too_deep",
    "not_object",
    "missing_field",
    "wrong_type",
    "empty_id",
    "id_too_long",
    "invalid_id",
    "invalid_tenant",
    "invalid_created_at",
    "invalid_unicode",
    "empty_text",
    "invalid_tombstone",
    "invalid_verdict",
]
Score = Annotated[float, AfterValidator(round_score)]
"""Scores leave the worker rounded to 6 decimals, so replays print the same bytes."""


# --------------------------------------------------------------------------------------------- in


class Document(BaseModel):
    """One post. Strict types: a number is not an id. Unknown fields are ignored.

    Validate with ``context={"max_id_chars": n}`` to change the id limit (default 256).
    """

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    id: str = Field(min_length=1)
    text: str
    tenant: str = Field(default="default", min_length=1, max_length=MAX_TENANT_CHARS)
    created_at: datetime | None = None
    meta: dict[str, Any] | None = None

    @field_validator("id")
    @classmethod
    def _id_fits(cls, value: str, info: ValidationInfo) -> str:
        return _check_id_length(value, info)

    @cached_property
    def normal_forms(self) -> tuple[str, str]:
        """``normalize``'s text and its steps' fingerprints (``worker.core.normalize.normal_forms``)."""
        return normal_forms(self.text)

    @property
    def normalized_text(self) -> str:
        """What the content hash is taken over (``worker.core.normalize``); computed once per document."""
        return self.normal_forms[0]

    @field_validator("created_at", mode="before")
    @classmethod
    def _iso_8601(cls, value: object) -> object:
        return iso_8601(value)


class Deletion(BaseModel):
    """Remove a document from the index. ``tenant=None`` means every tenant (a tombstone names none).

    In JSON, a missing tenant means ``"default"`` (as for documents) and an explicit null means all.
    """

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    id: str = Field(min_length=1)
    tenant: str | None = Field(default="default", min_length=1, max_length=MAX_TENANT_CHARS)
    deleted: Literal[True] = True

    @field_validator("id")
    @classmethod
    def _id_fits(cls, value: str, info: ValidationInfo) -> str:
        return _check_id_length(value, info)


class ModeratorVerdict(BaseModel):
    """A moderator's verdict on a pair (topic ``verdicts``, keyed ``tenant/id/duplicate_of``): is ``id`` a
    duplicate of ``duplicate_of``? The texts are optional; without them the pair is found in the index.

    The last verdict on a key wins (the topic is compacted). ``worker.core.feedback`` says what each
    verdict changes."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    id: str = Field(min_length=1)
    duplicate_of: str = Field(min_length=1)
    tenant: str = Field(default="default", min_length=1, max_length=MAX_TENANT_CHARS)
    verdict: Literal["duplicate", "not_duplicate"]
    at: datetime
    reviewer: str | None = Field(default=None, max_length=MAX_TENANT_CHARS)
    text: str | None = None
    duplicate_text: str | None = None

    @field_validator("id", "duplicate_of")
    @classmethod
    def _id_fits(cls, value: str, info: ValidationInfo) -> str:
        return _check_id_length(value, info)

    @field_validator("at", mode="before")
    @classmethod
    def _iso_8601(cls, value: object) -> object:
        return iso_8601(value)

    @property
    def key(self) -> str:
        """The topic key: one verdict per pair and tenant survives compaction."""
        return f"{self.tenant}/{self.id}/{self.duplicate_of}"


def iso_8601(value: object) -> object:
    """JSON has no datetime: accept an ISO-8601 string only (not a number of seconds)."""
    if value is None or isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("created_at_type", "must be an ISO-8601 string")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise PydanticCustomError("created_at_format", "not an ISO-8601 date-time") from None


def _check_id_length(value: str, info: ValidationInfo) -> str:
    limit = (info.context or {}).get("max_id_chars", DEFAULT_MAX_ID_CHARS)
    if len(value) > limit:
        detail = {"length": len(value), "limit": limit}
        raise PydanticCustomError("id_too_long", "{length} chars > {limit}", detail)
    return value


# -------------------------------------------------------------------------------------------- out


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Out):
    """Where the record came from, so a flag or a dead letter can be traced back to its offset."""

    topic: str
    partition: int
    offset: int


class Match(_Out):
    id: str
    score: Score


class DuplicateFlag(_Out):
    """What a moderator audits: the post, the earlier post it repeats, how closely, and by which model.

    ``score`` is the cosine of the two posts' vectors; ``probability`` the model's calibrated P(duplicate)
    for the pair (null for an uncalibrated model), which means the same across models; ``threshold`` the
    decision point it passed (a probability when the model is calibrated, else a cosine).
    ``decided_by`` names the stage that decided (``exact``, ``encoder`` or ``verifier``, whose own score
    is ``verifier_score``); ``stage`` says where the match was found (``exact``, ``batch``, ``index``).
    """

    id: str
    duplicate_of: str
    duplicate_of_at: str
    """When the earlier post arrived: its record time (ISO-8601, UTC), the clock "earlier" is read on."""
    score: Score
    probability: Score | None
    threshold: Score
    matches: list[Match]
    tenant: str
    stage: Stage
    decided_by: DecidedBy
    verifier_score: Score | None
    model: str
    detected_at: str
    source: Source
    meta: dict[str, Any] | None = None
    """The post's own ``meta``, as sent, when it is at most ``MAX_META_BYTES`` of JSON; else null."""
    duplicate_of_created_at: str | None = None
    """The earlier post's own ``created_at``, as it sent it (null when it had none)."""
    duplicate_of_meta: dict[str, Any] | None = None
    """The earlier post's ``meta``, when it is at most ``MAX_STORED_META_BYTES`` of JSON; else null."""
    exact_by: ExactBy | None = None
    """For an exact match, what made the two texts equal: ``identical``, or the last normalisation step
    needed (``invisible`` characters, ``compatibility`` forms, ``whitespace``, ``case``)."""


class Decision(_Out):
    """The outcome for every document, flagged or not. ``score`` is the best earlier match's, if any."""

    id: str
    tenant: str
    flagged: bool
    duplicate_of: str | None
    score: Score | None
    probability: Score | None
    matches: list[Match]
    stage: Stage | None
    decided_by: DecidedBy | None
    verifier_score: Score | None
    model: str
    source: Source
    meta: dict[str, Any] | None = None
    """As on a flag: the post's own ``meta``, when small enough."""


class DeadLetter(_Out):
    """A record the worker could not use, with everything needed to fix and replay it.

    ``code`` is machine-readable; ``reason`` is ``"<code>: <detail>"``. ``key_b64`` / ``value_b64`` hold
    the original bytes (base64, null when the record had none). A record too large to republish whole
    (``oversized``) keeps only its first bytes: ``value_bytes`` is the original length and
    ``truncated`` says the stored bytes are a prefix — the full record is still at ``source``.
    """

    code: ReasonCode
    reason: str
    key_b64: str | None
    value_b64: str | None
    value_bytes: int | None
    truncated: bool
    source: Source
    model: str
    detected_at: str


class LearnedPoint(_Out):
    """A tenant's decision point re-chosen from its moderators' verdicts (topic ``thresholds``, keyed by
    tenant and model): the worker applies it at once; this event tells people and other tools.

    ``unit`` says what the point compares with: a ``probability`` for a calibrated model, else a
    ``cosine``. ``precision_low`` is the 95% Wilson lower bound of precision over the reviewed pairs at
    or above the point, ``f1`` the F1 over all of them; ``at`` the time of the last verdict counted."""

    tenant: str
    point: Score
    previous: Score
    unit: Literal["probability", "cosine"]
    verdicts: int
    duplicates: int
    precision_low: Score
    f1: Score
    model: str
    at: str


def dumps(message: BaseModel) -> bytes:
    """The one serialisation of outgoing messages: sorted keys, compact, UTF-8. Deterministic."""
    return canonical_json(message.model_dump(mode="json"))


def canonical_json(data: dict[str, Any]) -> bytes:
    """``dumps`` for a message already dumped to a dict (``model_dump(mode="json")``)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp_iso(timestamp_ms: int) -> str:
    """Record timestamp → ``2024-05-01T12:00:00.000Z``; out-of-range timestamps clamp to the calendar."""
    try:
        moment = _EPOCH + timedelta(milliseconds=timestamp_ms)
    except OverflowError:
        moment = datetime.max.replace(tzinfo=UTC) if timestamp_ms > 0 else datetime.min.replace(tzinfo=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class DeadLetterReason:
    """Why a record is unusable. Per-record problems are data, not exceptions."""

    code: ReasonCode
    detail: str

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


# ------------------------------------------------------------------------------------- builders

MAX_KEY_BYTES = 16 * 1024
"""A dead letter's key (and ``key_b64``) keeps at most this much of the original."""
DEFAULT_DEAD_LETTER_BYTES = 1_000_000
"""The largest dead letter (value and key) when the dead-letter topic's limit is not known: under
Kafka's default ``max.message.bytes`` (1,048,588) with room for the record batch's own overhead."""


def source_of(record: Record) -> Source:
    return Source(topic=record.topic, partition=record.partition, offset=record.offset)


def decided_by(verdict: Verdict) -> DecidedBy | None:
    """Who decided; a decision stored before verdicts said so was the hash's or the encoder's."""
    best = verdict.best
    if verdict.decided_by is not None or best is None:
        return verdict.decided_by
    return "exact" if best.stage == "exact" else "encoder"


def decision_message(record: Record, document: Document, verdict: Verdict, model: str) -> Decision:
    """The outcome for one document, flagged or not."""
    match, best = verdict.duplicate_of, verdict.best
    return Decision(
        id=document.id,
        tenant=document.tenant,
        flagged=verdict.flagged,
        duplicate_of=None if match is None else match.doc_id,
        score=None if best is None else best.score,
        probability=verdict.probability,
        matches=[Match(id=c.doc_id, score=c.score) for c in verdict.matches],
        stage=None if match is None else match.stage,
        decided_by=decided_by(verdict),
        verifier_score=verdict.verifier_score,
        model=model,
        source=source_of(record),
        meta=meta_of(document),
    )


MAX_META_BYTES = 4096
"""The largest ``meta`` (compact JSON) a flag or decision carries back: enough for a thread id, an
author, a URL; a larger one stays in the input record (``source`` says where) and is null here."""


def meta_of(document: Document) -> dict[str, Any] | None:
    """The document's ``meta`` to pass through, or None when it has none or it is too large."""
    if not document.meta:
        return None
    size = len(json.dumps(document.meta, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    return document.meta if size <= MAX_META_BYTES else None


MAX_STORED_META_BYTES = 1024
"""The largest ``meta`` kept with a post in the index, for the flags of later posts that repeat it: an
index holds millions of posts, so it keeps less than a flag carries of its own post."""


def stored_meta(document: Document) -> str | None:
    """The document's ``meta`` as kept in the index (compact JSON), or None when absent or too large."""
    if not document.meta:
        return None
    text = json.dumps(document.meta, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    return text if len(text.encode("utf-8")) <= MAX_STORED_META_BYTES else None


def flag_message(
    record: Record, document: Document, verdict: Verdict, threshold: float, model: str
) -> DuplicateFlag | None:
    """What a moderator audits, for a flagged document; None when the document is not flagged."""
    match = verdict.duplicate_of
    if match is None:
        return None
    return DuplicateFlag(
        id=document.id,
        duplicate_of=match.doc_id,
        duplicate_of_at=timestamp_iso(match.order[0]),
        score=match.score,
        probability=verdict.probability,
        threshold=threshold,
        matches=[Match(id=c.doc_id, score=c.score) for c in verdict.matches],
        tenant=document.tenant,
        stage=match.stage,
        decided_by=decided_by(verdict) or "encoder",
        verifier_score=verdict.verifier_score,
        model=model,
        detected_at=timestamp_iso(record.timestamp_ms),
        source=source_of(record),
        meta=meta_of(document),
        duplicate_of_created_at=None if verdict.matched is None else verdict.matched.created_at,
        duplicate_of_meta=None if verdict.matched is None else verdict.matched.meta,
        exact_by=None if verdict.matched is None else verdict.matched.exact_by,
    )


def clip(data: bytes | None, limit: int) -> bytes | None:
    return data if data is None or len(data) <= limit else data[:limit]


def dead_letter_message(
    record: Record, reason: DeadLetterReason, model: str, max_value_bytes: int, max_bytes: int
) -> DeadLetter:
    """The dead letter of one record, no larger than ``max_bytes`` with its key, whatever the record.

    The dead-letter topic refuses a message over its ``max.message.bytes`` with an error no retry can
    fix, so a dead letter that did not fit would stop the stream on that batch. The original bytes go
    in base64 (4/3 of their size): the dead letter keeps at most the first ``max_value_bytes`` of them
    (the input limit: an oversized record is not republished whole), fewer when they would not fit,
    and says so (``truncated``, ``value_bytes``); the record itself stays readable at its source
    position. A key over ``MAX_KEY_BYTES`` is cut the same way.
    """
    key = clip(record.key, MAX_KEY_BYTES)
    fixed = dead_letter(record, reason, model, key, b"" if record.value is not None else None, True)
    room = max_bytes - len(dumps(fixed)) - len(key or b"")
    value = clip(record.value, min(max_value_bytes, max(0, room) // 4 * 3))  # base64: 3n bytes → 4n chars
    return dead_letter(record, reason, model, key, value, key != record.key or value != record.value)


def dead_letter(
    record: Record,
    reason: DeadLetterReason,
    model: str,
    key: bytes | None,
    value: bytes | None,
    truncated: bool,
) -> DeadLetter:
    return DeadLetter(
        code=reason.code,
        reason=str(reason),
        key_b64=b64(key),
        value_b64=b64(value),
        value_bytes=None if record.value is None else len(record.value),
        truncated=truncated,
        source=source_of(record),
        model=model,
        detected_at=timestamp_iso(record.timestamp_ms),
    )
