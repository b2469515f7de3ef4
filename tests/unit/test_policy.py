"""The decision policy: cosine thresholds, calibrated probabilities, the verifier's band, tenant points."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import pytest

from tests.fakes import HashEncoder, ListPublisher, MemoryIndex, doc_record, run_and_send
from worker.core.decide import decode_verdict, encode_verdict
from worker.core.emit import Topics
from worker.core.policy import Calibration, PairCalibration, Policy
from worker.core.ports import Candidate
from worker.core.step import StepConfig

LINEAR = Calibration((0.0, 1.0), (0.0, 1.0))  # P(duplicate) = cosine, for readable tests
SIGMOID = PairCalibration(0.0, 1.0, 0.0)  # P(duplicate) = σ(the verifier's score)


def ranked(*scores: float, stage: str = "index") -> list[Candidate]:
    return [Candidate(f"c{i}", s, (0, i), stage) for i, s in enumerate(scores)]  # type: ignore[arg-type]


def test_a_calibration_interpolates_and_is_flat_beyond_its_knots() -> None:
    calibration = Calibration((0.5, 0.9), (0.1, 0.9))
    assert calibration(0.7) == pytest.approx(0.5)
    assert (calibration(0.0), calibration(1.0)) == (0.1, 0.9)
    with pytest.raises(ValueError, match="increase"):
        Calibration((0.9, 0.5), (0.1, 0.9))


def test_a_pair_calibration_weighs_the_cosine_and_the_verifier_together() -> None:
    both = PairCalibration(cosine=10.0, score=1.0, bias=-9.0)
    assert both(0.9, 0.0) == pytest.approx(0.5)
    assert both(0.95, 0.0) > both(0.9, 0.0)  # closer posts: more likely the same
    assert both(0.9, -3.0) < 0.05 < 0.95 < both(0.9, 3.0)  # the verifier moves it either way
    assert both(0.9, 1e9) == pytest.approx(1.0)  # an extreme score cannot overflow


def test_an_uncalibrated_model_decides_on_the_cosine_as_before() -> None:
    policy = Policy(0.8)
    assert policy.judge("t", ranked(0.8), {}).flagged
    assert not policy.judge("t", ranked(0.799999), {}).flagged
    verdict = policy.judge("t", ranked(0.9), {})
    assert (verdict.decided_by, verdict.probability) == ("encoder", None)
    assert not policy.judge("t", [], {}).flagged


def test_a_calibrated_model_decides_on_the_probability_and_reports_it() -> None:
    policy = Policy(0.99, Calibration((0.5, 0.9), (0.0, 1.0)), decision_point=0.75)
    flagged = policy.judge("t", ranked(0.85), {})
    assert (flagged.flagged, flagged.probability) == (True, 0.875)
    assert not policy.judge("t", ranked(0.7), {}).flagged  # 0.5 < 0.75
    exact = policy.judge("t", ranked(1.0, stage="exact"), {})
    assert (exact.flagged, exact.decided_by, exact.probability) == (True, "exact", 1.0)


def test_the_verifier_decides_inside_the_band_and_can_pick_a_lower_candidate() -> None:
    policy = Policy(0.9, LINEAR, 0.8, band=(0.7, 0.95), verifier=SIGMOID, verify_top=2)
    candidates = ranked(0.93, 0.91)  # a look-alike ranked first, the real repost second
    assert policy.to_verify(candidates) == [0, 1]
    verdict = policy.judge("t", candidates, {0: -4.0, 1: 4.0})
    assert verdict.flagged
    assert verdict.duplicate_of == candidates[1]
    assert (verdict.decided_by, verdict.verifier_score) == ("verifier", 4.0)
    assert verdict.probability == pytest.approx(1 / (1 + math.exp(-4.0)), abs=1e-6)
    rejected = policy.judge("t", candidates, {0: -4.0, 1: -4.0})
    assert not rejected.flagged
    assert policy.to_verify(ranked(0.97, 0.5)) == []  # above the band: the encoder is sure
    assert policy.judge("t", ranked(0.97), {}).flagged


def test_a_tenant_can_have_its_own_decision_point() -> None:
    policy = Policy(0.8, tenant_points={"strict": 0.95})
    assert policy.judge("lenient", ranked(0.9), {}).flagged
    assert not policy.judge("strict", ranked(0.9), {}).flagged
    calibrated = Policy(0.8, LINEAR, 0.5, tenant_points={"strict": 0.95})
    assert calibrated.point("strict") == 0.95
    assert calibrated.point("other") == 0.5


def test_a_stored_verified_decision_comes_back_whole() -> None:
    policy = Policy(0.9, LINEAR, 0.8, band=(0.7, 0.95), verifier=SIGMOID)
    verdict = policy.judge("t", ranked(0.93, 0.91), {0: -4.0, 1: 4.0})
    assert decode_verdict(encode_verdict(verdict)) == verdict


class PairVerifier:
    """Says "duplicate" exactly when both texts share their last word: a fact changes the last word."""

    version = "verifier-test"

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, str]]] = []

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        self.calls.append(list(pairs))
        return np.array([4.0 if a.split()[-1] == b.split()[-1] else -4.0 for a, b in pairs])


def test_the_batch_step_asks_the_verifier_once_and_flags_say_who_decided() -> None:
    policy = Policy(0.99, LINEAR, 0.9, band=(0.5, 0.999), verifier=SIGMOID, verify_top=1)
    config = StepConfig(0.99, "hash-trigram-v1", policy=policy, keep_text=200)
    index, publisher, verifier = MemoryIndex(), ListPublisher(), PairVerifier()
    text = "selling my blue road bike with new tyres in leeds for 120"
    first = [doc_record("a", text, 0)]
    later = [
        doc_record("near", text.replace("120", "240"), 1),  # one fact changed
        doc_record("repost", text.replace("selling", "SELLING").replace("blue", "bleu"), 2),
    ]
    topics = Topics(decisions="decisions")
    run_and_send(first, HashEncoder(), index, publisher, config, topics)
    point = index.point("default", "a")
    assert point is not None
    assert point.text == text  # kept for the verifier of later batches
    run_and_send(later, HashEncoder(), index, publisher, config, topics, verifier=verifier)
    assert len(verifier.calls) == 1  # one call for the batch
    decisions = {d["id"]: d for d in publisher.json("decisions")}
    assert decisions["near"]["flagged"] is False
    assert decisions["near"]["decided_by"] == "verifier"
    flags = {f["id"]: f for f in publisher.json("duplicate-flags")}
    assert set(flags) == {"repost"}
    assert flags["repost"]["decided_by"] == "verifier"
    assert flags["repost"]["probability"] == pytest.approx(1 / (1 + math.exp(-4.0)), abs=1e-6)
    assert flags["repost"]["verifier_score"] == 4.0
    assert flags["repost"]["threshold"] == 0.9
    replay = ListPublisher()
    run_and_send(later, HashEncoder(), index, replay, config, topics, verifier=verifier)
    assert len(verifier.calls) == 1  # a replay republishes its stored decision: no second opinion
    assert [json.loads(v) for _, v in replay.messages("duplicate-flags")] == [flags["repost"]]
