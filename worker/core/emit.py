"""A batch's outcome → what goes on which topic: (topic, key, bytes), in order-key order.

One serialisation for every outgoing message (``worker.core.outgoing.dumps``: sorted keys, compact,
UTF-8, scores rounded), so a batch replayed after a crash republishes byte-identical messages. Flags and
decisions are keyed by document id (a compacted topic or a keyed consumer collapses replays); a dead
letter keeps the record's own key, cut to ``MAX_KEY_BYTES``. Deletions publish nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.core.messages import MAX_KEY_BYTES, clip
from worker.core.outcome import BatchOutcome, DeadLettered, Decided
from worker.core.outgoing import dumps


@dataclass(frozen=True, slots=True)
class Topics:
    """Where each kind of message goes; ``decisions`` None publishes no decisions (the default)."""

    flags: str = "duplicate-flags"
    dlq: str = "documents.dlq"
    decisions: str | None = None


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes


def emit(outcome: BatchOutcome, topics: Topics) -> list[Outgoing]:
    """Every message of ``outcome``: per record its flag then its decision, or its dead letter."""
    out: list[Outgoing] = []
    for item in outcome.outcomes:
        if isinstance(item, DeadLettered):
            out.append(Outgoing(topics.dlq, clip(item.record.key, MAX_KEY_BYTES), dumps(item.letter)))
        elif isinstance(item, Decided):
            key = item.decision.id.encode("utf-8")
            if item.flag is not None:
                out.append(Outgoing(topics.flags, key, dumps(item.flag)))
            if topics.decisions is not None:
                out.append(Outgoing(topics.decisions, key, dumps(item.decision)))
    return out
