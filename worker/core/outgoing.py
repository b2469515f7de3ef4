"""The messages the worker publishes, and their one serialisation: what consumers of the flags,
decisions, dead-letter and thresholds topics read. ``worker.core.messages`` builds them from records.

Determinism: every outgoing message is serialised by ``dumps`` (sorted keys, compact separators, UTF-8,
scores rounded to 6 decimals) and carries ``detected_at`` derived from the *record's* timestamp, not the
wall clock. A batch replayed after a crash therefore republishes byte-identical messages, which a keyed
consumer or a compacted topic collapses into one.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict

from worker.core.decide import DecidedBy, round_score
from worker.core.normalize import ExactBy
from worker.core.ports import Stage

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
