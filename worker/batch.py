"""The batch step: records → decisions, flags, dead letters, index updates. Pure over protocols.

CONTRACT (owned by the core helper; the types and the signature of ``run_batch`` are fixed).
It never imports kafka, qdrant_client or torch. Order inside: parse/validate → normalise + hash →
deletions → exact fast path → reuse stored vectors on replay / embed the rest → in-batch matches in
arrival order → one batched index search → decide → publish (send) → upsert. The caller then flushes
the publisher, flushes the index, and commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from worker.embed import Encoder
from worker.publish import FlagPublisher
from worker.search import VectorIndex


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed record, transport-neutral (Kafka or a line of a JSONL file)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class StepConfig:
    threshold: float
    model_version: str
    flags_topic: str = "duplicate-flags"
    dlq_topic: str = "documents.dlq"
    decisions_topic: str | None = None  # every decision, flagged or not; off by default
    top_k: int = 5
    max_message_bytes: int = 1_000_000
    max_id_chars: int = 256


@dataclass(slots=True)
class BatchResult:
    records: int = 0
    documents: int = 0
    flags: int = 0
    dead_letters: int = 0
    deletions: int = 0
    exact: int = 0
    reused_vectors: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    decisions: list[dict[str, object]] = field(default_factory=list)  # one per valid document, in order


def run_batch(
    records: Sequence[Record],
    encoder: Encoder,
    index: VectorIndex,
    publisher: FlagPublisher,
    config: StepConfig,
) -> BatchResult:
    raise NotImplementedError("core helper fills this in")
