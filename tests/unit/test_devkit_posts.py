"""The demo stream (``devkit/posts``): deterministic, well-ordered, truthful; and the metric scoring it."""

from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path
from typing import cast

import pytest

from devkit import posts as demo
from devkit.posts import (
    DUPLICATE_KINDS,
    KINDS,
    PostRecord,
    Stream,
    TruthRecord,
    edits,
    generate,
    precision_recall,
    spam_edit,
    templates,
)
from worker.core.normalize import normalize, text_hash

ROOT = Path(__file__).resolve().parents[2]
ZERO_WIDTH = set("\u200b\u200c\u200d\u2060\ufeff")
URL = re.compile(r"\S*://\S+")  # a link, even one with homoglyphs or zero-widths in its scheme


@pytest.fixture(scope="module")
def committed() -> Stream:
    return Stream(
        posts=cast(list[PostRecord], demo.read_jsonl(ROOT / "demo" / demo.POSTS_FILE)),
        truth=cast(list[TruthRecord], demo.read_jsonl(ROOT / "demo" / demo.TRUTH_FILE)),
    )


@pytest.fixture(scope="module")
def large() -> Stream:
    return generate(3000, seed=11)


def _hash(text: str) -> str:
    return text_hash(normalize(text))


# --------------------------------------------------------------------------------------- the stream


def test_same_seed_gives_the_same_stream_and_another_seed_another() -> None:
    assert generate(120, seed=7) == generate(120, seed=7)
    assert generate(120, seed=7).posts != generate(120, seed=8).posts


def test_committed_files_are_what_the_generator_writes(tmp_path: Path) -> None:
    demo.write_stream(generate(), tmp_path)
    for name in (demo.POSTS_FILE, demo.TRUTH_FILE):
        assert (tmp_path / name).read_bytes() == (ROOT / "demo" / name).read_bytes(), (
            f"demo/{name} is stale: run `python -m devkit.posts`"
        )


def test_committed_stream_has_every_kind_in_its_share(committed: Stream) -> None:
    counts = {kind: sum(row["kind"] == kind for row in committed.truth) for kind in KINDS}
    assert 400 <= len(committed.posts) <= 600
    assert counts == demo.composition(len(committed.posts))
    assert all(counts[kind] > 0 for kind in KINDS)
    tenants = {row["tenant"] for row in committed.posts}
    assert tenants == {demo.DEFAULT_TENANT, demo.OTHER_TENANT}


@pytest.mark.parametrize("n", [demo.MIN_N, 57])
def test_small_streams_still_have_every_kind(n: int) -> None:
    stream = generate(n, seed=1)
    assert len(stream.posts) == len(stream.truth) == n
    assert {row["kind"] for row in stream.truth} == set(KINDS)


def test_too_small_a_stream_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 20"):
        generate(demo.MIN_N - 1)


@pytest.mark.parametrize("name", ["committed", "large"])
def test_reposts_arrive_after_their_original_in_its_tenant(name: str, request: pytest.FixtureRequest) -> None:
    stream: Stream = request.getfixturevalue(name)
    position = {row["id"]: i for i, row in enumerate(stream.truth)}
    assert len(position) == len(stream.truth)
    assert [p["id"] for p in stream.posts] == [t["id"] for t in stream.truth]
    stamps = [p["created_at"] for p in stream.posts]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == len(stamps)  # strictly increasing
    for i, row in enumerate(stream.truth):
        if row["kind"] in DUPLICATE_KINDS:
            assert row["duplicate_of"] is not None
            source = position[row["duplicate_of"]]
            assert source < i
            assert stream.truth[source]["kind"] == "original"
            assert stream.posts[source]["tenant"] == stream.posts[i]["tenant"]
        else:
            assert row["duplicate_of"] is None


@pytest.mark.parametrize("name", ["committed", "large"])
def test_the_truth_never_contradicts_the_exact_path(name: str, request: pytest.FixtureRequest) -> None:
    """A post that duplicates nothing never hashes like an earlier post of its tenant; an exact copy does,
    and like a member of its own cluster."""
    stream: Stream = request.getfixturevalue(name)
    earlier: dict[tuple[str, str], str] = {}  # (tenant, text hash) → cluster of its first post
    for post, row in zip(stream.posts, stream.truth, strict=True):
        key = (post["tenant"], _hash(post["text"]))
        cluster = row["duplicate_of"] or row["id"]
        if row["kind"] == "exact":
            assert earlier.get(key) == cluster, row
        elif row["kind"] not in DUPLICATE_KINDS:
            assert key not in earlier, row
        earlier.setdefault(key, cluster)


def test_cross_tenant_copies_come_from_the_other_tenant(committed: Stream) -> None:
    first_seen: dict[str, str] = {}  # text → tenant of its first post
    copied_verbatim = 0
    for post, row in zip(committed.posts, committed.truth, strict=True):
        if row["kind"] == "cross_tenant" and post["text"] in first_seen:
            assert first_seen[post["text"]] != post["tenant"]
            copied_verbatim += 1
        first_seen.setdefault(post["text"], post["tenant"])
    assert copied_verbatim > 0


