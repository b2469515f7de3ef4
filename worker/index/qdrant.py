"""``QdrantIndex``: the ``VectorIndex`` over one collection of a Qdrant server, through qdrant-client.

Upserts and deletes use ``wait=True``: when they return the server has applied them and written them to
its WAL, so the next batch sees them and ``flush()`` has nothing left to do. The model version lives in
the collection's ``metadata`` (Qdrant >= 1.16): it travels with the collection (snapshots, migrations)
without a reserved point that every search would have to filter out, or an alias that could be
repointed under us. Outages surface as ``worker.core.errors.IndexUnavailableError`` so the loop backs off.

qdrant-client is imported lazily: importing the index room must not pay for it where the embedded
backend is used.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from worker.core.errors import IndexMismatchError, IndexUnavailableError
from worker.core.ports import Candidate, Expiry, HashQuery, IndexPoint, Query, StoredVector
from worker.index.config import OVERSAMPLING, QUANTILE
from worker.index.payload import (
    HASH_PROBE,
    MODEL_KEY,
    PAYLOAD_INDEXES,
    RESULT_FIELDS,
    STORED_FIELDS,
    HashProbe,
    as_vector,
    candidate,
    check_model,
    earlier_filter,
    expired_filter,
    find_earliest,
    payload,
    point_id,
    point_ids,
    ranked,
    stored_by_key,
)

if TYPE_CHECKING:
    from qdrant_client import QdrantClient, models


class QdrantDialect:
    """``worker.index.payload.FilterDialect`` in qdrant-client's spelling."""

    def __init__(self) -> None:
        from qdrant_client import models

        self._m = models

    def equals(self, key: str, value: str | int) -> models.FieldCondition:
        return self._m.FieldCondition(key=key, match=self._m.MatchValue(value=value))

    def below(self, key: str, value: int) -> models.FieldCondition:
        return self._m.FieldCondition(key=key, range=self._m.Range(lt=value))

    def at_least(self, key: str, value: int) -> models.FieldCondition:
        return self._m.FieldCondition(key=key, range=self._m.Range(gte=value))

    def any_of(self, conditions: list[Any]) -> models.Filter:
        return self._m.Filter(should=conditions)

    def none_of(self, conditions: list[Any]) -> models.Filter:
        return self._m.Filter(must_not=conditions)

    def all_of(self, conditions: list[Any], exclude_ids: Sequence[str] = ()) -> models.Filter:
        if not exclude_ids:
            return self._m.Filter(must=conditions)
        return self._m.Filter(must=conditions, must_not=[self._m.HasIdCondition(has_id=list(exclude_ids))])


@contextmanager
def _unavailable(collection: str) -> Iterator[None]:
    """Outages → IndexUnavailableError (the loop backs off); anything else (4xx, bugs) propagates."""
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    try:
        yield
    except ResponseHandlingException as exc:
        raise IndexUnavailableError(f"Qdrant collection {collection!r}: {type(exc).__name__}") from exc
    except UnexpectedResponse as exc:
        if exc.status_code in (429, 502, 503, 504):
            raise IndexUnavailableError(f"Qdrant collection {collection!r}: HTTP {exc.status_code}") from exc
        raise
    except Exception as exc:
        code = getattr(exc, "code", None)  # grpc.RpcError, without importing grpc here
        name = getattr(code() if callable(code) else None, "name", "")
        if name in {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}:
            raise IndexUnavailableError(f"Qdrant collection {collection!r}: gRPC {name}") from exc
        raise


