"""Moderators' verdicts, as the worker uses them. Pure over the index port (numpy only).

Two effects, both at once and both per tenant:

- **Pair memory.** A pair judged ``not_duplicate`` is never flagged again: when a post's candidate is
  the other side of a rejected pair, the candidate is skipped and the next one decides. A pair judged
  ``duplicate`` is always flagged when it meets again, whatever its score (``decided_by: moderator``).
  A pair is remembered by its posts' ids *and* by their normalised-text hashes, so the next copy of
  the same two texts (new ids) is caught too. The last verdict on a pair wins.
- **Decision points.** Each verdict whose two posts are still in the index (or whose texts came with
  it) adds the pair's cosine to its tenant's evidence. Once a tenant has ``min_verdicts`` of them, at
  least ``min_each`` of each answer, its decision point is re-chosen (``recalibrate``): the cut with the
  best F1 over the reviewed pairs, when it beats the current point's by ``min_gain``. Raising the point
  only drops flags, every one of which reviewers saw. Lowering it adds the pairs between the new cut
  and the point, which reviewers see only when they look below the point ("possible duplicates"): it
  needs ``min_each`` of them judged, a share of duplicates among them whose 95% Wilson lower bound is at
  least ``min_precision``, and ``min_each`` rejected pairs below the point at least (reports of missed
  reposts alone are no sample); and it never goes below the lowest pair they rejected.

Replays are unaffected: a replayed post republishes its stored first decision (``worker.core.step``),
so a verdict changes the decisions of posts that arrive after the worker read it, and only those.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from worker.core.decide import Verdict, clamp_score, round_score
from worker.core.messages import ModeratorVerdict
from worker.core.normalize import normalize, text_hash
from worker.core.outgoing import LearnedPoint
from worker.core.policy import Policy
from worker.core.ports import Candidate, VectorIndex
from worker.core.records import OrderKey

Label = Literal["duplicate", "not_duplicate"]


@dataclass(frozen=True, slots=True)
class Reviewed:
    """One verdict resolved against the index: the pair's text hashes and cosine, when known, and where
    each post was read (``worker.service.pairs`` reads missing texts back from there)."""

    verdict: ModeratorVerdict
    hashes: tuple[str, str] | None
    cosine: float | None
    orders: tuple[OrderKey | None, OrderKey | None] = (None, None)


@dataclass(frozen=True, slots=True)
class Recalibration:
    """When a tenant's verdicts may move its decision point, and how far (see the module's docstring)."""

    min_verdicts: int = 40
    min_each: int = 5
    min_precision: float = 0.8
    min_gain: float = 0.01
    z: float = 1.96  # the Wilson bound's normal quantile: 95%, two-sided


@dataclass(frozen=True, slots=True)
class TenantPoint:
    """A tenant's decision point chosen from its verdicts, and the evidence behind it."""

    tenant: str
    point: float  # in the policy's unit: a probability when the model is calibrated, else a cosine
    previous: float  # the point it replaces (the model's or the operator's)
    verdicts: int
    duplicates: int
    precision_low: float  # 95% Wilson lower bound of precision over the reviewed pairs at or above it
    f1: float  # over the reviewed pairs
    at: str = ""  # the time of the latest verdict counted (ISO-8601)


