"""The pure rules: who may match whom, how candidates rank, where the threshold cuts."""

from __future__ import annotations

import numpy as np

from worker.core.decide import (
    Candidate,
    batch_candidates,
    decide,
    exact_in_batch,
    round_score,
    similarities,
    top_k,
    visibility,
)


def test_only_earlier_documents_of_the_same_tenant_are_visible() -> None:
    orders = [(5, 0), (1, 0), (3, 0), (3, 0)]
    visible = visibility(orders, ["t", "t", "t", "u"], ["a", "b", "c", "d"], [False] * 4)
    assert visible.tolist() == [
        [False, True, True, False],  # a (5,0) sees b (1,0) and c (3,0), not d (other tenant)
        [False, False, False, False],  # b is the earliest
        [False, True, False, False],  # c sees b only
        [False, False, False, False],  # d has no earlier document in its tenant
    ]


def test_a_document_never_sees_its_own_id() -> None:
    visible = visibility([(0, 0), (0, 1)], ["t", "t"], ["a", "a"], [False, False])
    assert not visible.any()


def test_a_later_version_of_an_id_supersedes_the_earlier_one() -> None:
    # a@0, then a@1 (new text), then c@2: c sees only the current a (position 1).
    visible = visibility([(0, 0), (0, 1), (0, 2)], ["t"] * 3, ["a", "a", "c"], [False] * 3)
    assert visible[2].tolist() == [False, True, False]


def test_deleted_documents_are_invisible() -> None:
    visible = visibility([(0, 0), (0, 1)], ["t", "t"], ["a", "b"], [True, False])
    assert not visible.any()


def test_exact_in_batch_picks_the_earliest_visible() -> None:
    orders = [(0, 2), (0, 0), (0, 1), (0, 3)]
    ids = ["x", "y", "z", "w"]
    visible = visibility(orders, ["t"] * 4, ids, [False, False, True, False])
    found = exact_in_batch(visible, ["h", "h", "h", "g"], orders, ids)
    # x (0,2) repeats y (0,0); z (deleted) is skipped; y is first; w has another hash.
    assert found == [1, None, 1, None]


def test_batch_candidates_rank_by_score_then_order_then_id() -> None:
    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.6, 0.8], [1.0, 0.0]], dtype=np.float32)
    orders = [(0, 3), (0, 1), (0, 2), (0, 0), (0, 4)]
    ids = ["d1", "b", "a", "c", "q"]
    visible = visibility(orders, ["t"] * 5, ids, [False] * 5)
    found = batch_candidates(similarities(vectors), visible, orders, ids, k=3)
    assert [(c.doc_id, c.score) for c in found[4]] == [("b", 1.0), ("a", 1.0), ("d1", 1.0)]
    assert all(c.stage == "batch" for c in found[4])
    assert [c.doc_id for c in found[3]] == []  # c is the earliest
    assert [c.doc_id for c in found[2]] == ["b", "c"]  # fewer than k visible: all of them
    found = batch_candidates(similarities(vectors), visible, orders, ids, k=10)
    assert [(c.doc_id, c.score) for c in found[4]][-1] == ("c", 0.6)


def test_top_k_merges_one_candidate_per_id_first_wins() -> None:
    batch = [Candidate("a", 0.9, (0, 5), "batch")]
    index = [Candidate("a", 0.8, (0, 1), "index"), Candidate("b", 0.95, (0, 2), "index")]
    merged = top_k(batch + index, 5)
    assert [(c.doc_id, c.stage) for c in merged] == [("b", "index"), ("a", "batch")]
    assert top_k(batch + index, 1) == [index[1]]


def test_threshold_is_inclusive() -> None:
    ranked = [Candidate("a", 0.85, (0, 0), "index")]
    verdict = decide(ranked, 0.85)
    assert verdict.flagged
    assert verdict.duplicate_of == ranked[0]
    assert not decide(ranked, 0.850001).flagged
    assert decide(ranked, 0.8500004).flagged  # the threshold is rounded like the score


def test_an_unflagged_verdict_still_reports_its_best_match() -> None:
    verdict = decide([Candidate("a", 0.5, (0, 0), "batch")], 0.85)
    assert verdict.best is not None
    assert (verdict.flagged, verdict.duplicate_of, verdict.best.score) == (False, None, 0.5)
    assert decide([], 0.85).best is None


def test_round_score() -> None:
    assert round_score(0.1234565001) == 0.123457
    assert str(round_score(-1e-9)) == "0.0"
