"""``scan``: the batch step over a JSONL file, one output line per input line, in order."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.fakes import HashEncoder, MemoryIndex
from worker.service.load import load_corpus
from worker.service.scan import scan

SPAM = "Buy cheap watches at our store today, best prices guaranteed!"
CAT = "My cat refuses to eat anything except tuna from one specific brand."


def write_lines(path: Path, lines: Sequence[object]) -> Path:
    path.write_text(
        "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8"
    )
    return path


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_scan_end_to_end(tmp_path: Path) -> None:
    source = write_lines(
        tmp_path / "posts.jsonl",
        [
            {"id": "a", "text": SPAM},
            {"id": "b", "text": CAT},
            "not json",
            {"id": "c", "text": SPAM.replace("watches", "wacthes")},
            {"id": "d", "text": SPAM.upper()},
            {"id": "b", "deleted": True},
            "",
            {"id": "e", "text": CAT + "!"},
            {"id": "f", "text": SPAM, "tenant": "other"},
        ],
    )
    out = tmp_path / "decisions.jsonl"
    index = MemoryIndex()
    summary = scan(source, out, HashEncoder(), index, threshold=0.8, batch_size=3, top_k=2, progress=False)
    lines = read_lines(out)
    assert [line["line"] for line in lines] == list(range(1, 10))
    a, b, bad, c, d, deleted, blank, e, f = lines
    assert (a["id"], a["flagged"], a["duplicate_of"], a["score"], a["matches"]) == (
        "a",
        False,
        None,
        None,
        [],
    )
    assert b["flagged"] is False
    assert str(bad["error"]).startswith("invalid_json: ")
    assert (c["duplicate_of"], c["stage"], c["flagged"]) == ("a", "index", True)  # a was in the first batch
    assert 0.8 < c["score"] < 1.0
    assert (d["duplicate_of"], d["score"], d["stage"]) == ("a", 1.0, "exact")  # the hash is case-folded
    assert len(d["matches"]) == 1
    assert deleted == {"line": 6, "deleted": True}
    assert str(blank["error"]).startswith("invalid_json: ")
    assert e["flagged"] is False  # b was deleted before e arrived
    assert f["flagged"] is False  # another tenant
    assert (summary.lines, summary.documents, summary.flagged, summary.errors, summary.deletions) == (
        9,
        6,
        2,
        2,
        1,
    )
    assert index.calls["flush"] == 1
    assert index.count() == 5


def test_scan_over_a_loaded_corpus_sees_all_of_it(tmp_path: Path) -> None:
    corpus = write_lines(
        tmp_path / "corpus.jsonl",
        [{"id": f"k{i}", "text": f"filler {i} " * 5} for i in range(9)] + [{"id": "spam", "text": SPAM}],
    )  # line 10: later than the scan's first line
    index, encoder = MemoryIndex(), HashEncoder()
    load_corpus(corpus, encoder, index, batch_size=4, progress=False)
    posts = write_lines(tmp_path / "posts.jsonl", [{"id": "p", "text": SPAM}])
    out = tmp_path / "out.jsonl"
    scan(posts, out, encoder, index, threshold=0.8, progress=False)
    (line,) = read_lines(out)
    assert (line["duplicate_of"], line["stage"]) == ("spam", "exact")


def test_a_missing_input_is_refused_before_the_model_loads(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker",
            "scan",
            "--model",
            str(tmp_path / "no-model"),
            "--input",
            str(tmp_path / "missing.jsonl"),
            "--output",
            str(tmp_path / "out.jsonl"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: scan: no input file at {tmp_path / 'missing.jsonl'}"  # one line
    assert not (tmp_path / "out.jsonl").exists()
