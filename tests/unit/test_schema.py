"""Messages in and out: strict parsing into documents, deletions or precise reasons; stable bytes out."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from tests.fakes import raw_record
from worker.core.messages import DeadLetterReason, Deletion, Document
from worker.core.outgoing import DuplicateFlag, Match, Source, dumps, timestamp_iso
from worker.core.parse import parse_record


def parse(value: bytes | None, key: bytes | None = None, max_bytes: int = 10_000) -> object:
    return parse_record(raw_record(value, 0, key=key), max_bytes, 256)


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_document_with_every_field_and_unknown_ones_ignored() -> None:
    doc = parse(
        body(id="a1", text="hi there", tenant="t", created_at="2024-05-01T12:00:00Z", meta={"k": [1]}, x=1)
    )
    assert doc == Document(
        id="a1", text="hi there", tenant="t", created_at=datetime(2024, 5, 1, 12, tzinfo=UTC), meta={"k": [1]}
    )


def test_document_defaults() -> None:
    doc = parse(body(id="a", text="t"))
    assert isinstance(doc, Document)
    assert (doc.tenant, doc.created_at, doc.meta) == ("default", None, None)


def test_model_sees_the_original_text() -> None:
    doc = parse(body(id="a", text="  Odd\u200b  SPACING "))
    assert isinstance(doc, Document)
    assert doc.text == "  Odd\u200b  SPACING "


@pytest.mark.parametrize(
    ("value", "code", "detail"),
    [
        (b"\xff\xfe{}", "invalid_utf8", "invalid start byte at byte 0"),
        (b"not json", "invalid_json", "Expecting value at line 1 col 1"),
        (b'{"id": "a", "text": NaN}', "invalid_json", "non-standard constant NaN"),
        (b"[1, 2]", "not_object", "top-level JSON array, expected an object"),
        (b'"text"', "not_object", "top-level JSON string, expected an object"),
        (body(text="t"), "missing_field", "id"),
        (body(id="a"), "missing_field", "text"),
        (body(id=7, text="t"), "wrong_type", "id: Input should be a valid string"),
        (body(id="a", text=["t"]), "wrong_type", "text: Input should be a valid string"),
        (body(id="a", text="t", meta=[1]), "wrong_type", "meta: Input should be a valid dictionary"),
        (body(id="a", text="t", tenant=3), "wrong_type", "tenant: Input should be a valid string"),
        (
            body(id="a", text="t", tenant=""),
            "invalid_tenant",
            "tenant: String should have at least 1 character",
        ),
        (body(id="", text="t"), "empty_id", "id is an empty string"),
        (body(id="x" * 257, text="t"), "id_too_long", "257 chars > 256"),
        (body(id="a", text=" \u200b\n\t\x00 "), "empty_text", "text is empty after normalisation"),
        (body(id="a", text="t", created_at="yesterday"), "invalid_created_at", "created_at: not an ISO-8601"),
        (body(id="a", text="t", created_at=1714564800), "invalid_created_at", "created_at: must be an ISO"),
        (b'{"id": "a", "text": "\\ud800 lone"}', "invalid_unicode", "text: lone surrogate at char 0"),
        (b'{"id": "a\\udc00", "text": "t"}', "invalid_unicode", "id: lone surrogate at char 1"),
        (
            b'{"id": "a", "tenant": "\\ud800", "text": "t"}',
            "invalid_unicode",
            "tenant: lone surrogate at char 0",
        ),
        (
            body(id="x\x1fvictim", tenant="V", text="t"),
            "invalid_id",
            "id: control character U+001F at char 1",
        ),
        (body(id="victim", tenant="V\x1fx", text="t"), "invalid_tenant", "tenant: control character U+001F"),
        (body(id="a\x00", deleted=True), "invalid_id", "id: control character U+0000"),
        (body(id="a", deleted="yes"), "wrong_type", "deleted: must be a boolean"),
        (
            b'{"id": "a", "text": "t", "meta": ' + b'{"m": ' * 70 + b"1" + b"}" * 71,
            "too_deep",
            "deeper than 64",
        ),
        # Python 3.11's JSON parser stops at its recursion limit; 3.13's parses 4000 levels and the depth
        # check refuses them: "nesting exceeds the ... recursion limit" or "nesting deeper than 64".
        (b"[" * 4000 + b"]" * 4000, "too_deep", "nesting"),
        (b"1" * 5000, "invalid_json", "Exceeds the limit"),
        (body(id="a", text="x" * 20_000), "oversized", "> 10000"),
    ],
)
def test_bad_records_get_precise_reasons(value: bytes, code: str, detail: str) -> None:
    reason = parse(value)
    assert isinstance(reason, DeadLetterReason)
    assert reason.code == code
    assert detail in reason.detail
    assert str(reason).startswith(f"{code}: ")


def test_one_tenant_cannot_name_another_tenants_point() -> None:
    """Point ids are uuid5(tenant ␟ id): with ␟ allowed, tenant "V␟x" id "victim" was tenant "V" id
    "x␟victim" — one tenant could overwrite or delete another's posts."""
    attacker = parse(body(id="victim", tenant="V\x1fx", text="t"))
    crafted = parse(body(id="x\x1fvictim", tenant="V", text="t"))
    assert isinstance(attacker, DeadLetterReason)
    assert isinstance(crafted, DeadLetterReason)
    tombstone = parse(None, key=b"x\x1fvictim")
    assert isinstance(tombstone, DeadLetterReason)
    assert tombstone.code == "invalid_id"


