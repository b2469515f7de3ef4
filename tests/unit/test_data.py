"""The pair loader (bad rows counted, never fatal), the hold-out split, clusters and the batch layout."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from trainer.batches import build_training_set, clusters_of, group_by_source, labelled_pools, make_batches
from trainer.data import Columns, DataError, Pair, load_pairs, read_pairs, read_rows
from trainer.losses import negative_mask
from trainer.splits import split_dev, split_holdout, split_selection


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_tsv_bad_rows_are_counted_by_reason(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "pairs.tsv",
        "text_a\ttext_b\tlabel\n"
        "How do I cook rice?\tHow to cook rice?\t1\n"
        '"He said ""hi"""\tA quoted field\t0\n'  # good: CSV quoting inside a TSV
        "\tempty anchor\t1\n"  # empty text
        "only one column\n"  # missing column
        '"unclosed quote\tb\t1\n'  # broken quoting
        "a\tb\tmaybe\n"  # bad label
        "a\tb\t1\textra\n"  # extra column
        "no label given\tnot taken for a duplicate\t\n"  # a missing label is a bad row
        "\n",  # blank lines are not rows
    )
    pairs, report = read_pairs(path)
    assert pairs == [
        Pair("How do I cook rice?", "How to cook rice?", 1),
        Pair('He said "hi"', "A quoted field", 0),
    ]
    assert report.rows == 8
    assert dict(report.bad) == {
        "empty_text": 1,
        "missing_column": 1,
        "broken_quoting": 1,
        "bad_label": 1,
        "extra_column": 1,
        "missing_label": 1,
    }
    # Each bad row is located by its line in the file (the header is line 1).
    assert report.where() == {
        "empty_text": "4",
        "missing_column": "5",
        "broken_quoting": "6",
        "bad_label": "7",
        "extra_column": "8",
        "missing_label": "9",
    }
    fingerprint = report.fingerprint()
    assert (fingerprint.rows, fingerprint.bad_rows, fingerprint.used_rows) == (8, 6, 2)
    assert len(fingerprint.sha256) == 64


def test_csv_and_jsonl_and_absent_label(tmp_path: Path) -> None:
    csv_file = write(tmp_path, "p.csv", 'text_a,text_b\n"one, two",three\n')
    jsonl = write(
        tmp_path,
        "p.jsonl",
        '{"text_a": "x", "text_b": "y", "label": 0}\n'
        '{"text_a": "x", "text_b": "z"}\n'
        "{not json}\n"
        '["a", "list"]\n'
        '{"text_a": "x"}\n'
        '{"text_a": "x", "text_b": 5}\n',
    )
    pairs, reports = load_pairs([csv_file, jsonl])
    # The CSV has no label column: a duplicates-only file, and the report says so.
    assert pairs == [Pair("one, two", "three", 1), Pair("x", "y", 0)]
    assert reports[0].summary()["labels"] == "no label column: every pair is read as a duplicate"
    assert dict(reports[1].bad) == {"missing_label": 1, "invalid_json": 2, "missing_column": 1, "not_text": 1}
    assert reports[1].where()["invalid_json"] == "3, 4"


@pytest.mark.parametrize(
    "header",
    ["sentence1\tsentence2\tlabel", "question1\tquestion2\tis_duplicate", "#1 String\t#2 String\tQuality"],
)
def test_glue_qqp_and_mrpc_headers_are_recognised(tmp_path: Path, header: str) -> None:
    pairs, _ = read_pairs(write(tmp_path, "g.tsv", f"{header}\nfirst\tsecond\t0\n"))
    assert pairs == [Pair("first", "second", 0)]


def test_columns_name_other_headers_and_a_missing_label_column_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "c.tsv", "id\tpost\tcopy\tverdict\n1\ta\tb\t1\n")
    assert read_pairs(path, Columns.parse("post,copy,verdict"))[0] == [Pair("a", "b", 1)]
    with pytest.raises(DataError, match="no label column 'label'"):
        read_pairs(path, Columns("post", "copy", "label"))
    with pytest.raises(DataError, match="--columns"):
        read_pairs(path)
    with pytest.raises(DataError, match="A,B or A,B,LABEL"):
        Columns.parse("only-one")


