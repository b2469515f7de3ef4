"""Metrics against hand-computed values, and against brute-force definitions on random inputs.

Hand example: scores [0.9, 0.8, 0.7, 0.6], labels [1, 0, 1, 0]. Operating points (duplicate iff ≥ t):
t=0.9 P=1 R=½ · t=0.8 P=½ R=½ · t=0.7 P=⅔ R=1 · t=0.6 P=½ R=1.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.evaluate import (
    average_precision,
    best_f1,
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