class QdrantIndex:
    """``VectorIndex`` over one collection of a Qdrant server, through a client the caller built.

    The caller owns the client (``close()`` leaves it open). Works with ``QdrantClient(":memory:")``
    too, where payload indexes and HNSW settings are accepted and ignored (local mode is exact).
    """

    def __init__(
        self,
        client: QdrantClient,
        collection: str,
        *,
        hnsw_m: int = 16,
        hnsw_ef_construct: int = 100,
        ef_search: int = 128,
        scalar_quantization: bool = True,
        quantization_oversampling: float = OVERSAMPLING,
        on_disk_vectors: bool = False,
        shard_number: int | None = None,
        replication_factor: int | None = None,
        write_consistency_factor: int | None = None,
    ) -> None:
        """``scalar_quantization``: int8 copies in RAM for the graph walk, rescored with the originals.

        ``shard_number``, ``replication_factor``, ``write_consistency_factor``: a new collection's layout
        on a Qdrant cluster (unset: the server's defaults); an existing collection keeps its own.
        """
        self._client = client
        self._collection = collection
        self._hnsw_m = hnsw_m
        self._hnsw_ef_construct = hnsw_ef_construct
        self._ef_search = ef_search
        self._scalar = scalar_quantization
        self._oversampling = quantization_oversampling
        self._on_disk = on_disk_vectors
        self._shard_number = shard_number
        self._replication_factor = replication_factor
        self._write_consistency_factor = write_consistency_factor
        self._dim: int | None = None
        self._dialect = QdrantDialect()

    def ensure(self, dim: int, model_version: str) -> None:
        from qdrant_client import models

        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        where = f"Qdrant collection {self._collection!r}"
        with _unavailable(self._collection):
            if not self._client.collection_exists(self._collection):
                self._create(dim, model_version)
            info = self._client.get_collection(self._collection)
            vectors = info.config.params.vectors
            if not isinstance(vectors, models.VectorParams) or vectors.distance != models.Distance.COSINE:
                raise IndexMismatchError(f"{where} is not one unnamed cosine vector: {vectors!r}")
            stored = (info.config.metadata or {}).get(MODEL_KEY)
            if stored is None:
                if info.points_count:
                    raise IndexMismatchError(
                        f"{where} holds {info.points_count} points but no {MODEL_KEY} in its metadata:"
                        f" refusing to assume they are model {model_version!r}"
                    )
                self._client.update_collection(self._collection, metadata={MODEL_KEY: model_version})
                stored = model_version
            check_model(where, vectors.size, str(stored), dim, model_version)
            self._ensure_payload_indexes(set(info.payload_schema))
        self._dim = dim

    def _create(self, dim: int, model_version: str) -> None:
        from qdrant_client import models

        quantization = (
            models.ScalarQuantization(
                scalar=models.ScalarQuantizationConfig(
                    type=models.ScalarType.INT8, quantile=QUANTILE, always_ram=True
                )
            )
            if self._scalar
            else None
        )
        try:
            self._client.create_collection(
                self._collection,
                vectors_config=models.VectorParams(
                    size=dim, distance=models.Distance.COSINE, on_disk=self._on_disk
                ),
                hnsw_config=models.HnswConfigDiff(m=self._hnsw_m, ef_construct=self._hnsw_ef_construct),
                quantization_config=quantization,
                metadata={MODEL_KEY: model_version},
                shard_number=self._shard_number,
                replication_factor=self._replication_factor,
                write_consistency_factor=self._write_consistency_factor,
            )
        except Exception:
            if not self._client.collection_exists(self._collection):
                raise
            # another worker created it between our check and our create: verify theirs instead

    def _ensure_payload_indexes(self, present: set[str]) -> None:
        from qdrant_client import models

        for field, kind in PAYLOAD_INDEXES.items():
            if field in present:
                continue
            schema: models.KeywordIndexParams | models.IntegerIndexParams
            if kind == "tenant":
                schema = models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True)
            elif kind == "keyword":
                schema = models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD)
            else:
                schema = models.IntegerIndexParams(
                    type=models.IntegerIndexType.INTEGER, lookup=True, range=True
                )
            self._client.create_payload_index(self._collection, field, field_schema=schema, wait=True)

    def _dimension(self) -> int:
        if self._dim is None:
            raise RuntimeError("QdrantIndex used before ensure()")
        return self._dim

    def search(self, queries: Sequence[Query], k: int) -> list[list[Candidate]]:
        from qdrant_client import models

        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not queries:
            return []
        dim = self._dimension()
        params = models.SearchParams(
            hnsw_ef=max(self._ef_search, k),
            quantization=(
                models.QuantizationSearchParams(rescore=True, oversampling=self._oversampling)
                if self._scalar
                else None
            ),
        )
        requests = [
            models.QueryRequest(
                query=as_vector(q.vector, dim),
                filter=earlier_filter(self._dialect, q.tenant, q.before, q.doc_id, after_ts=q.after_ts),
                limit=k,
                params=params,
                with_payload=RESULT_FIELDS,
                with_vector=False,
            )
            for q in queries
        ]
        with _unavailable(self._collection):
            responses = self._client.query_batch_points(self._collection, requests)
        return [ranked([candidate(p.payload, p.score, "index") for p in r.points]) for r in responses]

    def find_hashes(self, queries: Sequence[HashQuery]) -> list[Candidate | None]:
        with _unavailable(self._collection):
            return find_earliest(queries, self._run_probes)

    def _run_probes(self, probes: list[HashProbe]) -> list[list[Mapping[str, Any] | None]]:
        from qdrant_client import models

        requests = [
            models.QueryRequest(
                query=models.OrderByQuery(
                    order_by=models.OrderBy(key=probe.order_by, direction=models.Direction.ASC)
                ),
                filter=probe.where(self._dialect),
                limit=HASH_PROBE,
                with_payload=RESULT_FIELDS,
                with_vector=False,
            )
            for probe in probes
        ]
        responses = self._client.query_batch_points(self._collection, requests)
        return [[p.payload for p in r.points] for r in responses]

    def fetch(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], StoredVector]:
        if not keys:
            return {}
        with _unavailable(self._collection):
            records = self._client.retrieve(
                self._collection, point_ids(keys), with_payload=STORED_FIELDS, with_vectors=True
            )
        for rec in records:
            if not isinstance(rec.vector, list):
                raise RuntimeError(f"point {rec.id} has no single dense vector")
        return stored_by_key((rec.payload, rec.vector) for rec in records)

    def upsert(self, points: Sequence[IndexPoint]) -> None:
        from qdrant_client import models

        if not points:
            return
        dim = self._dimension()
        batch = [
            models.PointStruct(
                id=point_id(p.tenant, p.doc_id), vector=as_vector(p.vector, dim), payload=payload(p)
            )
            for p in points
        ]
        with _unavailable(self._collection):
            self._client.upsert(self._collection, points=batch, wait=True)

    def delete(self, tenant: str | None, doc_ids: Sequence[str]) -> int:
        from qdrant_client import models

        ids = list(dict.fromkeys(doc_ids))
        if not ids:
            return 0
        with _unavailable(self._collection):
            if tenant is not None:
                pids: list[models.ExtendedPointId] = [point_id(tenant, d) for d in ids]
                found = len(
                    self._client.retrieve(self._collection, pids, with_payload=False, with_vectors=False)
                )
                if found:
                    self._client.delete(
                        self._collection, points_selector=models.PointIdsList(points=pids), wait=True
                    )
                return found
            by_id = models.Filter(must=[models.FieldCondition(key="id", match=models.MatchAny(any=ids))])
            found = self._client.count(self._collection, count_filter=by_id, exact=True).count
            if found:
                self._client.delete(
                    self._collection, points_selector=models.FilterSelector(filter=by_id), wait=True
                )
            return found

    def expire(self, expiries: Sequence[Expiry]) -> int:
        from qdrant_client import models

        removed = 0
        with _unavailable(self._collection):
            for expiry in expiries:
                where = expired_filter(self._dialect, expiry)
                found = self._client.count(self._collection, count_filter=where, exact=True).count
                if found:
                    self._client.delete(
                        self._collection, points_selector=models.FilterSelector(filter=where), wait=True
                    )
                    removed += found
        return removed

    def count(self) -> int:
        with _unavailable(self._collection):
            return self._client.count(self._collection, exact=True).count

    def maintain(self) -> None:
        """Nothing to do: the server runs its own optimiser."""

    def flush(self) -> None:
        """Nothing to do: every write waited for the server's WAL (``wait=True``)."""

    def close(self) -> None:
        """The client belongs to the caller, who closes it."""
