"""Neighbours + threshold → decisions. Pure (numpy only), so the hard rules are tested in microseconds.

Visibility — what a document may match — is the rule everything else leans on. Document *j* sees
document *i* when:

- *i* has a strictly smaller order key ``(ts, pos)`` (see DEVELOPERS.md, "Order keys"),
- same tenant, different id (a document never matches itself, nor an earlier version of its own id),
- *i* is the version of its id current at *j*'s time: a later version of the same id that is still
  earlier than *j* supersedes it (the index would hold only that one after a batch boundary),
- *i* is not removed by a deletion in the same batch (deletions act on the whole batch, because the index
  deletion runs before the search).
- *i*'s record time is not before *j*'s retention floor (``worker.core.retention``), when *j* has one.

Scores are cosine similarities computed here in float64 from the float32 vectors and rounded to 6
decimals *before* ranking and thresholding, so the published score, the ranking and the decision agree,
and do not depend on the batch's shape or on which side (batch or index) a candidate came from.
Ranking: score descending, then earlier order key, then id. A score equal to the threshold flags (≥).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from worker.core.normalize import EXACT_STEPS, ExactBy
from worker.core.ports import Candidate, Stage
from worker.core.records import OrderKey

SCORE_DECIMALS = 6


def round_score(value: float) -> float:
    """Round to 6 decimals the way every published score is rounded (never -0.0)."""
    return round(float(value), SCORE_DECIMALS) + 0.0


def clamp_score(cosine: float) -> float:
    """A cosine of unit vectors, rounded; float error can step just outside [-1, 1]."""
    return round_score(max(-1.0, min(1.0, cosine)))


DecidedBy = Literal["exact", "encoder", "verifier", "moderator"]
"""Which stage's score decided: the exact hash, the encoder's cosine, the verifier's pair score, or a
moderator's earlier verdict on the same pair (``worker.core.feedback``)."""


@dataclass(frozen=True, slots=True)
class MatchedPost:
    """What a flag says of the earlier post it names: when it was created, its ``meta`` (as kept in the
    index), and for an exact match the normalisation step that made the two texts equal."""

    created_at: str | None = None
    meta: dict[str, Any] | None = None
    exact_by: ExactBy | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """The ranked candidates of one document and whether one of them is close enough.

    ``chosen`` is the rank of the decisive candidate (the encoder's best, unless the verifier found a
    lower-ranked one likelier); ``probability`` its calibrated P(duplicate), when the model is
    calibrated; ``verifier_score`` the verifier's score for it, when the verifier judged it.
    """

    matches: list[Candidate]  # top-k, best first
    flagged: bool
    chosen: int = 0
    decided_by: DecidedBy | None = None
    probability: float | None = None
    verifier_score: float | None = None
    point: float | None = None  # the decision point, when a tenant's verdicts chose it (else the model's)
    matched: MatchedPost | None = None  # of the decisive match, for a flag (stored with the decision)

    @property
    def best(self) -> Candidate | None:
        return self.matches[0] if self.matches else None

    @property
    def decisive(self) -> Candidate | None:
        return self.matches[self.chosen] if self.matches else None

    @property
    def duplicate_of(self) -> Candidate | None:
        """The earlier document this one duplicates: the decisive candidate, when flagged."""
        return self.decisive if self.flagged else None


def _rank_key(candidate: Candidate) -> tuple[float, OrderKey, str]:
    return (-candidate.score, candidate.order, candidate.doc_id)


def _ranks(orders: Sequence[OrderKey]) -> np.ndarray:
    """Dense rank of each order key (equal keys share a rank: neither is earlier)."""
    position = {key: rank for rank, key in enumerate(sorted(set(orders)))}
    return np.array([position[key] for key in orders], dtype=np.int64)


def _codes(values: Sequence[object]) -> np.ndarray:
    seen: dict[object, int] = {}
    return np.array([seen.setdefault(value, len(seen)) for value in values], dtype=np.int64)


def visibility(
    orders: Sequence[OrderKey],
    tenants: Sequence[str],
    doc_ids: Sequence[str],
    deleted: Sequence[bool],
    floors: Sequence[int | None] | None = None,
) -> np.ndarray:
    """Boolean (n, n): ``[j, i]`` is True when document *i* of the batch is visible to document *j*.

    ``floors``: per document *j*, the earliest record time it may match (retention), or None."""
    n = len(orders)
    rank = _ranks(orders)
    tenant = _codes(tenants)
    key = _codes(list(zip(tenants, doc_ids, strict=True)))
    # The rank at which each document is superseded by a later version of the same (tenant, id).
    superseded = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    latest: dict[int, int] = {}
    for i in sorted(range(n), key=lambda i: rank[i], reverse=True):
        later = latest.get(int(key[i]))
        if later is not None and rank[later] > rank[i]:
            superseded[i] = rank[later]
        latest[int(key[i])] = i
    earlier = rank[None, :] < rank[:, None]
    current = rank[:, None] <= superseded[None, :]
    same_tenant = tenant[None, :] == tenant[:, None]
    other_id = key[None, :] != key[:, None]
    alive = ~np.asarray(deleted, dtype=bool)[None, :]
    mask: np.ndarray = earlier & current & same_tenant & other_id & alive
    if floors is not None and any(floor is not None for floor in floors):
        ts = np.array([order[0] for order in orders], dtype=np.int64)
        floor = np.array([-1 if f is None else f for f in floors], dtype=np.int64)
        mask &= ts[None, :] >= floor[:, None]
    return mask