def test_edits_use_every_spam_trick(committed: Stream) -> None:
    texts = [p["text"] for p, t in zip(committed.posts, committed.truth, strict=True) if t["kind"] == "edit"]
    assert any(ZERO_WIDTH & set(text) for text in texts)
    assert any("\u0400" <= ch <= "\u04ff" or "\u0370" <= ch <= "\u03ff" for text in texts for ch in text)
    assert any(ord(ch) > 0x1F000 for text in texts for ch in text)  # emoji
    assert any(URL.search(text) for text in texts)
    assert any(text.isupper() or text.islower() for text in texts)


def test_rewrites_and_edits_differ_from_their_original(committed: Stream) -> None:
    text = {p["id"]: p["text"] for p in committed.posts}
    for row in committed.truth:
        if row["kind"] in ("edit", "rewrite"):
            assert text[row["id"]] != text[str(row["duplicate_of"])]


def test_spam_edit_changes_the_text_but_never_a_number_or_a_negation() -> None:
    latin = {glyph: letter for letter, glyphs in edits._HOMOGLYPHS.items() for glyph in glyphs}
    original = "Selling my road bike, like new, for $1,250. Pickup near Leeds station, not negotiable."
    for seed in range(300):
        edited = spam_edit(random.Random(seed), original)
        assert edited != original
        assert re.findall(r"\d", URL.sub("", edited)) == re.findall(r"\d", original)
        restored = "".join(latin.get(ch, ch) for ch in edited if ch not in ZERO_WIDTH).casefold()
        assert re.search(r"\bnot\b", restored), edited


def test_templates_are_checked() -> None:
    with pytest.raises(ValueError, match="same slots"):
        templates._parse_piece("t", "one {day} | other {city}")
    with pytest.raises(ValueError, match="two or more forms"):
        templates._parse_piece("t", "only one form on {day}")
    with pytest.raises(ValueError, match="unknown slots"):
        templates._parse_piece("t", "a {nonsense} | b {nonsense}")


def test_cli_writes_a_stream(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "devkit.posts", "--n", "40", "--seed", "3", "--out", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    assert demo.read_jsonl(tmp_path / demo.POSTS_FILE) == generate(40, seed=3).posts
    assert demo.read_jsonl(tmp_path / demo.TRUTH_FILE) == generate(40, seed=3).truth


# --------------------------------------------------------------------------------------- the metric

TRUTH: list[TruthRecord] = [
    {"id": "a", "duplicate_of": None, "kind": "original"},
    {"id": "b", "duplicate_of": "a", "kind": "exact"},
    {"id": "c", "duplicate_of": "a", "kind": "edit"},
    {"id": "d", "duplicate_of": None, "kind": "near_miss"},
    {"id": "e", "duplicate_of": None, "kind": "original"},
    {"id": "f", "duplicate_of": "e", "kind": "rewrite"},
    {"id": "g", "duplicate_of": None, "kind": "cross_tenant"},
]


def test_a_flag_is_right_when_it_names_an_earlier_member_of_the_cluster() -> None:
    decisions: list[dict[str, object]] = [
        {"id": "b", "duplicate_of": "a"},  # the original: right
        {"id": "c", "duplicate_of": "b"},  # an earlier copy of the same original: right
        {"id": "d", "duplicate_of": "a"},  # a near miss: wrong
        {"id": "f", "duplicate_of": "c"},  # another cluster: wrong, and f is missed
        {"id": "g", "duplicate_of": None, "flagged": False},  # left alone: right
        {"id": "e", "duplicate_of": "a", "flagged": False},  # a decision that did not flag
    ]
    score = precision_recall(decisions, TRUTH)
    assert (score.flags, score.correct, score.duplicates) == (4, 2, 3)
    assert score.precision == pytest.approx(0.5)
    assert score.recall == pytest.approx(2 / 3)
    assert score.f1 == pytest.approx(4 / 7)
    assert score.by_kind["near_miss"] == demo.KindScore(total=1, flagged=1, correct=0)
    assert score.by_kind["rewrite"] == demo.KindScore(total=1, flagged=1, correct=0)
    assert score.by_kind["cross_tenant"] == demo.KindScore(total=1, flagged=0, correct=0)
    assert "precision 0.500" in score.describe()


def test_a_flag_naming_a_later_member_is_wrong_and_replays_collapse() -> None:
    decisions = [
        {"id": "b", "duplicate_of": "c"},  # c arrives after b
        {"id": "c", "duplicate_of": "a"},
        {"id": "c", "duplicate_of": "a"},  # replayed after a crash: one flag
    ]
    score = precision_recall(decisions, TRUTH)
    assert (score.flags, score.correct) == (2, 1)


def test_no_flags_is_perfect_precision_and_no_recall() -> None:
    score = precision_recall([], TRUTH)
    assert (score.precision, score.recall, score.f1) == (1.0, 0.0, 0.0)


def test_a_decision_about_an_unknown_document_is_an_error() -> None:
    with pytest.raises(ValueError, match="'zz'"):
        precision_recall([{"id": "zz", "duplicate_of": "a"}], TRUTH)


def test_perfect_decisions_on_the_committed_stream_score_one(committed: Stream) -> None:
    decisions = [{"id": row["id"], "duplicate_of": row["duplicate_of"]} for row in committed.truth]
    score = precision_recall(decisions, committed.truth)
    assert (score.precision, score.recall) == (1.0, 1.0)
    assert score.duplicates == sum(score.by_kind[kind].total for kind in DUPLICATE_KINDS)
