"""The shipped decision: fact changes, the simulated repost stream, calibration, and a verifier that goes
into the model directory and out again into the worker."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import pytest

from tests.unit.test_model import TEXTS, tiny_sentence_transformer
from trainer.data import Pair
from trainer.facts import CHANGES, fact_change
from trainer.stream import compare, decision_point, isotonic, logistic, simulate

THINGS = ["bike", "sofa", "laptop", "guitar", "camera", "tent", "piano", "kettle", "drone", "desk"]
PLACES = ["Leeds", "Paris", "Oslo", "Madrid", "Lisbon", "Berlin", "Tokyo", "Chicago"]


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("Selling my bike for $120 in Leeds.", "a number or a place"),
        ("The shop is open on Sunday and closed on Monday.", "a day, an opposite or a negation"),
        ("How do I move from Paris to London?", "roles or a place"),
    ],
)
def test_a_fact_change_changes_the_text_and_only_a_little(text: str, kind: str) -> None:
    rng = random.Random(0)
    for _ in range(20):
        changed = fact_change(text, rng)
        assert changed is not None, kind
        assert changed != text
        assert abs(len(changed.split()) - len(text.split())) <= 1  # a look-alike, not a rewrite


def test_every_kind_of_fact_change_says_when_it_cannot_apply() -> None:
    rng = random.Random(0)
    assert all(
        change("plain words only here", rng, ()) in (None, "plain words only here") for change in CHANGES[:3]
    )


def pairs(n: int, seed: int = 0) -> list[Pair]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        thing, place = rng.choice(THINGS), rng.choice(PLACES)
        text = f"selling my {thing} in {place}, {10 + i} pounds, collection only"
        if i % 2:
            out.append(Pair(text, f"my {thing} is for sale in {place} at {10 + i} pounds, you collect", 1))
        else:
            out.append(Pair(text, f"looking for a {rng.choice(THINGS)} near {rng.choice(PLACES)}", 0))
    return out


def test_the_simulated_stream_keeps_reposts_after_their_originals() -> None:
    posts = simulate(pairs(40), limit=40, seed=1)
    first: dict[int, int] = {}
    for position, post in enumerate(posts):
        first.setdefault(post.cluster, position)
    assert len(posts) > 80
    texts = {p.text for p in posts}
    originals = {p.text_a for p in pairs(40)}
    assert originals <= texts
    stream = compare(posts, np.eye(len(posts), dtype=np.float32))
    assert stream.reposts() == len(posts) - len(first)


def test_the_decision_point_is_the_lowest_probability_that_keeps_the_target_precision() -> None:
    probabilities = [0.9, 0.8, 0.7, 0.6, 0.5]
    right = [True, True, True, False, True]
    point, outcome = decision_point(probabilities, right, reposts=5, target=0.9)
    assert point == 0.7
    assert (outcome.precision, outcome.recall, outcome.flags) == (1.0, 0.6, 3)


def test_an_isotonic_calibration_never_goes_down() -> None:
    rng = np.random.default_rng(0)
    scores = rng.uniform(0, 1, 500)
    labels = (rng.uniform(0, 1, 500) < scores).astype(int)
    calibration = isotonic(scores.tolist(), labels.tolist())
    values = [calibration(x) for x in np.linspace(0, 1, 50)]
    assert all(b >= a for a, b in itertools.pairwise(values))
    assert values[0] < 0.3 < 0.7 < values[-1]


def test_the_pair_calibration_learns_the_verifier_catches_what_the_cosine_misses() -> None:
    rng = np.random.default_rng(0)
    cosines = rng.uniform(0.7, 1.0, 600)
    duplicate = rng.uniform(0, 1, 600) < 0.5
    scores = np.where(duplicate, 2.0, -2.0) + rng.normal(0, 1.0, 600)  # the verifier knows, the cosine not
    fit = logistic(list(zip(cosines.tolist(), scores.tolist(), strict=True)), duplicate.astype(int).tolist())
    assert fit.score > 1.0
    assert fit(0.9, -3.0) < 0.1 < 0.9 < fit(0.9, 3.0)
    flat = logistic([(0.9, 1.0), (0.8, -1.0)], [1, 1])  # one class only: a constant, not an error
    assert flat(0.1, -5.0) == flat(0.9, 5.0) > 0.9


def write_pairs(path: Path, rows: list[Pair]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["text_a\ttext_b\tlabel"] + [f"{p.text_a}\t{p.text_b}\t{p.label}" for p in rows]
    path.write_text("\n".join(lines) + "\n")


def test_a_shipped_verifier_is_loaded_and_run_by_the_worker(tmp_path: Path) -> None:
    from tests.fakes import ListPublisher, MemoryIndex, doc_record, run_and_send
    from trainer.export import export_pretrained
    from trainer.ship import ShipRecipe, ship, write
    from trainer.stream import Calibrated, Outcome
    from trainer.verifier import VerifierRecipe, from_encoder
    from worker.core.emit import Topics
    from worker.core.policy import PairCalibration
    from worker.model.directory import load_model_dir
    from worker.model.encode import TorchEncoder
    from worker.model.modules import TransformerEncoder
    from worker.service.decision import decision_of, step_config
    from worker.service.settings import WorkerSettings

    model = tmp_path / "model"
    export_pretrained(tiny_sentence_transformer(tmp_path / "st"), model, device="cpu")
    data = tmp_path / "data"
    write_pairs(data / "forum" / "train.tsv", pairs(120, seed=1))
    write_pairs(data / "forum" / "dev.tsv", pairs(120, seed=2))
    recipe = ShipRecipe(
        verifier=VerifierRecipe(layers=1, budget_s=20, max_steps=4, labelled_per_file=60, synthetic=30),
        stream_pairs=60,
    )
    shipped = ship(model, data, tmp_path / "shipped", recipe, device="cpu")
    assert shipped.stream is not None
    assert shipped.stream.target_precision == 0.9
    assert "forum/dev.tsv (untrained half)" in shipped.stream.calibrated_on
    # The tiny random model's verifier may not earn a band; write one that judges everything.
    manifest, module, tokenizer = load_model_dir(tmp_path / "shipped")
    assert isinstance(module, TransformerEncoder)
    wide = Calibrated(
        isotonic([0.0, 1.0], [0, 1]),
        0.5,
        Outcome(1.0, 1.0, 1, 1.0),
        (-1.0, 1.0),
        PairCalibration(0.0, 1.0, 0.0),
    )
    verifier = from_encoder(module, 1)
    write(
        tmp_path / "shipped",
        tmp_path / "wide",
        manifest,
        module,
        tokenizer,
        verifier,
        wide,
        recipe,
        "test",
        1,
        {},
        {},
    )
    encoder = TorchEncoder(tmp_path / "wide", device="cpu")
    plan = decision_of(WorkerSettings(), encoder)
    assert plan.verifier is not None
    assert plan.policy.verifies
    config = step_config(WorkerSettings(), encoder, 0.5, decision=plan)
    publisher = ListPublisher()
    records = [doc_record("a", TEXTS[0], 0), doc_record("b", TEXTS[1], 1)]  # words the tiny model knows
    run_and_send(records, encoder, MemoryIndex(), publisher, config, Topics(decisions="d"), plan.verifier)
    later = {d["id"]: d for d in publisher.json("d")}["b"]
    assert later["decided_by"] == "verifier"
    assert later["verifier_score"] is not None
    assert 0.0 <= later["probability"] <= 1.0
    # `trainer score` reports what the worker decided on: the same probability for the same pair.
    from trainer.commands import final_scores

    (score,) = final_scores(encoder, [TEXTS[0]], [TEXTS[1]])
    assert score == pytest.approx(later["probability"], abs=1e-6)


def test_the_verifier_reports_the_steps_it_took(tmp_path: Path) -> None:
    from trainer.export import export_pretrained
    from trainer.verifier import VerifierData, VerifierRecipe, train_verifier
    from worker.model.directory import load_model_dir
    from worker.model.modules import TransformerEncoder

    export_pretrained(tiny_sentence_transformer(tmp_path / "st"), tmp_path / "model", device="cpu")
    _, module, tokenizer = load_model_dir(tmp_path / "model")
    assert isinstance(module, TransformerEncoder)
    recipe = VerifierRecipe(layers=1, batch_size=4, budget_s=600, max_steps=3)
    _, figures = train_verifier(module, tokenizer, VerifierData(pairs(40)), recipe, progress=False)
    assert (figures["steps"], figures["pairs_seen"]) == (3, 12)
