"""Fakes for the worker's protocols: fast, deterministic, and faithful to the contracts they stand in for.

``MemoryIndex`` doubles as the reference implementation in the ``VectorIndex`` contract suite: it does
exact search in numpy and follows every rule written in ``worker/search.py``.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from worker.core.step import Record
from worker.index.search import (
    HashQuery,
    IndexMismatchError,
    IndexPoint,
    Neighbour,
    OrderKey,
    Query,
    StoredVector,
    point_id,
)


class ListPublisher:
    """Records every send; ``flush`` only counts. ``FlagPublisher`` for tests."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []
        self.flushes = 0

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.sent.append((topic, key, value))

    def flush(self, timeout_s: float) -> None:
        self.flushes += 1

    def messages(self, topic: str) -> list[tuple[bytes | None, bytes]]:
        return [(key, value) for t, key, value in self.sent if t == topic]

    def json(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(value) for _, value in self.messages(topic)]


class HashEncoder:
    """Deterministic stand-in for a model: signed hashing of character trigrams, L2-normalised.

    Lower-cased trigrams, so a typo'd or re-cased repost scores well above 0.8, while unrelated texts
    land near 0 (signed buckets cancel out; dim 256 keeps the noise around ±0.06).
    """

    def __init__(self, dim: int = 256, version: str = "hash-trigram-v1", max_tokens: int = 512) -> None:
        self._dim = dim
        self._version = version
        self._max_tokens = max_tokens
        self.calls = 0
        self.embedded: list[str] = []

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def version(self) -> str:
        return self._version

    @property
    def max_tokens(self) -> int:
        return self._max_tokens

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        self.embedded.extend(texts)
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row] = self._one(text)
        return out

    def health(self) -> bool:
        return True

    def _one(self, text: str) -> np.ndarray:
        padded = f"  {text.lower()}  "
        vector = np.zeros(self._dim, dtype=np.float64)
        for start in range(len(padded) - 2):
            code = zlib.crc32(padded[start : start + 3].encode("utf-8", "surrogatepass"))
            vector[code % self._dim] += 1.0 if (code >> 16) & 1 else -1.0
        norm = float(np.linalg.norm(vector))
        if norm == 0.0:  # nothing to hash: a fixed unit vector keeps the output normalised
            vector[0], norm = 1.0, 1.0
        return (vector / norm).astype(np.float32)


def _check_key(order: OrderKey) -> None:
    """Like the real backends: both parts of an order key in [0, 2**53) (Qdrant compares through f64)."""
    if not all(0 <= part < 2**53 for part in order):
        raise ValueError(f"order key {order} outside [0, 2**53)")


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

    def search(self, queries: Sequence[Query], k: int) -> list[list[Neighbour]]:
        self.calls["search"] += 1
        points = list(self._points.values())
        if not points:
            return [[] for _ in queries]
        matrix = np.stack([p.vector for p in points]).astype(np.float64)
        results: list[list[Neighbour]] = []
        for query in queries:
            self._check_dim(query.vector)
            _check_key(query.before)
            scores = matrix @ np.asarray(query.vector, dtype=np.float64)
            found = [
                Neighbour(p.doc_id, float(score), p.order)
                for p, score in zip(points, scores.tolist(), strict=True)
                if p.tenant == query.tenant and p.doc_id != query.doc_id and p.order < query.before
            ]
            found.sort(key=lambda n: (-n.score, n.order, n.doc_id))
            results.append(found[: max(k, 0)])
        return results

    def find_hashes(self, queries: Sequence[HashQuery]) -> list[Neighbour | None]:
        self.calls["find_hashes"] += 1
        results: list[Neighbour | None] = []
        for query in queries:
            _check_key(query.before)
            same = [
                p
                for p in self._points.values()
                if p.tenant == query.tenant
                and p.text_hash == query.text_hash
                and p.doc_id != query.doc_id
                and p.order < query.before
            ]
            first = min(same, key=lambda p: (p.order, p.doc_id), default=None)
            results.append(None if first is None else Neighbour(first.doc_id, 1.0, first.order))
        return results

    def fetch(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], StoredVector]:
        self.calls["fetch"] += 1
        found: dict[tuple[str, str], StoredVector] = {}
        for tenant, doc_id in keys:
            p = self._points.get(point_id(tenant, doc_id))
            if p is not None:
                found[(tenant, doc_id)] = StoredVector(
                    p.doc_id, p.tenant, p.text_hash, p.vector.copy(), p.decision
                )
        return found

    def upsert(self, points: Sequence[IndexPoint]) -> None:
        self.calls["upsert"] += 1
        for p in points:
            self._check_dim(p.vector)
            _check_key(p.order)
            vector = np.array(p.vector, dtype=np.float32, copy=True)
            self._points[point_id(p.tenant, p.doc_id)] = IndexPoint(
                p.doc_id, p.tenant, vector, p.text_hash, p.order, p.model, p.created_at, p.decision
            )

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


def doc_record(
    doc_id: str,
    text: str,
    offset: int,
    *,
    partition: int = 0,
    timestamp_ms: int = 1_700_000_000_000,
    tenant: str | None = None,
    topic: str = "documents",
) -> Record:
    """A record carrying one document, keyed by its id like a well-behaved producer would."""
    body: dict[str, object] = {"id": doc_id, "text": text}
    if tenant is not None:
        body["tenant"] = tenant
    return raw_record(
        json.dumps(body).encode(),
        offset,
        key=doc_id.encode(),
        partition=partition,
        timestamp_ms=timestamp_ms,
        topic=topic,
    )


def raw_record(
    value: bytes | None,
    offset: int,
    *,
    key: bytes | None = None,
    partition: int = 0,
    timestamp_ms: int = 1_700_000_000_000,
    topic: str = "documents",
) -> Record:
    return Record(topic, partition, offset, timestamp_ms, key, value)
