"""``parse_record``: raw bytes → a ``Document``, a ``Deletion`` or the reason the record is a dead letter.

Per-record problems are data, not exceptions: the batch step turns each reason into a dead letter and
commits past it. The checks run cheapest first and never raise.
"""

from __future__ import annotations

import json
import re
from typing import Literal

from pydantic import ValidationError

from worker.core.messages import DeadLetterReason, Deletion, Document, ModeratorVerdict
from worker.core.outgoing import ReasonCode
from worker.core.records import Record

MAX_DEPTH = 64
"""Deepest JSON nesting accepted (the top-level object counts as 1): meta is opaque data, not a tree."""

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


TombstoneScope = Literal["all_tenants", "default_tenant", "refuse"]
"""What a Kafka tombstone (null value, key = document id) deletes. It names no tenant, so by default it
deletes that id in *every* tenant, which is right for one tenant and wrong for many: there, one
tenant's tombstone would erase another tenant's post that reuses the id. Multi-tenant deployments
should set ``refuse`` (a tombstone becomes an ``invalid_tombstone`` dead letter) and delete with
``{"id", "tenant", "deleted": true}``; ``default_tenant`` scopes tombstones to the ``default`` tenant."""


def parse_record(
    record: Record, max_bytes: int, max_id_chars: int, tombstones: TombstoneScope = "all_tenants"
) -> Document | Deletion | DeadLetterReason:
    """Raw record → ``Document``, ``Deletion`` or the reason it is a dead letter. Never raises.

    Checks, in order: tombstone (null value) → size → UTF-8 → JSON (standard only: no NaN/Infinity) →
    nesting depth → an object → ``deleted: true`` → no lone surrogate escapes (they cannot be encoded
    back to UTF-8) and no control characters in id and tenant → field types → no lone surrogate in the
    text → text not empty after normalisation. Over-long text is accepted: the encoder truncates it to
    the model's token limit.

    Control characters are refused in ids and tenants because an index point's id is derived from the
    pair (``tenant``, ``id``): with them allowed, one tenant could name another tenant's point.
    """
    if record.value is None:
        return _tombstone(record.key, max_id_chars, tombstones)
    obj = _load_object(record.value, max_bytes)
    if isinstance(obj, DeadLetterReason):
        return obj
    context = {"max_id_chars": max_id_chars}
    deleted = obj.get("deleted", False)
    if not isinstance(deleted, bool):
        return DeadLetterReason("wrong_type", "deleted: must be a boolean")
    for name in ("id", "tenant"):
        value = obj.get(name)
        problem = _identifier_problem(name, value) if isinstance(value, str) else None
        if problem is not None:
            return problem
    try:
        if deleted:
            deletion = Deletion.model_validate(obj, context=context)
            return _unicode_problem(deletion.id, deletion.tenant or "") or deletion
        document = Document.model_validate(obj, context=context)
    except ValidationError as error:
        return _reason(error)
    problem = _unicode_problem(document.id, document.tenant, document.text)
    if problem is not None:
        return problem
    if not document.normalized_text:
        return DeadLetterReason("empty_text", "text is empty after normalisation")
    return document


def parse_verdict(record: Record, max_bytes: int, max_id_chars: int) -> ModeratorVerdict | DeadLetterReason:
    """Raw record of the verdicts topic → a ``ModeratorVerdict`` or the reason it is a dead letter; the
    same checks as a document's (size, UTF-8, standard JSON, depth, an object, ids), then its fields.
    A verdict that names the same post twice is ``invalid_verdict``. Never raises."""
    if record.value is None:
        return DeadLetterReason("invalid_verdict", "null value: a verdict is withdrawn by a later verdict")
    obj = _load_object(record.value, max_bytes)
    if isinstance(obj, DeadLetterReason):
        return obj
    for name in ("id", "duplicate_of", "tenant"):
        value = obj.get(name)
        problem = _identifier_problem(name, value) if isinstance(value, str) else None
        if problem is not None:
            return problem
    try:
        verdict = ModeratorVerdict.model_validate(obj, context={"max_id_chars": max_id_chars})
    except ValidationError as error:
        return _reason(error)
    fields = [
        verdict.id,
        verdict.duplicate_of,
        verdict.tenant,
        verdict.text or "",
        verdict.duplicate_text or "",
    ]
    surrogate = next((found for found in map(_surrogate, fields) if found is not None), None)
    if surrogate is not None:
        return DeadLetterReason("invalid_unicode", surrogate)
    if verdict.id == verdict.duplicate_of:
        return DeadLetterReason("invalid_verdict", "id and duplicate_of name the same post")
    return verdict


def _surrogate(value: str) -> str | None:
    match = _LONE_SURROGATE.search(value)
    return None if match is None else f"lone surrogate at char {match.start()}"