def test_scoring_rows_keep_their_places(tmp_path: Path) -> None:
    path = write(tmp_path, "s.tsv", 'text_a\ttext_b\nfirst\tpair\n\tempty is kept\n"broken\tx\nlast\tone\n')
    rows, _ = read_rows(path, allow_empty=True)
    assert rows == [Pair("first", "pair", 1), Pair("", "empty is kept", 1), None, Pair("last", "one", 1)]


@pytest.mark.parametrize(
    ("name", "text"),
    [("h.tsv", "a\tb\nx\ty\n"), ("e.tsv", ""), ("x.parquet", "text_a\ttext_b\n")],
)
def test_unusable_files_are_errors(tmp_path: Path, name: str, text: str) -> None:
    with pytest.raises(DataError):
        read_pairs(write(tmp_path, name, text))


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError):
        read_pairs(tmp_path / "absent.tsv")


def test_holdout_is_deterministic_and_groups_by_anchor() -> None:
    pairs = [Pair(f"anchor {i // 3}", f"other {i}", i % 2) for i in range(3000)]
    kept, held = split_holdout(pairs, 0.1)
    _again_kept, again_held = split_holdout(list(reversed(pairs)), 0.1)
    assert set(held) == set(again_held)
    assert 0.05 < len(held) / len(pairs) < 0.15
    assert not {p.text_a for p in kept} & {p.text_a for p in held}
    assert split_holdout(pairs, 0.0) == (pairs, [])


def test_union_find_clusters() -> None:
    assert clusters_of([(0, 1), (1, 2), (4, 3)], 6) == [0, 0, 0, 3, 3, 5]


def test_training_set_clusters_hard_negatives_and_conflicts() -> None:
    pairs = [
        Pair("A", "B", 1),
        Pair("b", "C", 1),  # same text as "B" up to case: A~B~C is one cluster
        Pair("D", "E", 1),
        Pair("A", "D", 0),  # labelled non-duplicate: hard negative both ways
        Pair("C", "A", 0),  # contradicts the positives: dropped and counted
        Pair("A", "F", 0),  # F is in no positive pair: a singleton cluster
    ]
    data = build_training_set(pairs)
    ids = {text: i for i, text in enumerate(data.texts)}
    assert data.texts == ["A", "B", "C", "D", "E", "F"]
    cluster = data.clusters
    assert cluster[ids["A"]] == cluster[ids["B"]] == cluster[ids["C"]] != cluster[ids["D"]]
    assert data.examples == [(0, 1), (1, 2), (3, 4)]
    assert data.hard_negatives[cluster[0]] == [ids["D"], ids["F"]]
    assert data.hard_negatives[cluster[3]] == [ids["A"]]
    assert data.conflicts == 1


def test_batches_keep_duplicate_clusters_apart_and_carry_hard_negatives() -> None:
    pairs = [Pair("A", "B", 1), Pair("B", "C", 1), Pair("D", "E", 1), Pair("G", "H", 1), Pair("A", "D", 0)]
    data = build_training_set(pairs)
    batches = make_batches(data, [0, 1, 2, 3], batch_size=4, rng=random.Random(0), hard_per_example=1)
    # (A,B) and (B,C) share a cluster: the second waits for the next batch.
    assert [len(b.anchors) for b in batches] == [3, 1]
    first = batches[0]
    assert len(first.candidates) == 3 + 2  # three positives, then D (for A's cluster) and A (for D's)
    assert len(set(first.anchor_clusters)) == 3
    mask = negative_mask(torch.tensor(first.anchor_clusters), torch.tensor(first.candidate_clusters))
    for i, cluster in enumerate(first.anchor_clusters):
        for j, other in enumerate(first.candidate_clusters):
            assert bool(mask[i, j]) == (cluster != other)
        assert not mask[i, i]  # a row's own positive is never its negative
    assert sorted(first.candidates[3:]) == ["A", "D"]


