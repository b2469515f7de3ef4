"""``MemoryIndex``: the ``VectorIndex`` in memory, with exact (brute-force) search in numpy.

The reference backend: the contract suite (``tests/contract/test_index_contract.py``) holds the real
backends against it, and the core's tests run on it. It follows every rule of
``worker.core.ports.VectorIndex`` (tenants, strictly earlier order keys, the retention bound, never the
document itself, keys inside ``[0, 2**53)``) and counts its calls, so a test can see what the batch
step asked for.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence

import numpy as np

from worker.core.errors import IndexMismatchError
from worker.core.ports import Candidate, Expiry, HashQuery, IndexPoint, Query, StoredVector
from worker.index.payload import check_key, point_id


class MemoryIndex:
    """``VectorIndex`` in memory with exact (brute-force) search. Reference for the contract suite."""

    def __init__(self) -> None:
        self._points: dict[str, IndexPoint] = {}
        self._dim: int | None = None
        self._model: str | None = None
        self.calls: Counter[str] = Counter()
        self.closed = False

    def ensure(self, dim: int, model_version: str) -> None:
        self.calls["ensure"] += 1
        if self._dim is None:
            self._dim, self._model = dim, model_version
            return
        if (self._dim, self._model) != (dim, model_version):
            raise IndexMismatchError(
                f"collection holds dim={self._dim} model={self._model!r}; "
                f"the model has dim={dim} model={model_version!r}"
            )

    def search(self, queries: Sequence[Query], k: int) -> list[list[Candidate]]:
        self.calls["search"] += 1
        points = list(self._points.values())
        if not points:
            return [[] for _ in queries]
        matrix = np.stack([p.vector for p in points]).astype(np.float64)
        results: list[list[Candidate]] = []
        for query in queries:
            self._check_dim(query.vector)
            check_key(query.before)
            scores = matrix @ np.asarray(query.vector, dtype=np.float64)
            found = [
                Candidate(p.doc_id, float(score), p.order, "index")
                for p, score in zip(points, scores.tolist(), strict=True)
                if p.tenant == query.tenant
                and p.doc_id != query.doc_id
                and p.order < query.before
                and _kept(p, query.after_ts)
            ]
            found.sort(key=lambda n: (-n.score, n.order, n.doc_id))
            results.append(found[: max(k, 0)])
        return results

    def find_hashes(self, queries: Sequence[HashQuery]) -> list[Candidate | None]:
        self.calls["find_hashes"] += 1
        results: list[Candidate | None] = []
        for query in queries:
            check_key(query.before)
            same = [
                p
                for p in self._points.values()
                if p.tenant == query.tenant
                and p.text_hash == query.text_hash
                and p.doc_id != query.doc_id
                and p.order < query.before
                and _kept(p, query.after_ts)
            ]
            first = min(same, key=lambda p: (p.order, p.doc_id), default=None)
            results.append(None if first is None else Candidate(first.doc_id, 1.0, first.order, "exact"))
        return results

    def fetch(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], StoredVector]:
        self.calls["fetch"] += 1
        found: dict[tuple[str, str], StoredVector] = {}
        for tenant, doc_id in keys:
            p = self._points.get(point_id(tenant, doc_id))
            if p is not None:
                found[(tenant, doc_id)] = StoredVector(
                    p.doc_id,
                    p.tenant,
                    p.text_hash,
                    p.vector.copy(),
                    p.decision,
                    p.opaque,
                    p.text,
                    p.created_at,
                    p.forms,
                    p.meta,
                    p.order,
                )
        return found

    def upsert(self, points: Sequence[IndexPoint]) -> None:
        self.calls["upsert"] += 1
        for p in points:
            self._check_dim(p.vector)
            check_key(p.order)
            vector = np.array(p.vector, dtype=np.float32, copy=True)
            self._points[point_id(p.tenant, p.doc_id)] = dataclasses.replace(p, vector=vector)

    def delete(self, tenant: str | None, doc_ids: Sequence[str]) -> int:
        self.calls["delete"] += 1
        wanted = set(doc_ids)
        gone = [
            pid
            for pid, p in self._points.items()
            if p.doc_id in wanted and (tenant is None or p.tenant == tenant)
        ]
        for pid in gone:
            del self._points[pid]
        return len(gone)

    def expire(self, expiries: Sequence[Expiry]) -> int:
        self.calls["expire"] += 1
        gone = [
            pid
            for pid, p in self._points.items()
            if any(
                p.order[0] < e.before_ts and e.tenant in (None, p.tenant) and p.tenant not in e.spared
                for e in expiries
            )
        ]
        for pid in gone:
            del self._points[pid]
        return len(gone)

    def count(self) -> int:
        return len(self._points)

    def maintain(self) -> None:
        self.calls["maintain"] += 1

    def flush(self) -> None:
        self.calls["flush"] += 1

    def close(self) -> None:
        self.closed = True

    def point(self, tenant: str, doc_id: str) -> IndexPoint | None:
        """Test helper: the stored point, payload included."""
        return self._points.get(point_id(tenant, doc_id))

    def _check_dim(self, vector: np.ndarray) -> None:
        if self._dim is not None and vector.shape != (self._dim,):
            raise ValueError(f"vector of shape {vector.shape}, collection dim is {self._dim}")


def _kept(point: IndexPoint, after_ts: int | None) -> bool:
    """Within the query's retention: its record time is at least ``after_ts`` (None: no bound)."""
    return after_ts is None or point.order[0] >= after_ts
