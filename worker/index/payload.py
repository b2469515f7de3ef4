"""What both index backends share, written once: the payload, the filter, the ranking, the hash rule.

Every point is one document of one tenant, under a deterministic id (``point_id``), with the payload
``id, tenant, text_hash, created_at, model, ts, pos, decision, opaque, text, forms, meta`` (``text``: the
start of the post, kept only for a model with a verifier, which reads it when a later post comes close;
``forms`` and ``meta``: what a later post's flag says of this one).
Every search and lookup is bounded by one filter: ``tenant == T`` AND ``(ts < TS OR (ts == TS AND
pos < POS))`` AND NOT ``has_id(own point id)``, and with a retention ``ts >= AFTER`` (``expired_filter``
selects the points retention removes). The range conditions go through f64 in Qdrant, so
both parts of an order key must lie in ``[0, 2**53)``; ``check_key`` refuses keys outside it rather
than let them compare wrongly.

Qdrant Edge (``qdrant_edge``) and qdrant-client spell filters in two dialects of the same model. The
filter is written once here, over a ``FilterDialect`` each backend implements in a few lines; the
two-stage earliest-hash lookup is written once over a function that runs one batch of ordered
requests (``find_earliest``); the payload indexes are listed once (``PAYLOAD_INDEXES``).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from worker.core.errors import IndexMismatchError
from worker.core.ports import Candidate, Expiry, HashQuery, IndexPoint, Stage, StoredVector
from worker.core.records import OrderKey

_NAMESPACE = uuid.UUID("9a1d3c52-6f0e-4d8b-8e57-0c5a3f1b2d77")
MAX_KEY = 2**53  # f64 range filters compare integers exactly below this
RESULT_FIELDS = ["id", "ts", "pos"]
STORED_FIELDS = [
    *("id", "tenant", "text_hash", "decision", "opaque", "text"),
    *("created_at", "forms", "meta", "ts", "pos"),
]
HASH_PROBE = 8  # first find_hashes stage: this many earliest points, to see every tie on ts
MODEL_KEY = "twinflag_model_version"

IndexKind = Literal["tenant", "keyword", "integer"]
PAYLOAD_INDEXES: dict[str, IndexKind] = {
    "tenant": "tenant",  # the one field with payload-aware HNSW links: searches never cross tenants
    "text_hash": "keyword",
    "id": "keyword",
    "ts": "integer",  # lookup and range: order-key filters and the earliest-hash order
    "pos": "integer",
}
"""Payload indexes of a collection, by field. Only the tenant gets payload-aware HNSW links: the other
fields filter exact lookups or cut off by order, and extra graphs for them would only lengthen every
optimisation."""


@functools.lru_cache(maxsize=1 << 16)
def point_id(tenant: str, doc_id: str) -> str:
    """Deterministic point id: replays and re-deliveries overwrite the same point. Cached: a batch asks
    for the ids of its documents and of their neighbours several times (filters, fetches, upserts)."""
    return str(uuid.uuid5(_NAMESPACE, f"{tenant}\x1f{doc_id}"))


def check_key(order: OrderKey) -> None:
    ts, pos = order
    if not (0 <= ts < MAX_KEY and 0 <= pos < MAX_KEY):
        raise ValueError(f"order key {order} outside [0, 2**53): range filters would compare it wrongly")


def payload(point: IndexPoint) -> dict[str, Any]:
    check_key(point.order)
    return {
        "id": point.doc_id,
        "tenant": point.tenant,
        "text_hash": point.text_hash,
        "created_at": point.created_at,
        "model": point.model,
        "ts": point.order[0],
        "pos": point.order[1],
        "decision": point.decision,
        "opaque": point.opaque,
        "text": point.text,
        "forms": point.forms,
        "meta": point.meta,
    }


def candidate(row: Mapping[str, Any] | None, score: float, stage: Stage) -> Candidate:
    """A result row (``RESULT_FIELDS``) as a match of the given stage."""
    if row is None:
        raise RuntimeError("index returned a point without its payload")
    return Candidate(str(row["id"]), float(score), (int(row["ts"]), int(row["pos"])), stage)


def point_ids(keys: Sequence[tuple[str, str]]) -> list[str]:
    """The point ids of (tenant, doc_id) keys, each once, in order."""
    return list(dict.fromkeys(point_id(tenant, doc_id) for tenant, doc_id in keys))


def stored_by_key(
    rows: Iterable[tuple[Mapping[str, Any] | None, Any]],
) -> dict[tuple[str, str], StoredVector]:
    """Fetched points (payload with ``STORED_FIELDS``, vector) by (tenant, doc_id)."""
    out: dict[tuple[str, str], StoredVector] = {}
    for row, vector in rows:
        found = stored(row or {}, np.asarray(vector, dtype=np.float32))
        out[(found.tenant, found.doc_id)] = found
    return out


def stored(row: Mapping[str, Any], vector: np.ndarray) -> StoredVector:
    """A fetched point (``STORED_FIELDS`` and its vector)."""
    decision = row.get("decision")  # absent from points written before it was stored
    return StoredVector(
        str(row["id"]),
        str(row["tenant"]),
        str(row["text_hash"]),
        vector,
        None if decision is None else str(decision),
        bool(row.get("opaque", False)),  # absent from points written before it was stored
        None if row.get("text") is None else str(row["text"]),
        _text(row, "created_at"),
        _text(row, "forms"),  # these three are absent from points written before they were stored
        _text(row, "meta"),
        None if row.get("ts") is None or row.get("pos") is None else (int(row["ts"]), int(row["pos"])),
    )


def _text(row: Mapping[str, Any], field: str) -> str | None:
    value = row.get(field)
    return None if value is None else str(value)


def ranked(found: list[Candidate]) -> list[Candidate]:
    """Best first; equal scores by order key then id, so a replay returns the same list."""
    return sorted(found, key=lambda c: (-c.score, c.order, c.doc_id))


def as_vector(vector: np.ndarray, dim: int) -> list[float]:
    if vector.shape != (dim,):
        raise ValueError(f"vector of shape {vector.shape}, the index holds dim {dim}")
    values: list[float] = np.asarray(vector, dtype=np.float32).tolist()  # measured faster than ndarray
    return values


def check_model(where: str, stored_dim: int, stored_model: str, dim: int, model_version: str) -> None:
    if stored_dim != dim or stored_model != model_version:
        raise IndexMismatchError(
            f"{where} holds dim {stored_dim} vectors of model {stored_model!r}, but the model is dim {dim},"
            f" version {model_version!r}: refusing to mix vector spaces (use a new index path or collection)"
        )


# ------------------------------------------------------------------------------------ the filter


class FilterDialect(Protocol):
    """How one client library spells the few filter pieces we use."""

    def equals(self, key: str, value: str | int) -> Any: ...

    def below(self, key: str, value: int) -> Any: ...

    def at_least(self, key: str, value: int) -> Any: ...

    def any_of(self, conditions: list[Any]) -> Any: ...

    def none_of(self, conditions: list[Any]) -> Any: ...

    def all_of(self, conditions: list[Any], exclude_ids: Sequence[str] = ()) -> Any: ...


def earlier_filter(
    dialect: FilterDialect,
    tenant: str,
    before: OrderKey,
    doc_id: str,
    equal: Mapping[str, str | int] | None = None,
    *,
    after_ts: int | None = None,
    all_earlier: bool = False,
    exclude_self: bool = True,
) -> Any:
    """The tenant's points strictly earlier than ``before`` and, with ``after_ts``, of record time at
    least that (retention), other than the document itself, that also match ``equal`` field by field.
    ``all_earlier``: the caller knows every stored point is earlier than ``before``, so the order-key
    condition is left out (it costs a quarter of a search); the retention bound stays.
    ``exclude_self=False``: the caller drops the document's own point from the results itself (Qdrant
    Edge: the id condition made a search 1.5-2.5x slower than one more result and a Python check)."""
    check_key(before)
    ts, pos = before
    conditions = [dialect.equals("tenant", tenant)]
    if not all_earlier:
        earlier = [
            dialect.below("ts", ts),
            dialect.all_of([dialect.equals("ts", ts), dialect.below("pos", pos)]),
        ]
        conditions.append(dialect.any_of(earlier))
    if after_ts is not None:
        conditions.append(dialect.at_least("ts", after_ts))
    conditions += [dialect.equals(key, value) for key, value in (equal or {}).items()]
    return dialect.all_of(conditions, exclude_ids=[point_id(tenant, doc_id)] if exclude_self else [])


def expired_filter(dialect: FilterDialect, expiry: Expiry) -> Any:
    """The points an expiry removes: record time before its cut, in its tenant or in all but the
    spared ones."""
    conditions = [dialect.below("ts", expiry.before_ts)]
    if expiry.tenant is not None:
        conditions.append(dialect.equals("tenant", expiry.tenant))
    if expiry.spared:
        conditions.append(dialect.none_of([dialect.equals("tenant", t) for t in sorted(expiry.spared)]))
    return dialect.all_of(conditions)


# ---------------------------------------------------------------------------- the earliest hash


@dataclass(frozen=True, slots=True)
class HashProbe:
    """One ordered request of the hash lookup: ``HASH_PROBE`` earliest points of the query's tenant
    with its text hash (and, in the second stage, the tied ``ts``), ascending by ``order_by``."""

    query: HashQuery
    order_by: Literal["ts", "pos"]
    ts: int | None

    def equal(self) -> dict[str, str | int]:
        fields: dict[str, str | int] = {"text_hash": self.query.text_hash}
        if self.ts is not None:
            fields["ts"] = self.ts
        return fields

    def where(self, dialect: FilterDialect, latest: OrderKey | None = None) -> Any:
        """The probe's filter in the backend's dialect. ``latest``: the largest order key stored, when
        the backend knows it; a probe past it needs no order-key condition (2.4x faster on Edge)."""
        q = self.query
        return earlier_filter(
            dialect,
            q.tenant,
            q.before,
            q.doc_id,
            self.equal(),
            after_ts=q.after_ts,
            all_earlier=latest is not None and q.before > latest,
        )


RunProbes = Callable[[list[HashProbe]], list[list[Mapping[str, Any] | None]]]


def find_earliest(queries: Sequence[HashQuery], run: RunProbes) -> list[Candidate | None]:
    """Per query the earliest earlier point with its tenant and text hash: smallest (ts, pos, id).

    Ordering by one field per request is what both backends offer, so: first the ``HASH_PROBE``
    earliest by ts; when all of them tie on ts (a bulk-loaded corpus has ts=0 everywhere), a second
    request among that ts, ordered by pos.
    """
    if not queries:
        return []
    first = run([HashProbe(q, "ts", None) for q in queries])
    picked = [_earliest(rows) for rows in first]
    tied = [(i, ts) for i, (_, ts) in enumerate(picked) if ts is not None]
    out = [found for found, _ in picked]
    if tied:
        second = run([HashProbe(queries[i], "pos", ts) for i, ts in tied])
        for (i, _), rows in zip(tied, second, strict=True):
            out[i] = _lowest_pos(rows)
    return out


def _earliest(rows: Sequence[Mapping[str, Any] | None]) -> tuple[Candidate | None, int | None]:
    """Pick the smallest (ts, pos, id) from rows ordered by ts ascending.

    Returns ``(candidate, None)``, or ``(None, ts)`` when all ``HASH_PROBE`` rows share that ts: more
    points may tie on it, so the caller asks again ordered by pos.
    """
    present = [r for r in rows if r is not None]
    if not present:
        return None, None
    first_ts = min(int(r["ts"]) for r in present)
    ties = [r for r in present if int(r["ts"]) == first_ts]
    if len(present) >= HASH_PROBE and len(ties) == len(present):
        return None, first_ts
    best = min(ties, key=lambda r: (int(r["pos"]), str(r["id"])))
    return candidate(best, 1.0, "exact"), None


def _lowest_pos(rows: Sequence[Mapping[str, Any] | None]) -> Candidate | None:
    present = [r for r in rows if r is not None]
    if not present:
        return None
    return candidate(min(present, key=lambda r: (int(r["pos"]), str(r["id"]))), 1.0, "exact")
