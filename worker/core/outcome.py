"""What one batch decided: one typed outcome per record, in order-key order, with counts and timings.

``worker.core.step.run_batch`` returns it; ``worker.core.emit`` turns it into topics and bytes, the loop
logs and counts it, ``scan`` writes it out. Nothing here is parsed back from JSON.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from worker.core.messages import Deletion
from worker.core.outgoing import DeadLetter, Decision, DuplicateFlag
from worker.core.records import Record


@dataclass(frozen=True, slots=True)
class Decided:
    """A valid document: its decision, and its flag when it duplicates an earlier post."""

    record: Record
    decision: Decision
    flag: DuplicateFlag | None


@dataclass(frozen=True, slots=True)
class DeadLettered:
    """A record the worker could not use, and the dead letter that says why."""

    record: Record
    letter: DeadLetter


@dataclass(frozen=True, slots=True)
class Deleted:
    """A deletion (message or tombstone), applied to the index before anything was searched."""

    record: Record
    deletion: Deletion


RecordOutcome = Decided | DeadLettered | Deleted


@dataclass(slots=True)
class BatchOutcome:
    """Everything one batch decided, one entry per record in order-key order, plus counts and timings."""

    records: int = 0
    documents: int = 0
    flags: int = 0
    dead_letters: int = 0
    deletions: int = 0
    exact: int = 0
    reused_vectors: int = 0
    verified: int = 0  # documents the verifier judged (one or more of their candidates)
    suppressed: int = 0  # candidates skipped because a moderator rejected the pair
    timings_ms: dict[str, float] = field(default_factory=dict)
    outcomes: list[RecordOutcome] = field(default_factory=list)

    @property
    def decisions(self) -> list[Decision]:
        """One per valid document, in order."""
        return [o.decision for o in self.outcomes if isinstance(o, Decided)]

    def flags_by_stage(self) -> Counter[str]:
        return Counter(o.flag.stage for o in self.outcomes if isinstance(o, Decided) and o.flag is not None)

    def dead_letters_by_code(self) -> Counter[str]:
        return Counter(o.letter.code for o in self.outcomes if isinstance(o, DeadLettered))
