"""The threshold shipped in a model directory: most recall among thresholds that meet the precision."""

from __future__ import annotations

import pytest

from trainer.evaluate import choose_threshold

SCORES = [0.9, 0.8, 0.7, 0.6]
LABELS = [1, 0, 1, 0]  # operating points: t .9 (P 1, R ½), .8 (½, ½), .7 (⅔, 1), .6 (½, 1)


def test_meets_the_target_with_the_most_recall() -> None:
    choice = choose_threshold(SCORES, LABELS, 0.95)
    assert (choice.threshold, choice.precision, choice.recall, choice.met) == (0.9, 1.0, 0.5, True)


def test_a_lower_target_buys_recall() -> None:
    choice = choose_threshold(SCORES, LABELS, 0.6)
    assert choice.threshold == 0.7
    assert choice.recall == 1.0
    assert choice.precision == pytest.approx(2 / 3)


def test_non_monotonic_precision_picks_the_lowest_threshold_that_qualifies() -> None:
    # P at t=.9 is 1, at .8 is ½, at .7 is ⅔: with target ⅔ the answer is .7 (recall 1), not .9.
    assert choose_threshold(SCORES, LABELS, 2 / 3).threshold == 0.7


def test_unreachable_target_returns_the_most_precise_threshold_and_says_so() -> None:
    # t .9: P 0 · t .8: P ½ · t .1: P ⅓ — nothing reaches 0.95; the most precise is .8.
    choice = choose_threshold([0.9, 0.8, 0.1], [0, 1, 0], 0.95)
    assert not choice.met
    assert choice.threshold == 0.8
    assert choice.precision == pytest.approx(0.5)


def test_target_must_be_a_probability() -> None:
    with pytest.raises(ValueError):
        choose_threshold(SCORES, LABELS, 0.0)