def _load_object(value: bytes, max_bytes: int) -> dict[str, object] | DeadLetterReason:
    """Bytes → a JSON object, cheapest check first: size, UTF-8, standard JSON, nesting, an object."""
    if len(value) > max_bytes:
        return DeadLetterReason("oversized", f"{len(value)} bytes > {max_bytes}")
    try:
        raw = value.decode("utf-8")
    except UnicodeDecodeError as error:
        return DeadLetterReason("invalid_utf8", f"{error.reason} at byte {error.start}")
    try:
        obj = json.loads(raw, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        return DeadLetterReason("invalid_json", f"{error.msg} at line {error.lineno} col {error.colno}")
    except ValueError as error:  # NaN/Infinity, or an integer beyond Python's digit limit
        return DeadLetterReason("invalid_json", str(error)[:200])
    except RecursionError:
        return DeadLetterReason("too_deep", "nesting exceeds the JSON parser's recursion limit")
    if _depth(obj) > MAX_DEPTH:
        return DeadLetterReason("too_deep", f"nesting deeper than {MAX_DEPTH}")
    if not isinstance(obj, dict):
        return DeadLetterReason("not_object", f"top-level JSON {_json_type(obj)}, expected an object")
    return obj


def _tombstone(key: bytes | None, max_id_chars: int, scope: TombstoneScope) -> Deletion | DeadLetterReason:
    if scope == "refuse":
        detail = (
            'tombstones are refused here (tombstones=refuse): delete with {"id", "tenant", "deleted": true}'
        )
        return DeadLetterReason("invalid_tombstone", detail)
    if key is None:
        return DeadLetterReason("invalid_tombstone", "null value and no key: nothing to delete")
    try:
        doc_id = key.decode("utf-8")
    except UnicodeDecodeError as error:
        detail = f"key is not UTF-8 ({error.reason} at byte {error.start})"
        return DeadLetterReason("invalid_tombstone", detail)
    if not doc_id:
        return DeadLetterReason("empty_id", "tombstone with an empty key")
    problem = _identifier_problem("id", doc_id)
    if problem is not None:
        return problem
    if len(doc_id) > max_id_chars:
        return DeadLetterReason("id_too_long", f"{len(doc_id)} chars > {max_id_chars}")
    tenant = None if scope == "all_tenants" else "default"
    return Deletion.model_validate({"id": doc_id, "tenant": tenant}, context={"max_id_chars": max_id_chars})


class _NonStandardJSONError(ValueError):
    pass


def _reject_constant(name: str) -> object:
    raise _NonStandardJSONError(f"non-standard constant {name}")


def _depth(obj: object) -> int:
    """Nesting depth without recursion (a scalar is 0, ``{}`` is 1)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(obj, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children: list[object] = list(node.values())
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def _json_type(obj: object) -> str:
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "boolean"
    if isinstance(obj, int | float):
        return "number"
    if isinstance(obj, str):
        return "string"
    return "array"


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc


def _identifier_problem(name: str, value: str) -> DeadLetterReason | None:
    """A lone surrogate (``invalid_unicode``) or a control character (``invalid_id``/``invalid_tenant``)."""
    surrogate = _LONE_SURROGATE.search(value)
    if surrogate is not None:
        return DeadLetterReason("invalid_unicode", f"{name}: lone surrogate at char {surrogate.start()}")
    control = _CONTROL.search(value)
    if control is not None:
        code: ReasonCode = "invalid_id" if name == "id" else "invalid_tenant"
        return DeadLetterReason(
            code, f"{name}: control character U+{ord(control.group()):04X} at char {control.start()}"
        )
    return None


def _unicode_problem(*fields: str) -> DeadLetterReason | None:
    for name, value in zip(("id", "tenant", "text"), fields, strict=False):
        match = _LONE_SURROGATE.search(value)
        if match is not None:
            return DeadLetterReason("invalid_unicode", f"{name}: lone surrogate at char {match.start()}")
    return None


_FIELD_CODES: dict[str, ReasonCode] = {"tenant": "invalid_tenant", "created_at": "invalid_created_at"}


def _reason(error: ValidationError) -> DeadLetterReason:
    """The first validation error (fields in declaration order) → a code and a short detail.

    The detail names the field and the rule, never the value: it ends up in logs and dashboards.
    """
    first = error.errors(include_url=False, include_input=False)[0]
    field = ".".join(str(part) for part in first["loc"]) or "(object)"
    kind, message = first["type"], first["msg"]
    if kind == "missing":
        return DeadLetterReason("missing_field", field)
    if kind == "id_too_long":
        return DeadLetterReason("id_too_long", message)
    if field == "id" and kind == "string_too_short":
        return DeadLetterReason("empty_id", "id is an empty string")
    if kind.endswith("_type") and kind != "created_at_type":
        return DeadLetterReason("wrong_type", f"{field}: {message}")
    return DeadLetterReason(_FIELD_CODES.get(field, "wrong_type"), f"{field}: {message}")
