"""Typed messages in and out, and ``parse_record``: raw bytes → a document, a deletion or a reason.

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
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from worker.core.decide import Stage, round_score
from worker.core.normalize import normalize

if TYPE_CHECKING:  # batch imports this module; the record type is only needed for annotations
    from worker.core.step import Record

DEFAULT_MAX_ID_CHARS = 256
MAX_TENANT_CHARS = 256
MAX_DEPTH = 64
"""Deepest JSON nesting accepted (the top-level object counts as 1): meta is opaque data, not a tree."""

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
    "invalid_tenant",
    "invalid_created_at",
    "invalid_unicode",
    "empty_text",
    "invalid_tombstone",
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
    def normalized_text(self) -> str:
        """What the content hash is taken over (``worker.core.normalize``); computed once per document."""
        return normalize(self.text)

    @field_validator("created_at", mode="before")
    @classmethod
    def _iso_8601(cls, value: object) -> object:
        """JSON has no datetime: accept an ISO-8601 string only (not a number of seconds)."""
        if value is None or isinstance(value, datetime):
            return value
        if not isinstance(value, str):
            raise PydanticCustomError("created_at_type", "must be an ISO-8601 string")
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise PydanticCustomError("created_at_format", "not an ISO-8601 date-time") from None


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
    """What a moderator audits: the post, the earlier post it repeats, how closely, and by which model."""

    id: str
    duplicate_of: str
    score: Score
    threshold: Score
    matches: list[Match]
    tenant: str
    stage: Stage
    model: str
    detected_at: str
    source: Source


class Decision(_Out):
    """The outcome for every document, flagged or not. ``score`` is the best earlier match's, if any."""

    id: str
    tenant: str
    flagged: bool
    duplicate_of: str | None
    score: Score | None
    matches: list[Match]
    stage: Stage | None
    model: str
    source: Source


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


# ---------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True, slots=True)
class DeadLetterReason:
    """Why a record is unusable. Per-record problems are data, not exceptions."""

    code: ReasonCode
    detail: str

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_record(record: Record, max_bytes: int, max_id_chars: int) -> Document | Deletion | DeadLetterReason:
    """Raw record → ``Document``, ``Deletion`` or the reason it is a dead letter. Never raises.

    Checks, in order: tombstone (null value) → size → UTF-8 → JSON (standard only: no NaN/Infinity) →
    nesting depth → an object → ``deleted: true`` → field types → no lone surrogate escapes in id,
    tenant or text (they cannot be encoded back to UTF-8) → text not empty after normalisation.
    Over-long text is accepted: the encoder truncates it to the model's token limit.
    """
    if record.value is None:
        return _tombstone(record.key, max_id_chars)
    if len(record.value) > max_bytes:
        return DeadLetterReason("oversized", f"{len(record.value)} bytes > {max_bytes}")
    try:
        raw = record.value.decode("utf-8")
    except UnicodeDecodeError as error:
        return DeadLetterReason("invalid_utf8", f"{error.reason} at byte {error.start}")
    try:
        obj = json.loads(raw, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        return DeadLetterReason("invalid_json", f"{error.msg} at line {error.lineno} col {error.colno}")
    except ValueError as error:  # NaN/Infinity, or an integer beyond Python's digit limit
        return DeadLetterReason("invalid_json", str(error)[:200])
    except RecursionError:
        return DeadLetterReason("too_deep", "nesting exceeds the JSON parser's recursion limit")
    if _depth(obj) > MAX_DEPTH:
        return DeadLetterReason("too_deep", f"nesting deeper than {MAX_DEPTH}")
    if not isinstance(obj, dict):
        return DeadLetterReason("not_object", f"top-level JSON {_json_type(obj)}, expected an object")
    context = {"max_id_chars": max_id_chars}
    deleted = obj.get("deleted", False)
    if not isinstance(deleted, bool):
        return DeadLetterReason("wrong_type", "deleted: must be a boolean")
    try:
        if deleted:
            deletion = Deletion.model_validate(obj, context=context)
            return _unicode_problem(deletion.id, deletion.tenant or "") or deletion
        document = Document.model_validate(obj, context=context)
    except ValidationError as error:
        return _reason(error)
    problem = _unicode_problem(document.id, document.tenant, document.text)
    if problem is not None:
        return problem
    if not document.normalized_text:
        return DeadLetterReason("empty_text", "text is empty after normalisation")
    return document


def _tombstone(key: bytes | None, max_id_chars: int) -> Deletion | DeadLetterReason:
    if key is None:
        return DeadLetterReason("invalid_tombstone", "null value and no key: nothing to delete")
    try:
        doc_id = key.decode("utf-8")
    except UnicodeDecodeError as error:
        detail = f"key is not UTF-8 ({error.reason} at byte {error.start})"
        return DeadLetterReason("invalid_tombstone", detail)
    if not doc_id:
        return DeadLetterReason("empty_id", "tombstone with an empty key")
    if len(doc_id) > max_id_chars:
        return DeadLetterReason("id_too_long", f"{len(doc_id)} chars > {max_id_chars}")
    return Deletion.model_validate({"id": doc_id, "tenant": None}, context={"max_id_chars": max_id_chars})


class _NonStandardJSONError(ValueError):
    pass


def _reject_constant(name: str) -> object:
    raise _NonStandardJSONError(f"non-standard constant {name}")


def _depth(obj: object) -> int:
    """Nesting depth without recursion (a scalar is 0, ``{}`` is 1)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(obj, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children: list[object] = list(node.values())
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def _json_type(obj: object) -> str:
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "boolean"
    if isinstance(obj, int | float):
        return "number"
    if isinstance(obj, str):
        return "string"
    return "array"


def _unicode_problem(*fields: str) -> DeadLetterReason | None:
    for name, value in zip(("id", "tenant", "text"), fields, strict=False):
        match = _LONE_SURROGATE.search(value)
        if match is not None:
            return DeadLetterReason("invalid_unicode", f"{name}: lone surrogate at char {match.start()}")
    return None


_FIELD_CODES: dict[str, ReasonCode] = {"tenant": "invalid_tenant", "created_at": "invalid_created_at"}


def _reason(error: ValidationError) -> DeadLetterReason:
    """The first validation error (fields in declaration order) → a code and a short detail.

    The detail names the field and the rule, never the value: it ends up in logs and dashboards.
    """
    first = error.errors(include_url=False, include_input=False)[0]
    field = ".".join(str(part) for part in first["loc"]) or "(object)"
    kind, message = first["type"], first["msg"]
    if kind == "missing":
        return DeadLetterReason("missing_field", field)
    if kind == "id_too_long":
        return DeadLetterReason("id_too_long", message)
    if field == "id" and kind == "string_too_short":
        return DeadLetterReason("empty_id", "id is an empty string")
    if kind.endswith("_type") and kind != "created_at_type":
        return DeadLetterReason("wrong_type", f"{field}: {message}")
    return DeadLetterReason(_FIELD_CODES.get(field, "wrong_type"), f"{field}: {message}")
