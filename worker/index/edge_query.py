"""How ``EdgeIndex`` spells its reads to Qdrant Edge: the filter dialect, the batched searches, the hash
probes and the newest-point lookup. Plain functions over ``qdrant_edge`` request objects; the shard, its
lifecycle and its optimisation are ``worker.index.edge``'s."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import qdrant_edge as qe

from worker.core.ports import Candidate, Query
from worker.core.records import OrderKey
from worker.index.payload import (
    HASH_PROBE,
    RESULT_FIELDS,
    HashProbe,
    as_vector,
    candidate,
    earlier_filter,
    ranked,
)


class EdgeDialect:
    """``worker.index.payload.FilterDialect`` in Qdrant Edge's spelling."""

    def equals(self, key: str, value: str | int) -> qe.FieldCondition:
        return qe.FieldCondition(key, match=qe.MatchValue(value))

    def below(self, key: str, value: int) -> qe.FieldCondition:
        return qe.FieldCondition(key, range=qe.RangeFloat(lt=float(value)))

    def at_least(self, key: str, value: int) -> qe.FieldCondition:
        return qe.FieldCondition(key, range=qe.RangeFloat(gte=float(value)))

    def any_of(self, conditions: list[Any]) -> qe.Filter:
        return qe.Filter(should=conditions)

    def none_of(self, conditions: list[Any]) -> qe.Filter:
        return qe.Filter(must_not=conditions)

    def all_of(self, conditions: list[Any], exclude_ids: Sequence[str] = ()) -> qe.Filter:
        if not exclude_ids:
            return qe.Filter(must=conditions)
        return qe.Filter(must=conditions, must_not=[qe.HasIdCondition(set(exclude_ids))])


DIALECT = EdgeDialect()


def search_requests(
    queries: Sequence[Query], k: int, dim: int, latest: OrderKey, params: qe.SearchParams
) -> list[qe.QueryRequest]:
    """One nearest-neighbour request per query. The document's own point is not filtered out (the id
    condition made a search 1.5-2.5x slower): one more result is asked for and ``search_results`` drops
    it. A query past ``latest``, the newest stored point, needs no order-key condition."""
    return [
        qe.QueryRequest(
            limit=k + 1,
            query=qe.Query.Nearest(as_vector(q.vector, dim)),
            filter=earlier_filter(
                DIALECT,
                q.tenant,
                q.before,
                q.doc_id,
                after_ts=q.after_ts,
                all_earlier=q.before > latest,
                exclude_self=False,
            ),
            params=params,
            with_payload=RESULT_FIELDS,
            with_vector=False,
        )
        for q in queries
    ]


def search_results(queries: Sequence[Query], hits: Sequence[Sequence[Any]], k: int) -> list[list[Candidate]]:
    """Each query's top k, best first, without the document's own point."""
    return [
        ranked([candidate(p.payload, p.score, "index") for p in row if not _own(p.payload, q.doc_id)])[:k]
        for q, row in zip(queries, hits, strict=True)
    ]


def _own(row: Mapping[str, Any] | None, doc_id: str) -> bool:
    return row is not None and row.get("id") == doc_id


def probe_requests(probes: Sequence[HashProbe], latest: OrderKey) -> list[qe.QueryRequest]:
    """The hash lookup's ordered requests (``worker.index.payload.find_earliest``)."""
    return [
        qe.QueryRequest(
            limit=HASH_PROBE,
            query=qe.OrderBy(probe.order_by, qe.Direction.Asc),
            filter=probe.where(DIALECT, latest),
            with_payload=RESULT_FIELDS,
            with_vector=False,
        )
        for probe in probes
    ]


def last_request(field: str, where: qe.Filter | None) -> qe.QueryRequest:
    """The point with the largest ``field`` among those ``where`` selects."""
    return qe.QueryRequest(
        limit=1,
        query=qe.OrderBy(field, qe.Direction.Desc),
        filter=where,
        with_payload=RESULT_FIELDS,
        with_vector=False,
    )
