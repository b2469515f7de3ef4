"""The decision: ranked candidates (and, in the encoder's uncertain band, the verifier's scores) → a
flag or not, with one calibrated probability a moderator can read. Pure (numpy only).

Two kinds of model directory meet here. One without calibration decides as it always has: flag when
the best cosine ≥ the threshold. One with calibration maps every candidate to P(duplicate), through
the encoder's calibration of its cosine or, in the band, through a fit of the cosine and the
verifier's score together, and flags when the best probability ≥ the decision point (a probability,
chosen by the trainer on a simulated repost stream; a tenant may have its own). The verifier runs
only on candidates whose cosine falls in ``band``: above it the encoder is sure enough, below it
nothing is close.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from worker.core.decide import Verdict, round_score
from worker.core.ports import Candidate, Verifier


@dataclass(frozen=True, slots=True)
class Calibration:
    """Score → P(duplicate): piecewise linear through increasing knots (an isotonic fit), flat beyond."""

    scores: tuple[float, ...]
    probabilities: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.scores) != len(self.probabilities) or not self.scores:
            raise ValueError("a calibration needs as many probabilities as scores, at least one")
        if any(b < a for a, b in zip(self.scores, self.scores[1:], strict=False)):
            raise ValueError("calibration scores must increase")

    def __call__(self, score: float) -> float:
        return float(np.interp(score, self.scores, self.probabilities))


@dataclass(frozen=True, slots=True)
class PairCalibration:
    """P(duplicate) from the cosine and the verifier's score together: a logistic (Platt) fit.

    Neither alone is best: the cosine knows how close the posts are overall, the verifier whether a
    fact differs; on the trainer's repost stream the two together ranked pairs far better than either.
    """

    cosine: float
    score: float
    bias: float

    def __call__(self, cosine: float, score: float) -> float:
        z = self.cosine * cosine + self.score * score + self.bias
        return float(1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0))))


@dataclass(frozen=True, slots=True)
class Policy:
    """How a document is decided from its ranked candidates.

    ``threshold``: the cosine decision point of an uncalibrated model (and of every model when the
    operator overrides it). ``encoder``: the encoder's calibration; when set, decisions are made on
    probabilities against ``decision_point``. ``tenant_points``: per-tenant decision points, in the
    same unit. ``band`` and ``verifier``: the cosine range ``[lo, hi)`` where the verifier decides, and
    the calibration of its score with the cosine; ``verify_top`` candidates at most are verified per
    document.
    """

    threshold: float
    encoder: Calibration | None = None
    decision_point: float = 0.5
    tenant_points: Mapping[str, float] = field(default_factory=dict)
    band: tuple[float, float] | None = None
    verifier: PairCalibration | None = None
    verify_top: int = 2

    @property
    def calibrated(self) -> bool:
        return self.encoder is not None

    @property
    def verifies(self) -> bool:
        return self.encoder is not None and self.verifier is not None and self.band is not None

    def point(self, tenant: str) -> float:
        """The decision point for ``tenant``: a probability when calibrated, else a cosine."""
        default = self.decision_point if self.calibrated else self.threshold
        return self.tenant_points.get(tenant, default)

    def in_band(self, cosine: float) -> bool:
        """Whether the verifier decides a candidate of this cosine (never when the policy has none)."""
        if not self.verifies or self.band is None:
            return False
        lo, hi = self.band
        return lo <= cosine < hi

    def to_verify(self, ranked: Sequence[Candidate]) -> list[int]:
        """Ranks of the candidates the verifier should judge: within the band, among the first few."""
        return [
            rank
            for rank, candidate in enumerate(ranked[: self.verify_top])
            if candidate.stage != "exact" and self.in_band(candidate.score)
        ]

    def judge(self, tenant: str, ranked: Sequence[Candidate], verified: Mapping[int, float]) -> Verdict:
        """The verdict; ``verified`` maps a candidate's rank to the verifier's score for it."""
        matches = list(ranked)
        if not matches:
            return Verdict(matches, False)
        point = self.point(tenant)
        if matches[0].stage == "exact":
            probability = 1.0 if self.calibrated else None
            return Verdict(matches, True, decided_by="exact", probability=probability)
        if self.encoder is None:
            return Verdict(matches, matches[0].score >= round_score(point), decided_by="encoder")
        probabilities = [
            self.verifier(candidate.score, verified[rank])
            if rank in verified and self.verifier is not None
            else self.encoder(candidate.score)
            for rank, candidate in enumerate(matches)
        ]
        chosen = int(np.argmax(probabilities))  # the first of equals: the better-ranked candidate
        probability = round_score(probabilities[chosen])
        return Verdict(
            matches,
            probability >= round_score(point),
            chosen=chosen,
            decided_by="verifier" if chosen in verified else "encoder",
            probability=probability,
            verifier_score=round_score(verified[chosen]) if chosen in verified else None,
        )


@dataclass(frozen=True, slots=True)
class DecisionPlan:
    """How a process decides with its model: the policy, the verifier it may call (None: no verifier
    stage), and how many characters of each post the index keeps for that verifier to read later."""

    policy: Policy
    verifier: Verifier | None = None
    keep_text: int = 0