@dataclass(slots=True)
class Feedback:
    """The verdicts read so far, the pair memory and each tenant's learned decision point."""

    rules: Recalibration = field(default_factory=Recalibration)
    _last: dict[str, dict[str, Reviewed]] = field(default_factory=dict)  # tenant → verdict key → last
    _by_ids: dict[tuple[str, str, str], Label] = field(default_factory=dict)
    _by_hashes: dict[tuple[str, str, str], Label] = field(default_factory=dict)
    _concerned: set[tuple[str, str]] = field(default_factory=set)  # (tenant, id or hash) in any pair
    _known: dict[str, Reviewed] = field(default_factory=dict)  # what a pair resolved to, by verdict key
    points: dict[str, TenantPoint] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(map(len, self._last.values()))

    def restore(self, known: Sequence[Reviewed]) -> None:
        """What pairs resolved to before (kept beside the index): a verdict read again after one of its
        posts was deleted still knows the pair's texts and cosine. Remembers nothing by itself."""
        for item in known:
            self._known[item.verdict.key] = item

    def apply(
        self, verdicts: Sequence[ModeratorVerdict], index: VectorIndex, policy: Policy
    ) -> tuple[list[TenantPoint], list[Reviewed]]:
        """Remember ``verdicts`` (in arrival order: a later one on the same pair wins) and re-choose the
        decision points of their tenants; returns the points that changed and the pairs resolved."""
        reviewed = [self._fill(item) for item in resolve(verdicts, index)]
        for item in reviewed:
            self._remember(item)
        changed = []
        for tenant in sorted({item.verdict.tenant for item in reviewed}):
            chosen = recalibrate(tenant, self.evidence(tenant), policy, self.rules)
            if chosen is not None:
                latest = max(item.verdict.at for item in self._last[tenant].values())
                chosen = replace(chosen, at=latest.isoformat())
            if chosen is not None and self.points.get(tenant) != chosen:
                self.points[tenant] = chosen
                changed.append(chosen)
            elif chosen is None and tenant in self.points:
                del self.points[tenant]
        return changed, reviewed

    def _fill(self, item: Reviewed) -> Reviewed:
        """Complete a pair from what it resolved to before, where the index no longer has a post."""
        before = self._known.get(item.verdict.key)
        if before is not None:
            hashes = item.hashes if item.hashes is not None else before.hashes
            cosine = item.cosine if item.cosine is not None else before.cosine
            orders = (item.orders[0] or before.orders[0], item.orders[1] or before.orders[1])
            item = Reviewed(item.verdict, hashes, cosine, orders)
        self._known[item.verdict.key] = item
        return item

    def _remember(self, item: Reviewed) -> None:
        v = item.verdict
        self._last.setdefault(v.tenant, {})[v.key] = item
        self._by_ids[(v.tenant, *_pair(v.id, v.duplicate_of))] = v.verdict
        self._concerned.add((v.tenant, v.id))
        if item.hashes is not None:
            self._by_hashes[(v.tenant, *_pair(*item.hashes))] = v.verdict
            self._concerned.update((v.tenant, h) for h in item.hashes)

    def evidence(self, tenant: str) -> list[tuple[float, bool]]:
        """The tenant's reviewed pairs with a known cosine: (cosine, judged a duplicate)."""
        return [
            (item.cosine, item.verdict.verdict == "duplicate")
            for item in self._last.get(tenant, {}).values()
            if item.cosine is not None
        ]

    def concerns(self, tenant: str, doc_id: str, doc_hash: str) -> bool:
        """Whether any verdict names this post or its text: only then are its candidates screened."""
        return (tenant, doc_id) in self._concerned or (tenant, doc_hash) in self._concerned

    def label(self, tenant: str, ids: tuple[str, str], hashes: tuple[str, str] | None) -> Label | None:
        """The verdict on this pair of posts, by their ids or, failing that, by their texts."""
        by_id = self._by_ids.get((tenant, *_pair(*ids)))
        if by_id is not None or hashes is None:
            return by_id
        return self._by_hashes.get((tenant, *_pair(*hashes)))

    def policy(self, base: Policy) -> Policy:
        """``base`` with the learned points; a tenant the operator set a point for keeps the operator's."""
        if not self.points:
            return base
        learned = {tenant: p.point for tenant, p in self.points.items()}
        return replace(base, tenant_points={**learned, **base.tenant_points})


def learned_point(chosen: TenantPoint, policy: Policy, model: str) -> LearnedPoint:
    """The event that announces a learned point."""
    return LearnedPoint(
        tenant=chosen.tenant,
        point=chosen.point,
        previous=chosen.previous,
        unit="probability" if policy.calibrated else "cosine",
        verdicts=chosen.verdicts,
        duplicates=chosen.duplicates,
        precision_low=chosen.precision_low,
        f1=chosen.f1,
        model=model,
        at=chosen.at,
    )


def screen(
    feedback: Feedback,
    posts: Sequence[tuple[str, str, str]],
    ranked: Sequence[list[Candidate]],
    hash_of: Callable[[str, Sequence[str]], Mapping[str, str]],
) -> tuple[list[list[Candidate]], list[int | None], int]:
    """Apply the pair memory to each post's ranked candidates.

    ``posts``: (tenant, id, text hash) per post; ``hash_of(tenant, ids)``: the text hashes of candidates.
    Returns the candidates with rejected pairs removed, the rank of the first confirmed pair per post
    (None: none), and how many candidates were removed."""
    out: list[list[Candidate]] = []
    confirmed: list[int | None] = []
    removed = 0
    for (tenant, doc_id, doc_hash), candidates in zip(posts, ranked, strict=True):
        if not candidates or not feedback.concerns(tenant, doc_id, doc_hash):
            out.append(list(candidates))
            confirmed.append(None)
            continue
        hashes = hash_of(tenant, [c.doc_id for c in candidates])
        kept: list[Candidate] = []
        first: int | None = None
        for candidate in candidates:
            other = hashes.get(candidate.doc_id)
            pair = None if other is None else (doc_hash, other)
            label = feedback.label(tenant, (doc_id, candidate.doc_id), pair)
            if label == "not_duplicate":
                removed += 1
                continue
            if label == "duplicate" and first is None:
                first = len(kept)
            kept.append(candidate)
        out.append(kept)
        confirmed.append(first)
    return out, confirmed, removed


