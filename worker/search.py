"""Vectors → nearest earlier neighbours; upserts and deletions. The index is the worker's memory.

CONTRACT (owned by the index helper; the protocol below is fixed, implementations fill this module):

Every point is one document of one tenant. Its point id is deterministic, ``point_id(tenant, doc_id)``
(a UUID5), so an upsert replayed after a crash overwrites itself. Each point carries an *order key*
``(ts, pos)``: the Kafka record timestamp in ms and ``partition << 40 | offset`` (for ``scan``: ts=0,
pos=line number; for a bulk-loaded corpus: (0, line) — always earlier than any stream document).
"Earlier" means a lexicographically smaller order key. Searches only return points that are strictly
earlier than the query's own key, so a batch replayed after a crash sees exactly what it saw the first
time, whatever the batch boundaries are, and a document never matches itself or a later post.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

_NAMESPACE = uuid.UUID("9a1d3c52-6f0e-4d8b-8e57-0c5a3f1b2d77")

OrderKey = tuple[int, int]


def point_id(tenant: str, doc_id: str) -> str:
    """Deterministic point id: replays and re-deliveries overwrite the same point."""
    return str(uuid.uuid5(_NAMESPACE, f"{tenant}\x1f{doc_id}"))


@dataclass(frozen=True, slots=True)
class IndexPoint:
    """What the index stores per document (payload: id, tenant, text_hash, created_at, model, ts, pos)."""

    doc_id: str
    tenant: str
    vector: np.ndarray  # float32 (dim,), L2-normalised
    text_hash: str
    order: OrderKey
    model: str
    created_at: str | None = None


@dataclass(frozen=True, slots=True)
class Neighbour:
    doc_id: str
    score: float  # cosine similarity
    order: OrderKey


@dataclass(frozen=True, slots=True)
class Query:
    """One search: this vector's tenant and order key bound what it may match."""

    vector: np.ndarray
    tenant: str
    before: OrderKey
    doc_id: str  # never returned as its own neighbour


@dataclass(frozen=True, slots=True)
class HashQuery:
    tenant: str
    text_hash: str
    before: OrderKey
    doc_id: str


@dataclass(frozen=True, slots=True)
class StoredVector:
    doc_id: str
    tenant: str
    text_hash: str
    vector: np.ndarray


class IndexMismatchError(RuntimeError):
    """The collection holds another vector space than the model: refuse to mix them."""


class VectorIndex(Protocol):
    """A tenant-partitioned store of document embeddings with "earlier than" search.

    Implementations: ``EdgeIndex`` (Qdrant Edge, embedded, default) and ``QdrantIndex`` (a Qdrant
    server through qdrant-client). Both pass ``tests/unit/test_index_contract.py``.
    """

    def ensure(self, dim: int, model_version: str) -> None:
        """Create the collection if new; otherwise check dimension and model version.

        Raises IndexMismatchError naming both sides on a mismatch.
        """

    def search(self, queries: Sequence[Query], k: int) -> list[list[Neighbour]]:
        """One batched request: per query the top-k earlier points of its tenant, best first."""

    def find_hashes(self, queries: Sequence[HashQuery]) -> list[Neighbour | None]:
        """Exact fast path: per query the earliest earlier point with the same tenant and text hash."""

    def fetch(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], StoredVector]:
        """Stored vectors by (tenant, doc_id); absent keys are left out. Replays reuse these."""

    def upsert(self, points: Sequence[IndexPoint]) -> None:
        """Idempotent: the point id comes from (tenant, doc_id)."""

    def delete(self, tenant: str | None, doc_ids: Sequence[str]) -> int:
        """Remove documents (tenant None: in every tenant, as a Kafka tombstone cannot name one)."""

    def count(self) -> int: ...

    def maintain(self) -> None:
        """Called once per batch: kick housekeeping (Edge: the segment optimiser) without blocking."""

    def flush(self) -> None:
        """Make every upsert so far durable before offsets are committed."""

    def close(self) -> None: ...
