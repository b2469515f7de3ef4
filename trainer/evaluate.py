"""Pair scores + labels → named metrics, the threshold to ship and the manifest's ``Thresholds``. No model.

A pair is called a duplicate when its score is **≥** the threshold (the worker's rule). Average
precision is the primary metric: it summarises the whole precision–recall curve, does not depend on a
threshold, and stays meaningful when duplicates are rare. AP and ROC-AUC are scikit-learn's (AP as the
step-wise sum ``Σ (R_k − R_{k−1}) P_k`` over distinct thresholds; ROC-AUC with ties counted half), so
figures are comparable with published ones. The operating points (``pr_curve``) and the threshold
choice are our own, on the same curve: tied scores move together, and the threshold must keep its
promise of precision or say that it cannot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import average_precision_score, roc_auc_score

from worker.core.logs import get_logger
from worker.model.manifest import Thresholds

log = get_logger("trainer")

PRIMARY_METRIC = "average_precision"
DEFAULT_THRESHOLD = 0.8  # shipped only when there are no labelled pairs kept out of training


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
    """Σ (R_k − R_{k−1}) P_k over distinct thresholds (scikit-learn's, no interpolation)."""
    s, y = _check(scores, labels)
    return float(average_precision_score(y, s))


def roc_auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Probability that a random duplicate outscores a random non-duplicate (ties count half)."""
    s, y = _check(scores, labels)
    return float(roc_auc_score(y, s))


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


def calibrate(
    scores: ArrayLike, labels: Sequence[int], target_precision: float, name: str
) -> tuple[Thresholds, Metrics]:
    """The manifest's thresholds from scores of pairs never trained on: the target-precision one decides."""
    metrics = evaluate_scores(scores, labels)
    choice = choose_threshold(scores, labels, target_precision)
    if not choice.met:
        log.warning("target_precision_not_reached", target=target_precision, precision=choice.precision)
    thresholds = Thresholds(
        decision=round(choice.threshold, 6),
        target_precision=target_precision,
        precision=choice.precision,
        recall=choice.recall,
        best_f1=metrics.best_f1,
        best_f1_threshold=metrics.best_f1_threshold,
        calibrated_on=name,
    )
    return thresholds, metrics


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