def exact_in_batch(
    visible: np.ndarray, hashes: Sequence[str], orders: Sequence[OrderKey], doc_ids: Sequence[str]
) -> list[int | None]:
    """Per document, the earliest visible batch document with the same text hash (its position), or None."""
    code = _codes(hashes)
    same = visible & (code[None, :] == code[:, None])
    found: list[int | None] = []
    for row in same:
        hits = np.flatnonzero(row)
        found.append(min(hits.tolist(), key=lambda i: (orders[i], doc_ids[i])) if hits.size else None)
    return found


def similarities(vectors: np.ndarray) -> np.ndarray:
    """Cosine matrix in float64: accumulation error far below the 6 published decimals."""
    v = np.asarray(vectors, dtype=np.float64)
    sims: np.ndarray = v @ v.T
    return sims


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The same float64 arithmetic as ``similarities``, for one pair (index neighbours are rescored)."""
    return float(np.dot(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)))


def batch_candidates(
    sims: np.ndarray, visible: np.ndarray, orders: Sequence[OrderKey], doc_ids: Sequence[str], k: int
) -> list[list[Candidate]]:
    """Per document (row), its top-k visible batch documents, ranked as documented above.

    Vectorised over the whole batch: numpy keeps, per row, everything that could round into the top k
    (ties included); only those few are ranked exactly in Python.
    """
    n = len(orders)
    if n == 0 or k <= 0:
        return [[] for _ in range(n)]
    keep = visible
    if n > k:
        masked = np.where(visible, sims, -np.inf)
        kth = np.partition(masked, n - k, axis=1)[:, n - k]  # k-th largest per row; -inf if fewer visible
        keep = visible & (masked >= (kth - 10.0**-SCORE_DECIMALS)[:, None])
    rows, cols = np.nonzero(keep)
    found: list[list[Candidate]] = [[] for _ in range(n)]
    for row, col, score in zip(rows.tolist(), cols.tolist(), sims[rows, cols].tolist(), strict=True):
        found[row].append(Candidate(doc_ids[col], clamp_score(score), orders[col], "batch"))
    return [sorted(candidates, key=_rank_key)[:k] for candidates in found]


def top_k(candidates: Iterable[Candidate], k: int) -> list[Candidate]:
    """Merge candidates from every source: one per id (the first given wins), best k first."""
    by_id: dict[str, Candidate] = {}
    for candidate in candidates:
        by_id.setdefault(candidate.doc_id, candidate)
    return sorted(by_id.values(), key=_rank_key)[: max(k, 0)]


def decide(ranked: Sequence[Candidate], threshold: float) -> Verdict:
    """Flag when the best candidate's score ≥ threshold (both rounded to 6 decimals)."""
    flagged = bool(ranked) and ranked[0].score >= round_score(threshold)
    by: DecidedBy | None = None if not ranked else "exact" if ranked[0].stage == "exact" else "encoder"
    return Verdict(matches=list(ranked), flagged=flagged, decided_by=by)


def encode_verdict(verdict: Verdict) -> str:
    """A decision as stored with the document's point (compact JSON, candidates in rank order).

    The keys a calibrated or verified decision adds are written only when set, so what an
    uncalibrated model stores stays as it was."""
    rows = [[c.doc_id, c.score, c.order[0], c.order[1], c.stage] for c in verdict.matches]
    data: dict[str, object] = {"flagged": verdict.flagged, "matches": rows}
    if verdict.chosen:
        data["chosen"] = verdict.chosen
    if verdict.decided_by is not None:
        data["by"] = verdict.decided_by
    if verdict.probability is not None:
        data["p"] = verdict.probability
    if verdict.verifier_score is not None:
        data["v"] = verdict.verifier_score
    if verdict.point is not None:
        data["t"] = verdict.point
    if verdict.matched is not None:
        m = verdict.matched
        data["m"] = {
            k: v for k, v in (("c", m.created_at), ("meta", m.meta), ("x", m.exact_by)) if v is not None
        }
    return json.dumps(data, separators=(",", ":"))


def decode_verdict(text: str | None) -> Verdict | None:
    """The stored decision, or None when absent or unreadable (the document is then decided afresh)."""
    if text is None:
        return None
    try:
        data = json.loads(text)
        matches = [
            Candidate(str(i), float(s), (int(ts), int(pos)), _STAGES[st])
            for i, s, ts, pos, st in data["matches"]
        ]
        by = data.get("by")
        return Verdict(
            matches,
            bool(data["flagged"]),
            chosen=int(data.get("chosen", 0)),
            decided_by=None if by is None else _DECIDERS[by],
            probability=None if data.get("p") is None else float(data["p"]),
            verifier_score=None if data.get("v") is None else float(data["v"]),
            point=None if data.get("t") is None else float(data["t"]),
            matched=None if data.get("m") is None else _matched(data["m"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


def _matched(data: dict[str, Any]) -> MatchedPost:
    exact = data.get("x")
    return MatchedPost(data.get("c"), data.get("meta"), None if exact is None else _EXACT[exact])


_EXACT: dict[str, ExactBy] = {step: step for step in EXACT_STEPS}
_STAGES: dict[str, Stage] = {"exact": "exact", "batch": "batch", "index": "index"}
_DECIDERS: dict[str, DecidedBy] = {
    "exact": "exact",
    "encoder": "encoder",
    "verifier": "verifier",
    "moderator": "moderator",
}
