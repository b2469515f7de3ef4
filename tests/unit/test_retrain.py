"""Moderators' verdicts → pairs → a retrained model that ships only if it is better
(``trainer retrain``), and two models side by side (``trainer compare``).

Verdict reading and the gate are tested directly; the commands end to end on a tiny random model, whose
verdicts are built so that the live model already ranks the held-back ones perfectly: nothing can beat
it, so ``retrain`` must refuse and write nothing, however its short training goes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.unit.test_card import manifest
from tests.unit.test_train import write_pairs
from trainer.batches import build_training_set
from trainer.card import model_readme
from trainer.compare import VERDICT_SET, ModelScores, SetScore, gate, set_score
from trainer.verdicts import VerdictPair, is_held_back, read_verdicts, split_held_back, training_pairs

AT = "2026-11-30T12:00:00+00:00"
WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "maple",
    "violet",
    "copper",
    "harbor",
    "falcon",
    "meadow",
    "lantern",
    "pepper",
]


def verdict(id_: str, of: str, kind: str = "duplicate", **more: object) -> str:
    return json.dumps({"id": id_, "duplicate_of": of, "verdict": kind, "at": AT, **more})


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# Verdict files → pairs


def test_verdicts_become_pairs_the_last_per_key_wins_and_nothing_is_dropped_silently(tmp_path: Path) -> None:
    first = write_lines(
        tmp_path / "monday.jsonl",
        [
            verdict("p2", "p1"),  # texts from the documents
            "{not json",
            verdict("p4", "p3", "not_duplicate", text="a cat on a mat", duplicate_text="a dog on a log"),
            json.dumps({"id": "p6", "duplicate_of": "p5", "verdict": "duplicate"}),  # no "at"
            "",
            verdict("p8", "p7", "not_duplicate"),  # p7 is deleted, p8 was never posted
        ],
    )
    second = write_lines(tmp_path / "tuesday.jsonl", [verdict("p2", "p1", "not_duplicate")])
    documents = write_lines(
        tmp_path / "posts.jsonl",
        [
            json.dumps({"id": "p1", "text": "free tickets here"}),
            json.dumps({"id": "p2", "text": "FREE tickets here!!"}),
            json.dumps({"id": "p7", "text": "soon gone"}),
            json.dumps({"id": "p7", "deleted": True}),
        ],
    )
    kept, pairs, report = read_verdicts([first, second], documents)

    assert len(kept) == report.verdicts == 3
    assert report.replaced == 1
    by_key = {p.key: p for p in pairs}
    assert by_key["default/p2/p1"] == VerdictPair(
        "default/p2/p1", "free tickets here", "FREE tickets here!!", 0
    )  # tuesday's verdict replaced monday's
    assert by_key["default/p4/p3"].earlier == "a dog on a log"
    monday = report.files[0]
    assert (monday.rows, monday.bad_rows) == (5, 2)  # the blank line is not a verdict
    assert sorted(line for lines in monday.bad_lines.values() for line in lines) == [2, 4]
    (why,) = report.untrainable
    assert why.startswith("no text for id and duplicate_of: not in the verdict nor in posts.jsonl")
    assert report.untrainable_keys[why] == ["default/p8/p7"]
    summary = report.summary()
    assert summary["cannot_become_a_training_pair"] == {why: "1 (default/p8/p7)"}


def test_without_documents_a_verdict_without_texts_says_so(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "v.jsonl", [verdict("p2", "p1", text="only the later post")])
    _, pairs, report = read_verdicts([path])
    assert pairs == []
    assert list(report.untrainable) == [
        "no text for duplicate_of: not in the verdict and no --documents given"
    ]


def test_the_held_back_fifth_is_fixed_by_the_key_alone() -> None:
    pairs = [VerdictPair(f"default/p{i}/p{i + 1}", "a", "b", i % 2) for i in range(2000)]
    _, held = split_held_back(pairs)
    assert 0.17 < len(held) / len(pairs) < 0.23
    # another order, other texts and the opposite verdicts: the same keys are held back
    changed = [VerdictPair(p.key, "x", "y", 1 - p.label) for p in reversed(pairs)]
    assert {p.key for p in split_held_back(changed)[1]} == {p.key for p in held}
    assert is_held_back("acme/p1/p2") == is_held_back("acme/p1/p2")
    assert (is_held_back("default/p1/p2", 1.0), is_held_back("default/p1/p2", 0.0)) == (True, False)


def test_a_rejected_flag_trains_as_a_hard_negative_and_each_verdict_is_seen_copies_times() -> None:
    rejected = VerdictPair("default/y/x", "win a free phone today", "win a free laptop today", 0)
    confirmed = VerdictPair("default/b/a", "the bus is late again", "our bus is late once more", 1)
    pairs = training_pairs([rejected, confirmed], copies=3, seed=0)
    assert pairs == training_pairs([rejected, confirmed], copies=3, seed=0)  # reproducible
    data = build_training_set(pairs)
    x = data.texts.index(rejected.earlier)
    y = data.texts.index(rejected.later)
    assert data.clusters[x] != data.clusters[y]
    assert y in data.hard_negatives[data.clusters[x]]
    assert x in data.hard_negatives[data.clusters[y]]
    in_cluster = {c: sum(data.clusters[a] == c for a, _ in data.examples) for c in set(data.clusters)}
    assert in_cluster[data.clusters[x]] == in_cluster[data.clusters[y]] == 3
    assert in_cluster[data.clusters[data.texts.index(confirmed.earlier)]] == 3


# ---------------------------------------------------------------------------------------------
# The gate


def scores(verdicts_ap: float, dev_ap: float, version: str = "m") -> ModelScores:
    return ModelScores(
        version,
        version,
        0.9,
        [
            SetScore(VERDICT_SET, 40, 30, verdicts_ap, 0.9, 0.8, 0.85),
            SetScore("qqp dev (untrained half)", 2000, 900, dev_ap, 0.95, 0.2, 0.33),
        ],
    )


def test_the_gate_lets_through_only_a_model_that_ranks_the_held_back_verdicts_better() -> None:
    live = scores(0.80, 0.860)
    assert gate(live, scores(0.85, 0.857), max_ap_drop=0.005) == []
    (worse,) = gate(live, scores(0.79, 0.870), max_ap_drop=0.005)
    assert worse == (
        "held-back verdicts (40 pairs): average precision 0.7900 does not beat the live model's 0.8000"
    )
    assert "does not beat" in gate(live, scores(0.80, 0.860), max_ap_drop=0.005)[0]  # equal is not better
    (forgot,) = gate(live, scores(0.90, 0.850), max_ap_drop=0.005)
    assert forgot.startswith("qqp dev (untrained half): average precision 0.8500")
    assert "a loss of 0.0100 (limit 0.005)" in forgot


def test_flags_are_counted_at_the_models_own_threshold() -> None:
    score = set_score("s", np.array([0.99, 0.97, 0.95, 0.5]), [1, 0, 1, 0], threshold=0.95)
    assert (score.pairs, score.duplicates) == (4, 2)
    assert (score.precision, score.recall) == pytest.approx((2 / 3, 1.0))
    assert score.f1 == pytest.approx(0.8)
    assert np.isnan(set_score("s", np.array([0.9, 0.8]), [1, 1], 0.5).average_precision)


def test_the_model_card_says_where_a_retrained_model_came_from() -> None:
    training = {
        "retrained_from": "transformer-aaaaaaaaaaaa",
        "verdicts": {"trained_on": 412, "held_back": 98},
    }
    card = model_readme(manifest(training=training))
    assert "Continued from `transformer-aaaaaaaaaaaa` on 412 moderators' verdicts" in card
    assert "98 more held back" in card


# ---------------------------------------------------------------------------------------------
# The commands, end to end on a tiny model


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny live model, a data directory shaped like ../shared/data, posts and verdicts. Confirmed
    pairs are exact copies (cosine 1 under any model) and rejected ones share no word: the live model
    ranks every verdict perfectly, so no candidate can beat it."""
    from devkit.tiny import tiny_model

    root = tmp_path_factory.mktemp("retrain")
    data = root / "data"
    (data / "qqp").mkdir(parents=True)
    (data / "mrpc").mkdir()
    write_pairs(data / "qqp" / "dev.tsv", 1, dev=True)
    write_pairs(data / "mrpc" / "train.tsv", 0)
    posts, lines = [], []
    for i in range(60):
        text = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(4)) + f" number {i}"
        posts += [{"id": f"a{i}", "text": text}, {"id": f"b{i}", "text": text if i % 2 else "zz qq xx"}]
        lines.append(verdict(f"b{i}", f"a{i}", "duplicate" if i % 2 else "not_duplicate"))
    documents = write_lines(root / "posts.jsonl", [json.dumps(p) for p in posts])
    texts = [p["text"] for p in posts] + (data / "qqp" / "dev.tsv").read_text().split("\t")
    models = {name: tiny_model(root / name, texts, seed=seed) for name, seed in (("live", 0), ("other", 1))}
    return {"data": data, "documents": documents, "verdicts": write_lines(root / "v.jsonl", lines), **models}


