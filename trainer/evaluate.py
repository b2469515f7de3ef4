"""Pair scores + labels → named metrics, and the threshold to ship. Pure numpy, no model in sight.

A pair is called a duplicate when its score is **≥** the threshold (the worker's rule). Average
precision is the primary metric: it summarises the whole precision–recall curve, does not depend on a
threshold, and stays meaningful when duplicates are rare. Definitions follow scikit-learn's (AP as
the step-wise sum ``Σ (R_k − R_{k−1}) P_k`` over distinct thresholds; ROC-AUC with ties counted half),
so figures are comparable with published ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

PRIMARY_METRIC = "average_precision"


def _check(scores: ArrayLike, labels: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(np.int64)
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores for {y.size} labels")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if y.sum() == 0 or y.sum() == y.size:
        raise ValueError("metrics need both duplicates and non-duplicates")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return s, y


def pr_curve(
    scores: ArrayLike, labels: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Precision, recall and threshold at every distinct score, highest threshold first.

    Entry k is the operating point "duplicate iff score ≥ thresholds[k]": tied scores move together.
    """
    s, y = _check(scores, labels)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    true_pos = np.cumsum(y)[last_of_run].astype(np.float64)
    predicted = (last_of_run + 1).astype(np.float64)
    return true_pos / predicted, true_pos / y.sum(), s[last_of_run]


def average_precision(scores: ArrayLike, labels: ArrayLike) -> float:
    """Σ (R_k − R_{k−1}) P_k over distinct thresholds (scikit-learn's definition, no interpolation)."""
    precision, recall, _ = pr_curve(scores, labels)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Probability that a random duplicate outscores a random non-duplicate (ties count half)."""
    s, y = _check(scores, labels)
    order = np.argsort(s, kind="stable")
    ranks = np.empty(s.size, dtype=np.float64)
    sorted_s = s[order]
    # Average rank over ties: each run of equal scores gets the mean of its 1-based positions.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], s.size]
    mean_rank = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(mean_rank, ends - starts)
    positives = float(y.sum())
    negatives = float(y.size - positives)
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def best_f1(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """(best F1, the threshold that reaches it); the highest such threshold on ties."""
    precision, recall, thresholds = pr_curve(scores, labels)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def recall_at_precision(scores: ArrayLike, labels: ArrayLike, target: float) -> float:
    """Highest recall of any threshold whose precision is ≥ target; 0 when none is."""
    precision, recall, _ = pr_curve(scores, labels)
    ok = precision >= target
    return float(recall[ok].max()) if ok.any() else 0.0


@dataclass(frozen=True)
class ThresholdChoice:
    threshold: float
    precision: float
    recall: float
    met: bool  # False: no threshold reached the target; this is the most precise one instead


def choose_threshold(scores: ArrayLike, labels: ArrayLike, target_precision: float = 0.95) -> ThresholdChoice:
    """The threshold with the most recall among those whose precision meets the target.

    When none does, the most precise threshold (then the one with more recall), flagged ``met=False``
    so the caller can say so: shipping a threshold that silently misses its promise is worse.
    """
    if not 0 < target_precision <= 1:
        raise ValueError("target precision must be in (0, 1]")
    precision, recall, thresholds = pr_curve(scores, labels)
    ok = np.flatnonzero(precision >= target_precision)
    if ok.size:
        k = int(ok[np.argmax(recall[ok])])
        return ThresholdChoice(float(thresholds[k]), float(precision[k]), float(recall[k]), True)
    k = int(np.lexsort((-recall, -precision))[0])
    return ThresholdChoice(float(thresholds[k]), float(precision[k]), float(recall[k]), False)


@dataclass(frozen=True)
class Metrics:
    """Named metrics of one scored pair set; ``average_precision`` is the primary one."""

    average_precision: float
    roc_auc: float
    best_f1: float
    best_f1_threshold: float
    recall_at_p90: float
    recall_at_p99: float
    pairs: int
    duplicates: int

    @property
    def primary(self) -> float:
        return self.average_precision

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def evaluate_scores(scores: ArrayLike, labels: ArrayLike) -> Metrics:
    s, y = _check(scores, labels)
    f1, f1_threshold = best_f1(s, y)
    return Metrics(
        average_precision=average_precision(s, y),
        roc_auc=roc_auc(s, y),
        best_f1=f1,
        best_f1_threshold=f1_threshold,
        recall_at_p90=recall_at_precision(s, y, 0.90),
        recall_at_p99=recall_at_precision(s, y, 0.99),
        pairs=int(s.size),
        duplicates=int(y.sum()),
    )


def score_pairs(
    embed: Callable[[Sequence[str]], NDArray[np.float32]], text_a: Sequence[str], text_b: Sequence[str]
) -> NDArray[np.float64]:
    """Cosine of each pair, in order; each distinct text is embedded once (dev sets repeat texts)."""
    if len(text_a) != len(text_b):
        raise ValueError("text_a and text_b differ in length")
    unique = list(dict.fromkeys([*text_a, *text_b]))
    if not unique:
        return np.zeros(0, dtype=np.float64)
    row = {text: i for i, text in enumerate(unique)}
    vectors = np.asarray(embed(unique), dtype=np.float64)
    a = vectors[[row[t] for t in text_a]]
    b = vectors[[row[t] for t in text_b]]
    scores: NDArray[np.float64] = (a * b).sum(axis=1)
    return scores
