"""Flags that explain themselves: the earlier post's created_at and meta, and what made an exact match."""

from __future__ import annotations

import json

import pytest

from tests.fakes import HashEncoder, MemoryIndex, raw_record
from worker.core.messages import MAX_STORED_META_BYTES
from worker.core.normalize import exact_by, normal_forms, normalize
from worker.core.outcome import Decided
from worker.core.outgoing import DuplicateFlag
from worker.core.records import Record
from worker.core.step import StepConfig, run_batch

ORIGINAL = "Free iPhone, click here"


def record(offset: int, **body: object) -> Record:
    return raw_record(json.dumps(body).encode(), offset, timestamp_ms=1_700_000_000_000 + offset)


def flags(records: list[Record], index: MemoryIndex) -> dict[str, DuplicateFlag]:
    outcome = run_batch(records, HashEncoder(), index, StepConfig(0.8, "hash-trigram-v1"))
    return {o.flag.id: o.flag for o in outcome.outcomes if isinstance(o, Decided) and o.flag is not None}


@pytest.mark.parametrize(
    ("repost", "step"),
    [
        (ORIGINAL, "identical"),
        ("Free i\u200bPhone, click\u00ad here", "invisible"),
        ("\uff26ree iPhone, click here", "compatibility"),  # a full-width F
        ("Free  iPhone,\tclick here ", "whitespace"),
        ("FREE IPHONE, CLICK HERE", "case"),
        ("FREE\u200b  iPhone, click here", "case"),  # several steps: the last one it took
    ],
)
def test_an_exact_flag_says_which_normalisation_made_the_match(repost: str, step: str) -> None:
    index = MemoryIndex()
    flags([record(0, id="a", text=ORIGINAL)], index)
    from_index = flags([record(1, id="b", text=repost)], index)["b"]
    assert (from_index.stage, from_index.exact_by) == ("exact", step)
    in_batch = flags([record(2, id="c", text=ORIGINAL), record(3, id="d", text=repost)], MemoryIndex())["d"]
    assert in_batch.exact_by == step


def test_a_flag_carries_the_earlier_posts_created_at_and_meta_and_a_replay_keeps_them() -> None:
    index = MemoryIndex()
    original = record(0, id="a", text=ORIGINAL, created_at="2026-01-02T03:04:05+00:00", meta={"thread": 7})
    flags([original], index)
    repost = record(1, id="b", text=ORIGINAL + " now!", meta={"thread": 9})
    flag = flags([repost], index)["b"]
    assert (flag.duplicate_of_created_at, flag.duplicate_of_meta, flag.meta) == (
        "2026-01-02T03:04:05+00:00",
        {"thread": 7},
        {"thread": 9},
    )
    assert flag.exact_by is None  # found by the encoder, not the hash
    index.delete("default", ["a"])
    assert flags([repost], index)["b"] == flag  # a replay: stored with the decision


def test_a_large_meta_is_not_kept_with_the_post() -> None:
    index = MemoryIndex()
    flags([record(0, id="a", text=ORIGINAL, meta={"blob": "x" * MAX_STORED_META_BYTES})], index)
    flag = flags([record(1, id="b", text=ORIGINAL)], index)["b"]
    assert flag.duplicate_of_meta is None


def test_the_forms_agree_with_normalize_and_do_not_change_the_hash() -> None:
    for text in (ORIGINAL, "Ｆｒｅｅ\u200b  iPhone", "e\u200b\u0301"):
        normalised, forms = normal_forms(text)
        assert normalised == normalize(text)
        assert len(forms.split(".")) == 4
    assert exact_by(None, normal_forms(ORIGINAL)[1]) is None  # a post stored before forms were kept