def trainer_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "trainer", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def test_retrain_refuses_a_model_that_is_not_better_and_writes_nothing(
    stream: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "candidate"
    run = trainer_cli(
        "retrain", "--model", stream["live"], "--verdicts", stream["verdicts"], "--documents",
        stream["documents"], "--data-dir", stream["data"], "--out", out, "--budget-minutes", "0.8",
        "--no-progress",
    )  # fmt: skip
    assert run.returncode == 3, run.stderr[-2000:]
    assert not out.exists()
    assert not list(tmp_path.iterdir())
    refused = json.loads(run.stderr.strip().splitlines()[-1])
    assert refused["event"] == "not_better_not_written"
    assert "held-back verdicts" in refused["why"]
    assert "does not beat the live model's 1.0000" in refused["why"]
    assert "qqp dev (untrained half)" in run.stdout  # the table, before the verdict
    events = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    trained = next(e for e in events if e["event"] == "model_written")  # the candidate, in a temp dir
    assert trained["steps"] > 0


def test_retrain_says_when_the_held_back_verdicts_cannot_judge_a_model(
    stream: dict[str, Path], tmp_path: Path
) -> None:
    confirmed_only = write_lines(tmp_path / "v.jsonl", [verdict(f"b{i}", f"a{i}") for i in range(1, 60, 2)])
    run = trainer_cli(
        "retrain", "--model", stream["live"], "--verdicts", confirmed_only, "--documents",
        stream["documents"], "--data-dir", stream["data"], "--out", tmp_path / "m",
    )  # fmt: skip
    assert run.returncode == 2
    assert "need both a confirmed and a rejected pair" in run.stderr
    assert not (tmp_path / "m").exists()


def test_compare_prints_both_models_on_the_held_back_verdicts_and_the_dev_sets(
    stream: dict[str, Path], tmp_path: Path
) -> None:
    run = trainer_cli(
        "compare", "--live", stream["live"], "--candidate", stream["other"], "--verdicts",
        stream["verdicts"], "--documents", stream["documents"], "--data-dir", stream["data"],
        "--json", tmp_path / "c.json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads((tmp_path / "c.json").read_text())
    live, candidate = report["live"], report["candidate"]
    assert live["version"] != candidate["version"]
    assert f"live       {live['version']}" in run.stdout
    assert f"candidate  {candidate['version']}" in run.stdout
    names = [s["name"] for s in live["sets"]]
    assert names[:2] == [VERDICT_SET, "qqp dev (untrained half)"]
    held = live["sets"][0]
    assert held["average_precision"] == pytest.approx(1.0)  # exact copies above strangers
    row = next(line for line in run.stdout.splitlines() if line.startswith(VERDICT_SET))
    assert f"{held['pairs']} ({held['duplicates']})" in row
