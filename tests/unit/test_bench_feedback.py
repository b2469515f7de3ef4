"""``bench.feedback``'s simulated moderator (``devkit.posts.review``): what the reviewer is shown and how
it answers, and the scoring of one half of a stream. No model: decisions are written by hand."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from devkit.posts import DUPLICATE_KINDS, Stream, generate
from devkit.posts.review import half_score, halves, review
from worker.core.messages import ModeratorVerdict


@pytest.fixture(scope="module")
def stream() -> Stream:
    return generate(200, 21)


def decision(
    doc_id: str, target: str | None = None, matches: Sequence[tuple[str, float]] = ()
) -> dict[str, Any]:
    ranked = [{"id": i, "score": s} for i, s in matches]
    score = ranked[0]["score"] if ranked else None
    return {
        "id": doc_id,
        "flagged": target is not None,
        "duplicate_of": target,
        "score": score,
        "matches": ranked,
    }


def flags_everything_similar(stream: Stream) -> list[dict[str, Any]]:
    """Every repost flagged against its original; every near miss flagged against the post before it
    in its tenant (wrong); the rest unflagged with no match."""
    out, last = [], {}
    for post, truth in zip(stream.posts, stream.truth, strict=True):
        if truth["duplicate_of"] is not None:
            out.append(decision(post["id"], truth["duplicate_of"], [(truth["duplicate_of"], 0.99)]))
        elif truth["kind"] == "near_miss":
            out.append(decision(post["id"], last[post["tenant"]], [(last[post["tenant"]], 0.98)]))
        else:
            out.append(decision(post["id"]))
        last[post["tenant"]] = post["id"]
    return out


def test_every_flag_gets_the_truths_answer_with_both_texts(stream: Stream) -> None:
    decisions = flags_everything_similar(stream)
    seen = review(stream.posts, decisions, stream.truth, near=0, missed=0, seed=0)
    text = {p["id"]: p["text"] for p in stream.posts}
    kind = {t["id"]: t["kind"] for t in stream.truth}
    assert len(seen.verdicts) == sum(d["flagged"] for d in decisions) == seen.sources["flag"]
    for v in seen.verdicts:
        expected = "duplicate" if kind[v["id"]] in DUPLICATE_KINDS else "not_duplicate"
        assert v["verdict"] == expected
        assert (v["text"], v["duplicate_text"]) == (text[v["id"]], text[v["duplicate_of"]])
        ModeratorVerdict.model_validate_json(json.dumps(v))  # a valid message of the verdicts topic
    assert {"duplicate", "not_duplicate"} == {v["verdict"] for v in seen.verdicts}


def test_the_highest_unflagged_scores_are_reviewed_against_their_best_match(stream: Stream) -> None:
    ids = [p["id"] for p in stream.posts]
    decisions = [decision(ids[0]), decision(ids[1])] + [
        decision(doc_id, None, [(ids[0], 0.5 + i / 1000), (ids[1], 0.1)]) for i, doc_id in enumerate(ids[2:])
    ]
    seen = review(stream.posts, decisions, stream.truth, near=3, missed=0, seed=0)
    assert [v["id"] for v in seen.verdicts] == ids[-1:-4:-1]  # the three highest scores
    assert {v["duplicate_of"] for v in seen.verdicts} == {ids[0]}
    assert seen.sources == {"near": 3}


def test_a_sample_of_missed_reposts_is_reported_against_the_original(stream: Stream) -> None:
    decisions = [decision(p["id"]) for p in stream.posts]  # nothing flagged
    original = {t["id"]: t["duplicate_of"] for t in stream.truth}
    seen = review(stream.posts, decisions, stream.truth, near=0, missed=5, seed=7)
    assert len(seen.verdicts) == 5
    assert seen.sources == {"missed": 5}
    for v in seen.verdicts:
        assert v["verdict"] == "duplicate"
        assert v["duplicate_of"] == original[v["id"]]
    again = review(stream.posts, decisions, stream.truth, near=0, missed=5, seed=7)
    assert again.verdicts == seen.verdicts  # the same session every run


def test_the_second_half_is_scored_on_its_own_reposts(stream: Stream) -> None:
    first, second = halves(stream.posts)
    assert len(first) == len(second) == 100
    assert first[-1]["created_at"] < second[0]["created_at"]
    decisions = flags_everything_similar(stream)
    ids = {p["id"] for p in second}
    score = half_score(decisions, stream.truth, ids)
    reposts = sum(1 for t in stream.truth if t["id"] in ids and t["kind"] in DUPLICATE_KINDS)
    near_misses = sum(1 for t in stream.truth if t["id"] in ids and t["kind"] == "near_miss")
    assert score["duplicates"] == reposts
    assert score["recall"] == 1.0
    assert score["flags"] == reposts + near_misses
    assert score["precision"] == round(reposts / (reposts + near_misses), 4)
