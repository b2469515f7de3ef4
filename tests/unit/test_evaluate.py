"""Metrics against hand-computed values, and against brute-force definitions on random inputs.

Hand example: scores [0.9, 0.8, 0.7, 0.6], labels [1, 0, 1, 0]. Operating points (duplicate iff ≥ t):
t=0.9 P=1 R=½ · t=0.8 P=½ R=½ · t=0.7 P=⅔ R=1 · t=0.6 P=½ R=1.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import precision_recall_curve

from trainer.evaluate import (
    average_precision,
    best_f1,
    choose_threshold,
    evaluate_scores,
    pr_curve,
    recall_at_precision,
    roc_auc,
    score_pairs,
)

SCORES = [0.9, 0.8, 0.7, 0.6]
LABELS = [1, 0, 1, 0]


def test_pr_curve_by_hand() -> None:
    precision, recall, thresholds = pr_curve(SCORES, LABELS)
    assert thresholds.tolist() == SCORES
    assert precision.tolist() == pytest.approx([1, 0.5, 2 / 3, 0.5])
    assert recall.tolist() == pytest.approx([0.5, 0.5, 1, 1])


def test_average_precision_by_hand() -> None:
    # ΔR·P: 0.5·1 + 0·0.5 + 0.5·⅔ + 0·0.5
    assert average_precision(SCORES, LABELS) == pytest.approx(0.5 + 1 / 3)


def test_roc_auc_by_hand() -> None:
    # (pos, neg) orderings right: (.9,.8) (.9,.6) (.7,.6); wrong: (.7,.8)
    assert roc_auc(SCORES, LABELS) == pytest.approx(0.75)


def test_ties_move_together() -> None:
    assert roc_auc([0.5, 0.5], [1, 0]) == pytest.approx(0.5)
    assert average_precision([0.5, 0.5], [1, 0]) == pytest.approx(0.5)
    precision, _recall, thresholds = pr_curve([0.5, 0.5, 0.1], [1, 0, 1])
    assert thresholds.tolist() == [0.5, 0.1]
    assert precision.tolist() == pytest.approx([0.5, 2 / 3])


def test_best_f1_and_recall_at_precision_by_hand() -> None:
    assert best_f1(SCORES, LABELS) == pytest.approx((0.8, 0.7))  # P ⅔, R 1 at t = 0.7
    assert recall_at_precision(SCORES, LABELS, 0.90) == pytest.approx(0.5)
    assert recall_at_precision(SCORES, LABELS, 0.60) == pytest.approx(1.0)
    assert recall_at_precision([0.9, 0.1], [0, 1], 0.99) == 0.0


def test_evaluate_scores_names_the_metrics() -> None:
    metrics = evaluate_scores(SCORES, LABELS)
    assert metrics.primary == metrics.average_precision
    assert metrics.as_dict()["roc_auc"] == pytest.approx(0.75)
    assert (metrics.pairs, metrics.duplicates) == (4, 2)


@pytest.mark.parametrize(("scores", "labels"), [([0.1, 0.2], [1, 1]), ([0.1], [0]), ([0.1, 0.2], [1, 2])])
def test_metrics_refuse_degenerate_input(scores: list[float], labels: list[int]) -> None:
    with pytest.raises(ValueError):
        evaluate_scores(scores, labels)


def _brute_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    total, previous_recall = 0.0, 0.0
    for t in sorted(set(scores.tolist()), reverse=True):
        predicted = scores >= t
        tp = float((predicted & (labels == 1)).sum())
        recall = tp / labels.sum()
        total += (recall - previous_recall) * tp / predicted.sum()
        previous_recall = recall
    return total


def _brute_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (pos.size * neg.size))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 1)), min_size=2, max_size=40))
def test_metrics_match_their_definitions(rows: list[tuple[int, int]]) -> None:
    labels = np.array([y for _, y in rows])
    if labels.min() == labels.max():
        return
    scores = np.array([s / 6 for s, _ in rows])  # few distinct values: plenty of ties
    assert average_precision(scores, labels) == pytest.approx(_brute_ap(scores, labels))
    assert roc_auc(scores, labels) == pytest.approx(_brute_auc(scores, labels))


def test_score_pairs_embeds_each_text_once_and_keeps_order() -> None:
    seen: list[str] = []
    vectors = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [0.6, 0.8]}

    def embed(texts: list[str]) -> np.ndarray:
        seen.extend(texts)
        return np.array([vectors[t] for t in texts], dtype=np.float32)

    scores = score_pairs(embed, ["a", "a", "c"], ["b", "c", "a"])
    assert scores.tolist() == pytest.approx([0.0, 0.6, 0.6])
    assert sorted(seen) == ["a", "b", "c"]


# ---------------------------------------------------------------------------------------------
# AP and ROC-AUC are scikit-learn's; the operating points and the threshold choice are ours.


def _numpy_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """The pure-numpy AP this module computed before it used scikit-learn's."""
    precision, recall, _ = pr_curve(scores, labels)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _numpy_roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """The pure-numpy ROC-AUC (mean ranks over ties) this module computed before scikit-learn's."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    order = np.argsort(s, kind="stable")
    sorted_s = s[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], s.size]
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    positives = float(y.sum())
    negatives = float(y.size - positives)
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _random_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    size = int(rng.integers(5, 300))
    labels = (rng.random(size) < rng.uniform(0.05, 0.9)).astype(np.int64)
    labels[:2] = [0, 1]  # both kinds
    scores = rng.normal(labels * rng.uniform(0, 2), 1.0)
    if seed % 2:
        scores = np.round(scores, 1)  # plenty of ties
    return scores, labels


CASES = [
    (np.array(SCORES), np.array(LABELS)),
    (np.array([0.5, 0.5]), np.array([1, 0])),
    (np.array([0.5, 0.5, 0.1]), np.array([1, 0, 1])),
    (np.array([0.9, 0.8, 0.1]), np.array([0, 1, 0])),
    *(_random_case(seed) for seed in range(8)),
]


@pytest.mark.parametrize(("scores", "labels"), CASES)
def test_average_precision_and_roc_auc_equal_the_numpy_definitions(
    scores: np.ndarray, labels: np.ndarray
) -> None:
    assert average_precision(scores, labels) == pytest.approx(
        _numpy_average_precision(scores, labels), abs=1e-12
    )
    assert roc_auc(scores, labels) == pytest.approx(_numpy_roc_auc(scores, labels), abs=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_operating_points_best_f1_and_threshold_agree_with_sklearn(seed: int) -> None:
    scores, labels = _random_case(seed)
    sk_precision, sk_recall, sk_thresholds = precision_recall_curve(labels, scores)
    # sklearn: lowest threshold first, and a last point (P 1, R 0) with no threshold; ours: highest first
    sk_precision, sk_recall, sk_thresholds = sk_precision[-2::-1], sk_recall[-2::-1], sk_thresholds[::-1]
    precision, recall, thresholds = pr_curve(scores, labels)
    np.testing.assert_array_equal(thresholds, sk_thresholds)
    np.testing.assert_allclose(precision, sk_precision, rtol=0, atol=1e-12)
    np.testing.assert_allclose(recall, sk_recall, rtol=0, atol=1e-12)

    denom = sk_precision + sk_recall
    f1 = np.divide(2 * sk_precision * sk_recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = np.flatnonzero(np.isclose(f1, f1.max(), rtol=0, atol=1e-12))
    assert best_f1(scores, labels) == pytest.approx((f1.max(), sk_thresholds[best].max()), abs=1e-12)

    for target in (0.5, 0.8, 0.95, 1.0):
        choice = choose_threshold(scores, labels, target)
        ok = sk_precision >= target
        if ok.any():
            most_recall = ok & np.isclose(sk_recall, sk_recall[ok].max(), rtol=0, atol=1e-12)
            expected = sk_thresholds[most_recall].max()
        else:
            top = np.isclose(sk_precision, sk_precision.max(), rtol=0, atol=1e-12)
            most_recall = top & np.isclose(sk_recall, sk_recall[top].max(), rtol=0, atol=1e-12)
            expected = sk_thresholds[most_recall].max()
        assert choice.met == bool(ok.any())
        assert choice.threshold == expected
