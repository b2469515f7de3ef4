"""Bad input never stops the worker: every record yields exactly one decision or dead letter (or is a
deletion), property-based over arbitrary bytes and JSON, plus a fixed corpus of nasty cases."""

from __future__ import annotations

import json
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fakes import HashEncoder, ListPublisher, MemoryIndex, raw_record, run_and_send
from worker.core.emit import Topics
from worker.core.messages import DeadLetterReason, Deletion, Document
from worker.core.outgoing import DeadLetter
from worker.core.parse import parse_record
from worker.core.records import Record
from worker.core.step import StepConfig

CONFIG = StepConfig(
    threshold=0.8,
    model_version="hash-trigram-v1",
    top_k=3,
    max_message_bytes=4096,
    max_id_chars=16,
)
TOPICS = Topics(decisions="decisions")
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BATCHES = settings(FAST, max_examples=60)

any_text = st.text(st.characters(exclude_categories=()), max_size=40)  # surrogates, controls, RTL, ...
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)
ids = st.sampled_from(["a", "b", "c", ""]) | st.text(max_size=20) | json_values
texts = (
    st.sampled_from(
        ["Buy cheap watches now!", "buy CHEAP watches now!", "Cheap watches, buy now", "\u200b", " \n"]
    )
    | any_text
    | json_values
)
documents = st.fixed_dictionaries(
    {},
    optional={
        "id": ids,
        "text": texts,
        "tenant": st.sampled_from(["t1", "t2"]) | json_values,
        "created_at": st.sampled_from(["2024-05-01T12:00:00Z", "2024-13-01", "x"]) | json_values,
        "meta": json_values,
        "deleted": st.booleans() | json_values,
    },
)

valid_documents = st.fixed_dictionaries(
    {
        "id": st.sampled_from(["a", "b", "c", "d", "e"]),
        "text": st.sampled_from(
            [
                "Buy cheap watches now!",
                "buy CHEAP watches now!",
                "Cheap watches, buy now",
                "My cat likes tuna",
            ]
        )
        | any_text,
    },
    optional={"tenant": st.sampled_from(["t1", "t2"]), "meta": json_values, "deleted": st.just(True)},
)


def encode(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=True).encode()  # ensure_ascii: lone surrogates become \\udXXX


values = (
    valid_documents.map(encode)
    | valid_documents.map(encode)
    | st.binary(max_size=200)
    | json_values.map(encode)
    | documents.map(encode)
    | st.none()
    | documents.map(lambda d: encode(d)[: max(1, len(encode(d)) // 2)])  # truncated JSON
)


@st.composite
def records(draw: st.DrawFn) -> list[Record]:
    out = []
    for offset in range(draw(st.integers(0, 12))):
        key = draw(st.none() | st.binary(max_size=20) | st.sampled_from([b"a", b"b"]))
        out.append(
            Record(
                "documents",
                draw(st.integers(0, 3)),
                offset,
                draw(st.integers(-(2**63), 2**63 - 1)),
                key,
                draw(values),
            )
        )
    return out


@FAST
@given(st.binary(max_size=500) | documents.map(encode) | json_values.map(encode), st.none() | st.binary())
def test_parse_record_never_raises(value: bytes, key: bytes | None) -> None:
    parsed = parse_record(raw_record(value, 0, key=key), 4096, 16)
    assert isinstance(parsed, Document | Deletion | DeadLetterReason)
    if isinstance(parsed, Document | Deletion):
        parsed.id.encode("utf-8")  # anything we accept can be written back out as a key
        (parsed.tenant or "").encode("utf-8")


@BATCHES
@given(st.lists(records(), min_size=1, max_size=3))
def test_run_batch_never_raises_and_accounts_for_every_record(batches: list[list[Record]]) -> None:
    index, encoder = MemoryIndex(), HashEncoder()
    for batch in batches:
        publisher = ListPublisher()
        result = run_and_send(batch, encoder, index, publisher, CONFIG, TOPICS)
        assert result.records == len(batch) == result.documents + result.dead_letters + result.deletions
        decided = [d.source for d in result.decisions]
        letters = [DeadLetter.model_validate(x).source for x in publisher.json(TOPICS.dlq)]
        outcomes = Counter((s.partition, s.offset) for s in decided + letters)
        expected = Counter((r.partition, r.offset) for r in batch if not _is_deletion(r))
        assert outcomes == expected  # exactly one outcome per non-deletion record
        assert len(publisher.json("decisions")) == result.documents
        assert len(publisher.json(TOPICS.flags)) == result.flags
        for flag in publisher.json(TOPICS.flags):
            assert flag["duplicate_of"] != flag["id"]
            assert CONFIG.threshold <= flag["score"] <= 1.0


def _is_deletion(record: Record) -> bool:
    return isinstance(parse_record(record, CONFIG.max_message_bytes, CONFIG.max_id_chars), Deletion)


def test_nasty_corpus() -> None:
    """The cases the reliability issue lists, each to its outcome, in one batch with default limits."""
    config = StepConfig(threshold=0.8, model_version="m")
    meta: dict[str, object] = {}
    for _ in range(200):
        meta = {"m": meta}
    nested = {"id": "deep", "text": "t", "meta": meta}
    cases: list[tuple[bytes | None, str]] = [
        (b'{"id": "a", "text": ', "invalid_json"),
        (b'{"id": "a", "text": "caf\xe9"}', "invalid_utf8"),
        (b'{"id": ["a"], "text": "t"}', "wrong_type"),
        (b'{"text": "no id"}', "missing_field"),
        (encode({"id": "i" * 10_000, "text": "t"}), "id_too_long"),
        (encode({"id": "ws", "text": " \t\n\u00a0 "}), "empty_text"),
        (encode({"id": "big", "text": "x" * 10_000_000}), "oversized"),
        (encode({"id": "nul", "text": "\x00\x01\x02"}), "empty_text"),
        (encode({"id": "nul2", "text": "hello\x00world\x1b[31m red"}), "decision"),
        (encode({"id": "rtl", "text": "\u202eمرحبا بالعالم\u202c שלום"}), "decision"),
        (encode({"id": "zw", "text": "\u200b\u200c\u200d\ufeff\u2060"}), "empty_text"),
        (json.dumps(nested).encode(), "too_deep"),
        (encode({"id": "dup", "text": "first text of dup"}), "decision"),
        (encode({"id": "dup", "text": "second, different text of dup"}), "decision"),
        (encode({"id": "dup", "text": "first text of dup"}), "decision"),
        (None, "deletion"),
    ]
    batch = [raw_record(value, offset, key=b"k") for offset, (value, _) in enumerate(cases)]
    publisher, index = ListPublisher(), MemoryIndex()
    result = run_and_send(batch, HashEncoder(), index, publisher, config, TOPICS)
    outcome = {d.source.offset: "decision" for d in result.decisions}
    for letter in publisher.json(TOPICS.dlq):
        outcome[DeadLetter.model_validate(letter).source.offset] = letter["code"]
    outcome |= {i: "deletion" for i, (value, _) in enumerate(cases) if value is None}
    assert outcome == {i: expected for i, (_, expected) in enumerate(cases)}
    assert publisher.json(TOPICS.flags) == []  # the same id never matches itself
    replay = ListPublisher()
    run_and_send(batch, HashEncoder(), index, replay, config, TOPICS)
    assert replay.sent == publisher.sent