def test_deletions() -> None:
    assert parse(body(id="a", deleted=True)) == Deletion(id="a", tenant="default")
    assert parse(body(id="a", tenant="t", deleted=True, text="ignored")) == Deletion(id="a", tenant="t")
    assert parse(body(id="a", tenant=None, deleted=True)) == Deletion(id="a", tenant=None)
    assert isinstance(parse(body(id="a", text="kept", deleted=False)), Document)


def test_tombstones() -> None:
    assert parse(None, key=b"doc-1") == Deletion(id="doc-1", tenant=None)
    for key, code in [(None, "invalid_tombstone"), (b"\xff", "invalid_tombstone"), (b"", "empty_id")]:
        reason = parse(None, key=key)
        assert isinstance(reason, DeadLetterReason)
        assert reason.code == code
    reason = parse(None, key=b"k" * 300)
    assert isinstance(reason, DeadLetterReason)
    assert reason.code == "id_too_long"


def test_id_limit_is_configurable() -> None:
    record = raw_record(body(id="x" * 300, text="t"), 0)
    assert isinstance(parse_record(record, 10_000, 512), Document)
    assert isinstance(parse_record(record, 10_000, 256), DeadLetterReason)
    tombstone = raw_record(None, 0, key=b"x" * 300)
    deletion = parse_record(tombstone, 10_000, 512)
    assert isinstance(deletion, Deletion)
    assert (deletion.id, deletion.tenant) == ("x" * 300, None)


def test_dumps_is_sorted_compact_and_rounded() -> None:
    flag = DuplicateFlag(
        id="b",
        duplicate_of="a",
        duplicate_of_at=timestamp_iso(0),
        score=0.91234567,
        probability=None,
        threshold=0.85,
        matches=[Match(id="a", score=0.91234567), Match(id="c", score=-1e-9)],
        tenant="default",
        stage="batch",
        decided_by="encoder",
        verifier_score=None,
        model="m1",
        detected_at=timestamp_iso(0),
        source=Source(topic="documents", partition=0, offset=3),
    )
    data = dumps(flag)
    assert data == dumps(flag.model_copy())
    assert data.startswith(
        b'{"decided_by":"encoder","detected_at":"1970-01-01T00:00:00.000Z","duplicate_of":"a",'
        b'"duplicate_of_at":"1970-01-01T00:00:00.000Z","duplicate_of_created_at":null,'
        b'"duplicate_of_meta":null,"exact_by":null,"id":"b"'
    )
    assert b'"score":0.912346' in data
    assert b'{"id":"c","score":0.0}' in data
    assert b" " not in data


def test_dumps_keeps_unicode_readable() -> None:
    data = dumps(Match(id="café", score=1.0))
    assert data == '{"id":"café","score":1.0}'.encode()


def test_timestamp_iso() -> None:
    assert timestamp_iso(1_714_564_800_123) == "2024-05-01T12:00:00.123Z"
    assert timestamp_iso(-1) == "1969-12-31T23:59:59.999Z"
    assert timestamp_iso(2**62).startswith("9999-12-31T23:59:59.999")
    assert timestamp_iso(-(2**62)).startswith("0001-01-01T00:00:00.000")


def test_dead_letter_bytes_round_trip() -> None:
    value = b"\xff\x00 raw"
    assert base64.b64decode(base64.b64encode(value)) == value
