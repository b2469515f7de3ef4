"""The narrow interfaces the batch step and the loop depend on, and the values that cross them.

Real implementations live in the other rooms and are built by ``worker.service.wiring`` from settings
(the encoder by ``worker.service.decision``): ``Encoder`` (``worker.model.encode.TorchEncoder``),
``VectorIndex`` (``worker.index.edge.EdgeIndex``, ``worker.index.qdrant.QdrantIndex``,
``worker.index.memory.MemoryIndex``), ``RecordSource`` (``worker.kafka.source.KafkaSource``) and
``BatchPublisher`` (``worker.kafka.publish``). Nothing here imports them, or kafka, qdrant or torch: the
core is tested with fakes in milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from worker.core.records import Offsets, OrderKey, Record

Stage = Literal["exact", "batch", "index"]
"""How a match was found: the exact hash path, the in-batch matrix, or an index search."""


# ---------------------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Candidate:
    """One earlier document a document may duplicate: the one match type of the worker.

    Index searches return candidates with stage ``"index"`` (their score is the index's cosine, which
    the batch step recomputes from stored vectors), hash lookups with stage ``"exact"`` and score 1.0,
    the in-batch matrix with stage ``"batch"``. The flag's ``matches`` are their serialisation.
    """

    doc_id: str
    score: float  # rounded with worker.core.decide.round_score once it is a decision's
    order: OrderKey
    stage: Stage


@dataclass(frozen=True, slots=True)
class Query:
    """One search: this vector's tenant and order key bound what it may match, and ``after_ts``, when
    set, from below (retention: only points whose record time is at least this)."""

    vector: np.ndarray
    tenant: str
    before: OrderKey
    doc_id: str  # never returned as its own neighbour
    after_ts: int | None = None


@dataclass(frozen=True, slots=True)
class HashQuery:
    """One exact lookup: the earliest earlier point of the tenant with this normalised-text hash."""

    tenant: str
    text_hash: str
    before: OrderKey
    doc_id: str
    after_ts: int | None = None  # as ``Query.after_ts``: the earliest record time it may match


@dataclass(frozen=True, slots=True)
class Expiry:
    """Points past their retention: record time ``ts < before_ts``, of ``tenant``, or (tenant None) of
    every tenant but those ``spared`` (they have a retention of their own)."""

    before_ts: int
    tenant: str | None = None
    spared: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class IndexPoint:
    """What the index stores per document (payload: id, tenant, text_hash, created_at, model, ts, pos,
    decision).

    ``decision`` is the document's first decision (JSON, ``worker.core.decide.encode_verdict``): a
    replay republishes it unchanged, whatever the batch boundaries or the documents read since.
    """

    doc_id: str
    tenant: str
    vector: np.ndarray  # float32 (dim,), L2-normalised
    text_hash: str
    order: OrderKey
    model: str
    created_at: str | None = None
    decision: str | None = None
    opaque: bool = False  # the model knew none of its tokens: it matches by the exact path only
    text: str | None = None  # the start of the post, kept only when a verifier needs to read it later
    forms: str | None = None  # fingerprints of its normalisation steps (worker.core.normalize.normal_forms)
    meta: str | None = None  # its meta, compact JSON, when small (worker.core.messages.stored_meta)


@dataclass(frozen=True, slots=True)
class StoredVector:
    """A document's stored vector and first decision, fetched by (tenant, id) for replays and rescoring."""

    doc_id: str
    tenant: str
    text_hash: str
    vector: np.ndarray
    decision: str | None = None
    opaque: bool = False
    text: str | None = None
    created_at: str | None = None
    forms: str | None = None
    meta: str | None = None
    order: OrderKey | None = None  # where the post was read: (record time, partition << 40 | offset)


# ------------------------------------------------------------------------------------- the model