def resolve(verdicts: Sequence[ModeratorVerdict], index: VectorIndex) -> list[Reviewed]:
    """Each verdict with its pair's text hashes (from its texts, else the index) and cosine (from the
    stored vectors), in one index fetch."""
    keys = sorted({(v.tenant, i) for v in verdicts for i in (v.id, v.duplicate_of)})
    stored = index.fetch(keys) if keys else {}
    out = []
    for v in verdicts:
        a, b = stored.get((v.tenant, v.id)), stored.get((v.tenant, v.duplicate_of))
        hash_a = text_hash(normalize(v.text)) if v.text is not None else (a.text_hash if a else None)
        hash_b = (
            text_hash(normalize(v.duplicate_text))
            if v.duplicate_text is not None
            else (b.text_hash if b else None)
        )
        hashes = (hash_a, hash_b) if hash_a is not None and hash_b is not None else None
        cosine = None
        if a is not None and b is not None and not (a.opaque or b.opaque):
            product = np.dot(a.vector.astype(np.float64), b.vector.astype(np.float64))
            cosine = clamp_score(float(product))
        orders = (None if a is None else a.order, None if b is None else b.order)
        out.append(Reviewed(v, hashes, cosine, orders))
    return out


def recalibrate(
    tenant: str, evidence: Sequence[tuple[float, bool]], policy: Policy, rules: Recalibration
) -> TenantPoint | None:
    """The tenant's decision point from its reviewed pairs, or None while the evidence is too thin or no
    cut beats the current point's F1 by ``min_gain`` (see the module's docstring). Every cut at once,
    from sorted counts: O(n log n) in the tenant's verdicts, which a long-lived tenant has many of."""
    positives = sum(1 for _, duplicate in evidence if duplicate)
    negatives = len(evidence) - positives
    if len(evidence) < rules.min_verdicts or min(positives, negatives) < rules.min_each:
        return None
    unit = policy.encoder if policy.encoder is not None else (lambda cosine: cosine)
    scores = np.array([round_score(unit(cosine)) for cosine, _ in evidence])
    truth = np.array([duplicate for _, duplicate in evidence])
    previous = round_score(policy.tenant_points.get(tenant, policy.point(tenant)))
    rejected_below = scores[(~truth) & (scores < previous)]
    floor = float(rejected_below.min()) if len(rejected_below) >= rules.min_each else previous

    everyone, duplicates = np.sort(scores), np.sort(scores[truth])
    cuts = np.unique(np.append(scores, previous))
    cuts = cuts[cuts >= floor]
    flagged = len(everyone) - np.searchsorted(everyone, cuts, side="left")  # pairs at or above each cut
    tp = len(duplicates) - np.searchsorted(duplicates, cuts, side="left")
    f1 = 2 * tp / (2 * tp + (flagged - tp) + (positives - tp))
    low = wilson_lower(tp, flagged, rules.z)
    at = int(np.searchsorted(cuts, previous))
    band = np.maximum(flagged - flagged[at], 0)  # what a lower cut adds (nothing for a higher one)
    band_tp = np.maximum(tp - tp[at], 0)
    allowed = (cuts >= previous) | (
        (band >= rules.min_each) & (wilson_lower(band_tp, band, rules.z) >= rules.min_precision)
    )
    best = int(np.argmax(np.where(allowed, f1, -1.0)))  # the first of equals: the lowest cut, more recall
    if f1[best] < f1[at] + rules.min_gain:
        return None
    return TenantPoint(
        tenant,
        round_score(float(cuts[best])),
        previous,
        len(evidence),
        positives,
        round_score(float(low[best])),
        round_score(float(f1[best])),
    )


def wilson_lower(successes: ArrayLike, trials: ArrayLike, z: float = 1.96) -> NDArray[np.float64]:
    """The Wilson score interval's lower bound for a proportion (0 for no trials): honest at small
    counts. Element-wise over arrays."""
    k, n = np.asarray(successes, dtype=np.float64), np.asarray(trials, dtype=np.float64)
    safe = np.maximum(n, 1.0)
    p = k / safe
    centre = p + z * z / (2 * safe)
    spread = z * np.sqrt(p * (1 - p) / safe + z * z / (4 * safe * safe))
    return np.where(n > 0, (centre - spread) / (1 + z * z / safe), 0.0)


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def confirm(verdict: Verdict, rank: int | None, policy: Policy) -> Verdict:
    """A pair a moderator confirmed (``rank``: its candidate's place, from ``screen``) is flagged
    whatever its score (``decided_by: moderator``)."""
    if rank is None or verdict.flagged:
        return verdict
    probability = 1.0 if policy.calibrated else None
    return Verdict(verdict.matches, True, chosen=rank, decided_by="moderator", probability=probability)


def with_learned_point(verdict: Verdict, tenant: str, policy: Policy, base: Policy) -> Verdict:
    """The verdict with its point when a tenant's verdicts chose it (not the model's or operator's)."""
    point = policy.point(tenant)
    return verdict if point == base.point(tenant) else replace(verdict, point=point)
