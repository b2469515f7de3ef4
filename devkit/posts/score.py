"""Scoring a run's flags (or ``scan``'s decisions) against a stream's truth."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from devkit.posts.stream import DUPLICATE_KINDS, KINDS


@dataclass(frozen=True)
class KindScore:
    """Posts of one kind: how many, how many were flagged, how many of those flags were right."""

    total: int
    flagged: int
    correct: int


@dataclass(frozen=True)
class Score:
    """Flags against the truth. Empty denominators count as perfect: no flag is no wrong flag."""

    flags: int  # documents flagged (after collapsing repeated decisions by id)
    correct: int  # flags naming an earlier member of the document's own cluster
    duplicates: int  # documents that should be flagged (exact, edit, rewrite)
    by_kind: dict[str, KindScore]

    @property
    def precision(self) -> float:
        return self.correct / self.flags if self.flags else 1.0

    @property
    def recall(self) -> float:
        return self.correct / self.duplicates if self.duplicates else 1.0

    @property
    def f1(self) -> float:
        total = self.precision + self.recall
        return 2 * self.precision * self.recall / total if total else 0.0

    def describe(self) -> str:
        """A few lines for a terminal: the totals, then flagged/total per kind."""
        lines = [
            f"precision {self.precision:.3f}  recall {self.recall:.3f}  f1 {self.f1:.3f}  "
            f"({self.correct} correct of {self.flags} flags; {self.duplicates} reposts to find)"
        ]
        for kind, counts in self.by_kind.items():
            if counts.total:
                should = "flag" if kind in DUPLICATE_KINDS else "leave"
                lines.append(
                    f"  {kind:<13} {counts.flagged:>5} of {counts.total:<5} flagged "
                    f"({counts.correct} correctly; should {should})"
                )
        return "\n".join(lines)


def precision_recall(decisions: Iterable[Mapping[str, Any]], truth: Sequence[Mapping[str, Any]]) -> Score:
    """Score decisions (or flags) against the truth, which must be in arrival order.

    A decision is a mapping with ``id`` and ``duplicate_of`` (null: not flagged); a ``flagged: false`` key
    also means not flagged, so both the worker's flags and ``scan``'s decisions can be passed. Several
    decisions for one id (an at-least-once replay) collapse to the last one, as a compacted topic would.
    A flag is correct when the document is an exact copy, edit or rewrite and ``duplicate_of`` is the
    cluster's original or any member of the cluster that arrived before the document.
    """
    position: dict[str, int] = {}
    cluster: dict[str, str] = {}
    kind: dict[str, str] = {}
    for i, row in enumerate(truth):
        doc_id = str(row["id"])
        position[doc_id], kind[doc_id] = i, str(row["kind"])
        cluster[doc_id] = str(row["duplicate_of"] or doc_id)
    latest: dict[str, str | None] = {}
    for decision in decisions:
        doc_id = str(decision["id"])
        if doc_id not in position:
            raise ValueError(f"a decision names document {doc_id!r}, which is not in the truth")
        target = decision.get("duplicate_of")
        latest[doc_id] = None if target is None or decision.get("flagged") is False else str(target)
    flags = {doc_id: target for doc_id, target in latest.items() if target is not None}

    def right(doc_id: str, target: str) -> bool:
        return (
            kind[doc_id] in DUPLICATE_KINDS
            and target in position
            and cluster[target] == cluster[doc_id]
            and position[target] < position[doc_id]
        )

    correct = {doc_id for doc_id, target in flags.items() if right(doc_id, target)}
    by_kind: dict[str, KindScore] = {
        k: KindScore(
            total=sum(v == k for v in kind.values()),
            flagged=sum(kind[d] == k for d in flags),
            correct=sum(kind[d] == k for d in correct),
        )
        for k in KINDS
    }
    duplicates = sum(v in DUPLICATE_KINDS for v in kind.values())
    return Score(flags=len(flags), correct=len(correct), duplicates=duplicates, by_kind=by_kind)
