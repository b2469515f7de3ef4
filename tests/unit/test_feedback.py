"""Moderators' verdicts: parsing and dead letters, the pair memory in the batch step (through replays),
and the per-tenant decision points they recalibrate."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fakes import HashEncoder, MemoryIndex, doc_record, raw_record
from worker.core.feedback import Feedback, Recalibration, recalibrate, wilson_lower
from worker.core.messages import DeadLetterReason, ModeratorVerdict
from worker.core.outcome import Decided
from worker.core.parse import parse_verdict
from worker.core.policy import Calibration, Policy
from worker.core.records import Record
from worker.core.step import StepConfig, run_batch

ORIGINAL = "the library on station road opens its new reading room on monday at nine with free coffee"
NEAR_MISS = "the library on station road opens its new reading room on friday at nine with free coffee"
RELATED = "a library on station road opened a reading room last friday at ten, coffee included"
UNRELATED = "completely different post about gardening tomatoes in the spring sun"
# cosines of the hash encoder: ORIGINAL~NEAR_MISS 0.947, NEAR_MISS~RELATED 0.576, UNRELATED~any < 0.1


def verdict_record(offset: int = 0, **fields: Any) -> Record:
    body = {"id": "b1", "duplicate_of": "a1", "verdict": "not_duplicate", "at": "2026-11-30T10:00:00Z"}
    body.update(fields)
    return raw_record(json.dumps({k: v for k, v in body.items() if v is not None}).encode(), offset)


def verdict(**fields: Any) -> ModeratorVerdict:
    parsed = parse_verdict(verdict_record(**fields), 10_000, 256)
    assert isinstance(parsed, ModeratorVerdict), parsed
    return parsed


# ------------------------------------------------------------------------------------------- parsing


def test_a_verdict_is_parsed_with_its_key_and_optional_texts() -> None:
    parsed = verdict(tenant="forum", reviewer="mod-7", text="a", duplicate_text="b")
    assert (parsed.key, parsed.verdict, parsed.reviewer) == ("forum/b1/a1", "not_duplicate", "mod-7")
    assert parsed.at.year == 2026
    assert verdict().tenant == "default"


def body(**fields: object) -> bytes:
    return json.dumps({"duplicate_of": "a1", "verdict": "duplicate", "at": "2026-11-30", **fields}).encode()


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (None, "invalid_verdict"),  # a tombstone withdraws nothing: it is reported
        (b"{not json", "invalid_json"),
        (b"[1]", "not_object"),
        (json.dumps({"id": "b1", "verdict": "duplicate", "at": "2026-11-30"}).encode(), "missing_field"),
        (body(id="b1", verdict="maybe"), "wrong_type"),
        (body(id="b1", at=5), "wrong_type"),
        (body(id="a1"), "invalid_verdict"),
        (body(id="b\x01"), "invalid_id"),
    ],
)
def test_a_bad_verdict_becomes_a_dead_letter_with_its_reason(value: bytes | None, code: str) -> None:
    parsed = parse_verdict(raw_record(value, 0), 10_000, 256)
    assert isinstance(parsed, DeadLetterReason)
    assert parsed.code == code


# --------------------------------------------------------------------------------- the pair memory


def decide(
    records: list[Record], index: MemoryIndex, feedback: Feedback, threshold: float = 0.5
) -> dict[str, Any]:
    outcome = run_batch(
        records, HashEncoder(), index, StepConfig(threshold, "hash-trigram-v1"), None, feedback
    )
    return {o.decision.id: o for o in outcome.outcomes if isinstance(o, Decided)}


def deletion(doc_id: str, offset: int) -> Record:
    return raw_record(
        json.dumps({"id": doc_id, "deleted": True}).encode(), offset, timestamp_ms=1_700_000_000_000 + offset
    )


def at(doc_id: str, text: str, offset: int) -> Record:
    return doc_record(doc_id, text, offset, timestamp_ms=1_700_000_000_000 + offset)


def test_a_rejected_pair_is_skipped_and_the_next_match_decides() -> None:
    index, feedback = MemoryIndex(), Feedback()
    first = decide(
        [at("a1", ORIGINAL, 0), at("x1", RELATED, 1), at("b1", NEAR_MISS, 2)], index, feedback, 0.9
    )
    assert first["b1"].decision.duplicate_of == "a1"
    feedback.apply([verdict()], index, Policy(0.5))  # no texts: the pair is found in the index
    later = decide([deletion("b1", 3), at("b2", NEAR_MISS, 4)], index, feedback)
    assert later["b2"].flag is not None
    assert later["b2"].flag.duplicate_of == "x1"  # a1 is skipped, the next candidate decides
    assert "a1" not in [m.id for m in later["b2"].decision.matches]
    assert decide([at("c1", ORIGINAL + " again", 5)], index, feedback)["c1"].decision.duplicate_of == "a1"


def test_a_confirmed_pair_is_flagged_whatever_its_score() -> None:
    index, feedback = MemoryIndex(), Feedback()
    decide([at("a1", ORIGINAL, 0)], index, feedback)
    missed = decide([at("y1", UNRELATED, 1)], index, feedback)
    assert not missed["y1"].decision.flagged  # the worker missed it; a moderator says otherwise
    feedback.apply([verdict(id="y1", verdict="duplicate")], index, Policy(0.5))
    again = decide([deletion("y1", 2), at("y2", UNRELATED, 3)], index, feedback)
    flag = again["y2"].flag
    assert flag is not None
    assert (flag.duplicate_of, flag.decided_by) == ("a1", "moderator")
    assert flag.score < 0.5


def test_a_replay_republishes_the_first_decision_whatever_was_learned_since() -> None:
    index, feedback = MemoryIndex(), Feedback()
    batch = [at("a1", ORIGINAL, 0), at("b1", NEAR_MISS, 1)]
    before = decide(batch, index, feedback)["b1"].flag
    feedback.apply([verdict()], index, Policy(0.5))
    assert decide(batch, index, feedback)["b1"].flag == before  # the same bytes, flagged as first published


def test_the_last_verdict_on_a_pair_wins() -> None:
    index, feedback = MemoryIndex(), Feedback()
    decide([at("a1", ORIGINAL, 0), at("b1", NEAR_MISS, 1)], index, feedback)
    feedback.apply([verdict(), verdict(verdict="duplicate")], index, Policy(0.5))
    assert feedback.label("default", ("a1", "b1"), None) == "duplicate"


# ----------------------------------------------------------------------------- decision points


def evidence(pairs: list[tuple[float, bool, int]]) -> list[tuple[float, bool]]:
    return [(score, duplicate) for score, duplicate, count in pairs for _ in range(count)]


RULES = Recalibration(min_verdicts=40, min_each=5, min_precision=0.8)


def test_thin_evidence_moves_nothing() -> None:
    assert recalibrate("t", evidence([(0.95, True, 30), (0.9, False, 9)]), Policy(0.9), RULES) is None  # 39
    assert (
        recalibrate("t", evidence([(0.95, True, 60), (0.9, False, 4)]), Policy(0.9), RULES) is None
    )  # 4 rejected


def test_rejected_flags_just_above_the_point_raise_it() -> None:
    reviewed = evidence([(0.91, False, 20), (0.93, True, 4), (0.95, True, 30), (0.99, True, 20)])
    chosen = recalibrate("t", reviewed, Policy(0.9), RULES)
    assert chosen is not None
    assert chosen.point == 0.93  # every rejected pair sat at 0.91
    assert chosen.previous == 0.9
    assert chosen.precision_low >= 0.8


def test_the_point_goes_down_only_where_reviewers_also_rejected_pairs_below_it() -> None:
    flags = [(0.95, True, 60), (0.91, False, 5)]
    missed_only = evidence([*flags, (0.80, True, 10)])  # reviewers only reported misses below the point
    assert recalibrate("t", missed_only, Policy(0.9), RULES).point >= 0.9  # type: ignore[union-attr]
    looked = evidence([*flags, (0.85, True, 20), (0.70, False, 6), (0.60, True, 3)])
    chosen = recalibrate("t", looked, Policy(0.9), RULES)
    assert chosen is not None
    assert chosen.point == 0.85  # down to where the misses are, above the rejected pairs at 0.70
    assert chosen.point >= 0.70  # never below the lowest rejected pair


def test_a_small_gain_or_an_imprecise_band_moves_nothing() -> None:
    flags = [(0.95, True, 60), (0.91, False, 1), (0.92, True, 4)]
    assert recalibrate("t", evidence([*flags, (0.5, False, 5)]), Policy(0.9), RULES) is None  # F1 +0.008
    mixed_band = evidence([(0.95, True, 40), (0.85, True, 12), (0.86, False, 6), (0.70, False, 5)])
    assert recalibrate("t", mixed_band, Policy(0.9), RULES) is None  # 12 of 18 below: not precise enough


def test_a_calibrated_model_learns_a_probability() -> None:
    policy = Policy(0.99, Calibration((0.0, 1.0), (0.0, 1.0)), decision_point=0.9)
    chosen = recalibrate("t", evidence([(0.91, False, 20), (0.95, True, 40)]), policy, RULES)
    assert chosen is not None
    assert chosen.point == 0.95


def test_the_operators_tenant_point_wins_over_a_learned_one() -> None:
    feedback = Feedback(Recalibration(min_verdicts=4, min_each=2, min_precision=0.2))
    index = MemoryIndex()
    texts = [ORIGINAL, NEAR_MISS, RELATED, UNRELATED]
    decide([at(f"p{i}", t, i) for i, t in enumerate(texts)], index, feedback, 0.99)
    rows = [
        ("p1", "p0", "not_duplicate"),
        ("p2", "p1", "duplicate"),
        ("p2", "p0", "duplicate"),
        ("p3", "p0", "not_duplicate"),
    ]
    points, _ = feedback.apply(
        [verdict(id=a, duplicate_of=b, verdict=v) for a, b, v in rows], index, Policy(0.99)
    )
    assert [p.tenant for p in points] == ["default"]
    assert feedback.policy(Policy(0.99)).point("default") == points[0].point
    assert feedback.policy(Policy(0.99, tenant_points={"default": 0.7})).point("default") == 0.7


def test_the_wilson_bound_is_honest_at_small_counts() -> None:
    assert wilson_lower(5, 5) < 0.6 < wilson_lower(50, 50) < 1.0
    assert wilson_lower(0, 0) == 0.0


# ------------------------------------------------------------------------- texts for the trainer


def test_exported_verdicts_get_their_texts_back_or_say_why_not() -> None:
    from worker.core.feedback import Reviewed
    from worker.service.pairs import with_texts

    at_a, at_b, gone = (1, 0 << 40 | 5), (2, 1 << 40 | 7), (3, 0 << 40 | 1)
    topic = {
        (0, 5): json.dumps({"id": "a1", "text": "first"}).encode(),
        (1, 7): b'{"id": "other", "text": "x"}',
    }
    items = [
        Reviewed(
            verdict(id="b1", duplicate_of="a1"), None, None, (at_b, at_a)
        ),  # b's offset holds another post
        Reviewed(verdict(id="c1", duplicate_of="a1", text="own"), None, None, (None, at_a)),
        Reviewed(verdict(id="d1", duplicate_of="a1"), None, None, (gone, None)),
    ]
    asked: list[list[tuple[int, int]]] = []

    def read(positions: list[tuple[int, int]]) -> dict[tuple[int, int], bytes | None]:
        asked.append(positions)
        return {p: topic.get(p) for p in positions}

    rows, why = with_texts(items, read)
    assert asked == [[(0, 1), (0, 5), (1, 7)]]  # one read for all, each position once
    assert [(r.get("text"), r.get("duplicate_text")) for r in rows] == [
        (None, "first"),
        ("own", "first"),
        (None, None),
    ]
    assert why == {
        "read back from the documents topic": 2,
        "in the verdict": 1,
        "no longer in the documents topic (retention) or another post there": 2,
        "not in the index when the verdict was read": 1,
    }