class Encoder(Protocol):
    """Texts → L2-normalised vectors: what the batch step needs from a model.

    The torch implementation batches by a token budget as well as a count, truncates over-long texts
    at ``max_tokens`` (a long post still gets a vector from its first tokens), and gives one text the
    same vector whatever else is in the batch, beyond float rounding.
    """

    @property
    def dim(self) -> int: ...

    @property
    def version(self) -> str:
        """Model version from the manifest; stamped on flags and index points."""

    @property
    def max_tokens(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 array (len(texts), dim), each row L2-normalised; empty input → (0, dim)."""

    def known(self, texts: Sequence[str]) -> list[bool]:
        """Per text, whether the model knows any of its tokens. A post made only of characters outside
        the vocabulary (emoji, an unknown script) embeds to the same "unknown" vector as every other
        such post: "👎" would be a duplicate of "👍" at 1.0. Such a post is matched by its exact
        text only."""

    def health(self) -> bool: ...


class Verifier(Protocol):
    """A pair classifier: reads a post and an earlier one together and scores whether they are the same
    post. Far better than a cosine at telling a reworded repost from a look-alike with one fact changed,
    and far dearer, so the batch step asks it only about candidates in the encoder's uncertain band."""

    @property
    def version(self) -> str:
        """The verifier's version from the manifest; stamped on flags it decided."""

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """float64 array (len(pairs),): a score per (later post, earlier post), higher is likelier a
        duplicate; calibrated to a probability by the model's ``Policy``."""


# ------------------------------------------------------------------------------------- the index


class VectorIndex(Protocol):
    """A tenant-partitioned store of document embeddings with "earlier than" search: the worker's memory.

    Every point is one document of one tenant. Its point id is deterministic (a UUID5 of tenant and id,
    ``worker.index.payload.point_id``), so an upsert replayed after a crash overwrites itself. Each
    point carries its order key; searches only return points strictly earlier than the query's own
    key (and, with a retention, of record time at least its ``after_ts``), of the query's tenant, never
    the query's own id. So a batch replayed after a crash sees exactly what it saw the first time,
    whatever the batch boundaries, and a document never matches itself or a later post. Both parts of
    an order key must lie in ``[0, 2**53)`` (Qdrant compares them through f64); implementations refuse
    keys outside it rather than compare them wrongly.

    Implementations pass one contract suite (``tests/contract/test_index_contract.py``), with the exact
    in-memory backend as the reference.
    """

    def ensure(self, dim: int, model_version: str) -> None:
        """Create the collection if new; otherwise check dimension and model version.

        Raises ``worker.core.errors.IndexMismatchError`` naming both sides on a mismatch.
        """

    def search(self, queries: Sequence[Query], k: int) -> list[list[Candidate]]:
        """One batched request: per query the top-k earlier points of its tenant, best first (stage
        ``"index"``; equal scores by order key, then id)."""

    def find_hashes(self, queries: Sequence[HashQuery]) -> list[Candidate | None]:
        """Exact fast path: per query the earliest earlier point with the same tenant and text hash
        (stage ``"exact"``, score 1.0; ties on order key broken by id)."""

    def fetch(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], StoredVector]:
        """Stored vectors by (tenant, doc_id); absent keys are left out. Replays reuse these."""

    def upsert(self, points: Sequence[IndexPoint]) -> None:
        """Idempotent: the point id comes from (tenant, doc_id)."""

    def delete(self, tenant: str | None, doc_ids: Sequence[str]) -> int:
        """Remove documents (tenant None: in every tenant, as a Kafka tombstone cannot name one);
        returns how many points were removed."""

    def expire(self, expiries: Sequence[Expiry]) -> int:
        """Remove the points each expiry names (retention, in the background: searches and lookups
        already pass them over through ``after_ts``); returns how many points were removed."""

    def count(self) -> int: ...

    def maintain(self) -> None:
        """Called once per batch: kick housekeeping (Edge: the segment optimiser) without blocking."""

    def flush(self) -> None:
        """Make every upsert so far durable before offsets are committed."""

    def close(self) -> None: ...


# --------------------------------------------------------------------------------- in and out


class RecordSource(Protocol):
    """What the loop consumes from (Kafka in production, lists in tests)."""

    joined: bool
    """The consumer group has assigned this member its partitions (an empty assignment included)."""

    def poll(self, max_records: int | None = None) -> list[Record]:
        """The next batch: up to ``max_records`` (and the source's own limit), or what came in time."""

    def commit(self, offsets: Offsets) -> None:
        """Commit ``last_offset + 1`` per partition (``worker.core.records.next_offsets``).

        Raises ``RebalancedError`` when the group moved on, ``BrokerUnavailableError`` on an outage.
        """

    def rewind(self, offsets: Offsets) -> None:
        """Seek back so the next poll starts at these offsets again (an unfinished batch's first)."""

    def group_metadata(self) -> object:
        """The consumer group snapshot a transactional producer commits offsets with."""

    def lag(self) -> int | None:
        """Records between the position and the end of the assigned partitions; None if unknown."""

    def close(self, timeout_s: float) -> None: ...


class Publisher(Protocol):
    """Where a batch's messages go. ``send`` may buffer; ``flush`` makes it durable."""

    def send(self, topic: str, key: bytes | None, value: bytes) -> None: ...

    def flush(self, timeout_s: float) -> None:
        """Block until every send so far is acknowledged; raise if that cannot happen in time."""


class BatchPublisher(Publisher, Protocol):
    """A ``Publisher`` that also frames each batch, so one loop serves both delivery modes."""

    def begin(self) -> None:
        """Before the batch's first send (exactly-once: begin the transaction)."""

    def commit(self, offsets: Offsets, source: RecordSource) -> None:
        """After ``flush`` and the index flush: at-least-once commits through the consumer,
        exactly-once sends the offsets inside the transaction and commits it."""

    def abort(self) -> None:
        """The batch failed: forget its sends (exactly-once: abort the transaction). Never raises."""

    def close(self, timeout_s: float) -> None: ...