def test_every_example_lands_in_exactly_one_batch() -> None:
    pairs = [Pair(f"q{i}", f"q{i + 1}", 1) for i in range(0, 40, 2)] + [Pair("q0", "q2", 1)]
    data = build_training_set(pairs)
    order = list(range(len(data.examples)))
    batches = make_batches(data, order, batch_size=6, rng=random.Random(1), hard_per_example=0)
    assert sum(len(b.anchors) for b in batches) == len(data.examples)


def test_batches_by_source_draw_in_batch_negatives_from_one_file() -> None:
    tweets = [Pair(f"tweet {i}", f"tweet {i} again", 1) for i in range(20)]
    questions = [Pair(f"question {i}?", f"question {i}, rephrased?", 1) for i in range(13)]
    data = build_training_set(tweets + questions, sources=[0] * 20 + [1] * 13)
    assert data.sources == [0] * 20 + [1] * 13
    order = list(range(len(data.examples)))
    random.Random(3).shuffle(order)
    grouped = group_by_source(order, data.sources, 4, seed="s")
    assert len(set(grouped)) == len(grouped) == 32  # no repeats; only the questions' short last run left out
    assert sum(data.sources[k] == 1 for k in grouped) == 12
    assert grouped == group_by_source(order, data.sources, 4, seed="s")  # reproducible (resume)
    batches = make_batches(data, grouped, batch_size=4, rng=random.Random(0), hard_per_example=0)
    for batch in batches:
        kinds = {text.split()[0] for text in batch.anchors + batch.candidates}
        assert len(kinds) == 1, batch.anchors
    mixed = make_batches(data, order, batch_size=4, rng=random.Random(0), hard_per_example=0)
    assert any(len({t.split()[0] for t in b.anchors}) > 1 for b in mixed)  # what it replaces


def test_the_selection_slice_is_disjoint_from_training_and_the_hold_out() -> None:
    pairs = [Pair(f"post {i}", f"post {i} again", i % 2) for i in range(4000)]
    kept, held = split_holdout(pairs, 0.1)
    trained, chosen = split_selection(kept, 0.1, 0.05)
    assert 0.03 < len(chosen) / len(pairs) < 0.07
    assert 0.08 < len(held) / len(pairs) < 0.12
    texts = [{p.text_a for p in part} for part in (trained, chosen, held)]
    assert texts[0].isdisjoint(texts[1])
    assert texts[0].isdisjoint(texts[2])
    assert texts[1].isdisjoint(texts[2])
    assert len(trained) + len(chosen) + len(held) == len(pairs)
    assert split_selection(kept, 0.1, 0.05) == (trained, chosen)  # the same slice on every run


def test_the_trained_part_of_the_dev_set_never_meets_the_part_kept_for_dev() -> None:
    pairs = [Pair(f"question {i // 2}", f"question {i} reworded", i % 2) for i in range(4000)]
    trained, dev = split_dev(pairs, 0.5)
    assert 0.45 < len(trained) / len(pairs) < 0.55
    assert len(trained) + len(dev) == len(pairs)
    assert {p.text_a for p in trained}.isdisjoint({p.text_a for p in dev})  # an anchor's pairs stay together
    # a benchmark finds the untouched part with the hold-out rule alone
    assert dev == split_holdout(pairs, 0.5)[1]
    assert split_dev(pairs, 0.0) == ([], pairs)


def test_only_sources_with_both_labels_make_a_pool_for_the_pair_term() -> None:
    pairs = [Pair("a", "b", 1), Pair("c", "d", 0), Pair("e", "f", 1), Pair("g", "h", 1), Pair("i", "j", 0)]
    sources = [0, 0, 1, 2, 2]
    assert labelled_pools(pairs, sources) == [[pairs[0], pairs[1]], [pairs[3], pairs[4]]]


def test_a_missing_pair_file_is_refused_before_any_model_loads(tmp_path: Path) -> None:
    import subprocess
    import sys

    for command in ("evaluate", "score"):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "trainer",
                command,
                "--model",
                str(tmp_path / "no-model"),
                "--pairs",
                str(tmp_path / "missing.tsv"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 2
        assert "no pair file at" in out.stderr  # the input, not the model directory that is missing too
        assert "no-model" not in out.stderr
