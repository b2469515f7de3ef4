"""Bulk load: batched, resumable, earlier than everything that streams in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fakes import HashEncoder, ListPublisher, MemoryIndex, doc_record, run_and_send
from worker.core.errors import IndexMismatchError
from worker.core.step import StepConfig
from worker.service.load import load_corpus

SPAM = "Buy cheap watches at our store today, best prices guaranteed!"


def corpus(path: Path, n: int) -> Path:
    lines = [json.dumps({"id": f"k{i}", "text": f"known spam number {i}: " + SPAM}) for i in range(n)]
    lines[3] = "{broken"
    lines[5] = json.dumps({"id": "k5", "deleted": True})
    lines.append(json.dumps({"id": "k0", "text": SPAM, "tenant": "default"}))  # the later line wins
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_then_resume(tmp_path: Path) -> None:
    path = corpus(tmp_path / "corpus.jsonl", 10)
    index, encoder = MemoryIndex(), HashEncoder()
    summary = load_corpus(path, encoder, index, batch_size=4, progress=False)
    assert (summary.lines, summary.loaded, summary.skipped) == (11, 9, 0)
    assert [line for line, _ in summary.errors] == [4, 6]
    assert summary.errors[0][1].startswith("invalid_json: ")
    assert summary.errors[1][1].startswith("unexpected_deletion: ")
    assert index.count() == 8
    assert index.calls["flush"] == 3  # once per batch: a killed load resumes from there
    point = index.point("default", "k0")
    assert point is not None
    assert point.order == (0, 11)

    embedded = len(encoder.embedded)
    again = load_corpus(path, encoder, index, batch_size=4, progress=False)
    # Only the id repeated across batches (k0, lines 1 and 11) is embedded again; the result is the same.
    assert (again.loaded, again.skipped) == (2, 7)
    assert len(encoder.embedded) == embedded + 2
    assert index.count() == 8
    point = index.point("default", "k0")
    assert point is not None
    assert point.order == (0, 11)


def test_resume_after_a_crash_embeds_only_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"id": f"k{i}", "text": f"spam {i}"}) + "\n" for i in range(10)))
    index, encoder = MemoryIndex(), HashEncoder()
    head = tmp_path / "head.jsonl"  # the first 6 lines made it before the crash
    head.write_text("".join(path.read_text().splitlines(keepends=True)[:6]))
    load_corpus(head, encoder, index, batch_size=4, progress=False)
    encoder.embedded.clear()
    summary = load_corpus(path, encoder, index, batch_size=4, progress=False)
    assert (summary.loaded, summary.skipped) == (4, 6)
    assert encoder.embedded == [f"spam {i}" for i in range(6, 10)]


def test_a_loaded_corpus_is_earlier_than_the_stream(tmp_path: Path) -> None:
    path = corpus(tmp_path / "corpus.jsonl", 10)
    index, encoder = MemoryIndex(), HashEncoder()
    load_corpus(path, encoder, index, batch_size=100, progress=False)
    publisher = ListPublisher()
    run_and_send(
        [doc_record("new", SPAM, 0, timestamp_ms=1)],
        encoder,
        index,
        publisher,
        StepConfig(0.8, encoder.version),
    )
    (flag,) = [json.loads(value) for _, value in publisher.messages("duplicate-flags")]
    assert (flag["duplicate_of"], flag["stage"]) == ("k0", "exact")


def test_load_refuses_another_model(tmp_path: Path) -> None:
    index = MemoryIndex()
    index.ensure(8, "other-model")
    with pytest.raises(IndexMismatchError, match="other-model"):
        load_corpus(corpus(tmp_path / "c.jsonl", 8), HashEncoder(), index, progress=False)
