"""Typed messages in, and the builders of the outgoing ones (``worker.core.outgoing``) from a record
and its verdict. Parsing is ``worker.core.parse``.

In (topic ``documents``): ``{"id", "text", "tenant"?, "created_at"?, "meta"?}`` or a deletion
``{"id", "tenant"?, "deleted": true}``; a Kafka tombstone (null value, key = document id) deletes that id
in every tenant. Out: ``DuplicateFlag`` (flags topic), ``Decision`` (optional decisions topic) and
``DeadLetter`` (DLQ), each stamped with the record's time, never the wall clock, so a replay repeats it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from worker.core.decide import DecidedBy, Verdict
from worker.core.normalize import normal_forms
from worker.core.outgoing import (
    DeadLetter,
    Decision,
    DuplicateFlag,
    Match,
    ReasonCode,
    Source,
    b64,
    dumps,
    timestamp_iso,
)
from worker.core.records import Record

DEFAULT_MAX_ID_CHARS = 256
MAX_TENANT_CHARS = 256

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
