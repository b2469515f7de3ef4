"""Vectors → nearest earlier neighbours; upserts and deletions. The index is the worker's memory.

CONTRACT (owned by the index helper; the protocol below is fixed, implementations fill this module):

Every point is one document of one tenant. Its point id is deterministic, ``point_id(tenant, doc_id)``
(a UUID5), so an upsert replayed after a crash overwrites itself. Each point carries an *order key*
``(ts, pos)``: the Kafka record timestamp in ms and ``partition << 40 | offset`` (for ``scan``: ts=0,
pos=line number; for a bulk-loaded corpus: (0, line) — always earlier than any stream document).
"Earlier" means a lexicographically smaller order key. Searches only return points that are strictly
earlier than the query's own key, so a batch replayed after a crash sees exactly what it saw the first
time, whatever the batch boundaries are, and a document never matches itself or a later post.

BACKENDS. Both build every filter the same way: ``tenant == T`` AND ``(ts < TS OR (ts == TS AND pos < POS))``
AND NOT ``has_id(own point id)``. The range conditions go through f64 in Qdrant, so both parts of an
order key must lie in ``[0, 2**53)`` (they do: ms timestamps, partition < 2**13); ``upsert`` and the
searches refuse keys outside it rather than compare them wrongly.

``EdgeIndex`` (Qdrant Edge 0.9.0, embedded). What we measured, and what the design rests on:

* Durability. The shard's write-ahead log is on by default (``EdgeConfig.wal_enabled=None``) and we
  leave it on. ``update`` returns after the operation is in the WAL (a memory-mapped file), so an
  upsert survives the *process* being SIGKILLed before ``flush``: 1,000 points upserted, no flush,
  SIGKILL, reload → 1,000 points (``tests/integration/test_index_edge.py``). With the WAL off only
  what was flushed survives (0 of 1,000; 500 of 1,000 after a flush at 500). A power cut is another
  matter (the page cache goes with it; we could not test one): treat only ``flush()`` as durable
  against that. The loop calls ``flush()`` before it commits offsets; a batch lost with the machine
  is redone from the last commit, and idempotent upserts make that harmless.
* The GIL. The 0.9.0 binding holds the GIL for the whole of every call: during ``optimize()`` a
  Python thread spinning beside it advanced ~700 times a second instead of ~7.8 million, for the
  40 s the optimisation of 50k×384 points took on two cores. A background *thread* would therefore
  freeze the stream just as surely as calling ``optimize()`` inline. Calls are serialised by the GIL,
  so the shard is safe to share between threads, but nothing runs beside them.
* Optimisation cost. With Qdrant's defaults on a small machine every run merges into one segment and
  rebuilds its HNSW graph from scratch: O(N log N), 10 s at 20k points, 19 s at 50k here. With
  ``segments=8`` (our default) a run indexes the new points as their own segment: 4-5 s per 10k.
  The optimiser runs only when asked (``optimize()``); there is no background service.

So ``maintain()`` optimises in a *child process*, on a copy: when ``optimize_every`` points have
arrived it flushes the live shard, copies its directory (WAL included: a copy without its WAL
restarts the operation numbering and then silently ignores later updates and deletes of existing
points — checked), and starts ``python -c <optimise that path>`` at low priority; the child dies with
the worker (PR_SET_PDEATHSIG). Meanwhile the stream reads and writes the live shard as usual and every
write is also kept in a journal. When the child is done, the next ``maintain()`` loads the optimised
copy, replays the journal into it, flushes it, points ``twinflag-index.json`` at it (atomic rename:
the commit point) and deletes the old directory. A crash at any point leaves the sidecar naming a
complete shard; other ``shard-*`` directories are leftovers and are removed at the next ``ensure``.
The stream pauses only for the copy (disk bandwidth, O(size)) and the swap (load + replay); the
bench (``bench/index_scaling.py``) reports both next to the in-process optimise time.

Directory layout: ``PATH/twinflag-index.json`` (dimension, model version, live shard name),
``PATH/shard-N/`` (the live shard), ``PATH/shard-N+1/`` (only while an optimisation runs),
``PATH/optimize.log`` (the last child's output), ``PATH/.lock`` (one process per index).

``QdrantIndex`` (a Qdrant server through qdrant-client). Upserts and deletes use ``wait=True``: when they
return the server has applied them and written them to its WAL, so the next batch sees them and
``flush()`` has nothing left to do. The model version lives in the collection's ``metadata`` (Qdrant
>= 1.16): it travels with the collection (snapshots, migrations) without a reserved point that every
search would have to filter out, or an alias that could be repointed under us. Outages surface as
``worker.core.errors.IndexUnavailableError`` so the loop backs off.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import qdrant_edge as qe

from worker.core.errors import IndexUnavailableError
from worker.core.logs import get_logger

if TYPE_CHECKING:
    from qdrant_client import QdrantClient, models

_NAMESPACE = uuid.UUID("9a1d3c52-6f0e-4d8b-8e57-0c5a3f1b2d77")

OrderKey = tuple[int, int]


def point_id(tenant: str, doc_id: str) -> str:
    """Deterministic point id: replays and re-deliveries overwrite the same point."""
    return str(uuid.uuid5(_NAMESPACE, f"{tenant}\x1f{doc_id}"))


@dataclass(frozen=True, slots=True)
class IndexPoint:
    """What the index stores per document (payload: id, tenant, text_hash, created_at, model, ts, pos,
    decision).

    ``decision`` is the document's first decision (JSON, written by ``worker.core.step``): a replay
    republishes it unchanged, whatever the batch boundaries or the documents read since.
    """

    doc_id: str
    tenant: str
    vector: np.ndarray  # float32 (dim,), L2-normalised
    text_hash: str
    order: OrderKey
    model: str
    created_at: str | None = None
    decision: str | None = None


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
    decision: str | None = None


def _stored(key: tuple[str, str], payload: dict[str, Any], vector: np.ndarray) -> StoredVector:
    decision = payload.get("decision")  # absent from points written before it was stored
    return StoredVector(
        key[1], key[0], str(payload["text_hash"]), vector, None if decision is None else str(decision)
    )


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


# ---------------------------------------------------------------------------------------------------
# Shared by both backends: payload layout, order-key bounds, ranking, and the earliest-hash choice.

_MAX_KEY = 2**53  # f64 range filters compare integers exactly below this
_RESULT_FIELDS = ["id", "ts", "pos"]
_HASH_PROBE = 8  # first find_hashes stage: this many earliest points, to see every tie on ts
_SIDECAR = "twinflag-index.json"
_FORMAT = 1
_MODEL_KEY = "twinflag_model_version"


def _check_key(order: OrderKey) -> None:
    ts, pos = order
    if not (0 <= ts < _MAX_KEY and 0 <= pos < _MAX_KEY):
        raise ValueError(f"order key {order} outside [0, 2**53): range filters would compare it wrongly")


def _payload(point: IndexPoint) -> dict[str, Any]:
    _check_key(point.order)
    return {
        "id": point.doc_id,
        "tenant": point.tenant,
        "text_hash": point.text_hash,
        "created_at": point.created_at,
        "model": point.model,
        "ts": point.order[0],
        "pos": point.order[1],
        "decision": point.decision,
    }


def _neighbour(payload: Mapping[str, Any] | None, score: float) -> Neighbour:
    if payload is None:
        raise RuntimeError("index returned a point without its payload")
    return Neighbour(
        doc_id=str(payload["id"]), score=float(score), order=(int(payload["ts"]), int(payload["pos"]))
    )


def _ranked(neighbours: list[Neighbour]) -> list[Neighbour]:
    """Best first; equal scores by order key then id, so a replay returns the same list."""
    return sorted(neighbours, key=lambda n: (-n.score, n.order, n.doc_id))


def _as_vector(vector: np.ndarray, dim: int) -> list[float]:
    if vector.shape != (dim,):
        raise ValueError(f"vector of shape {vector.shape}, the index holds dim {dim}")
    values: list[float] = np.asarray(vector, dtype=np.float32).tolist()  # measured faster than ndarray
    return values


def _earliest(rows: Sequence[Mapping[str, Any] | None], probe: int) -> tuple[Neighbour | None, int | None]:
    """Pick the smallest (ts, pos, id) from rows ordered by ts ascending.

    Returns ``(neighbour, None)``, or ``(None, ts)`` when all ``probe`` rows share that ts: more points
    may tie on it (a bulk-loaded corpus has ts=0 everywhere), so the caller asks again ordered by pos.
    """
    present = [r for r in rows if r is not None]
    if not present:
        return None, None
    first_ts = min(int(r["ts"]) for r in present)
    ties = [r for r in present if int(r["ts"]) == first_ts]
    if len(present) >= probe and len(ties) == len(present):
        return None, first_ts
    best = min(ties, key=lambda r: (int(r["pos"]), str(r["id"])))
    return _neighbour(best, 1.0), None


def _lowest_pos(rows: Sequence[Mapping[str, Any] | None]) -> Neighbour | None:
    present = [r for r in rows if r is not None]
    if not present:
        return None
    return _neighbour(min(present, key=lambda r: (int(r["pos"]), str(r["id"]))), 1.0)


def _mismatch(where: str, stored_dim: int, stored_model: str, dim: int, model_version: str) -> None:
    if stored_dim != dim or stored_model != model_version:
        raise IndexMismatchError(
            f"{where} holds dim {stored_dim} vectors of model {stored_model!r}, but the model is dim {dim},"
            f" version {model_version!r}: refusing to mix vector spaces (use a new index path or collection)"
        )


# ---------------------------------------------------------------------------------------------------
# Qdrant Edge


def _edge_tenant_earlier(tenant: str, before: OrderKey) -> list[qe.Filter | qe.FieldCondition]:
    ts, pos = before
    earlier = qe.Filter(
        should=[
            qe.FieldCondition("ts", range=qe.RangeFloat(lt=float(ts))),
            qe.Filter(
                must=[
                    qe.FieldCondition("ts", match=qe.MatchValue(ts)),
                    qe.FieldCondition("pos", range=qe.RangeFloat(lt=float(pos))),
                ]
            ),
        ]
    )
    return [qe.FieldCondition("tenant", match=qe.MatchValue(tenant)), earlier]


def _edge_filter(tenant: str, before: OrderKey, doc_id: str, *extra: qe.FieldCondition) -> qe.Filter:
    _check_key(before)
    must: list[qe.Filter | qe.FieldCondition] = [*_edge_tenant_earlier(tenant, before), *extra]
    return qe.Filter(must=list(must), must_not=[qe.HasIdCondition({point_id(tenant, doc_id)})])


# The optimiser child: a separate interpreter, so the worker's GIL stays free. It dies with the worker
# (PR_SET_PDEATHSIG, Linux) and runs at low priority so the stream keeps the CPU it needs.
_OPTIMIZE_CHILD = """
import ctypes, os, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, 9)
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[2]):
    sys.exit(3)
os.nice(10)
import qdrant_edge
shard = qdrant_edge.EdgeShard.load(sys.argv[1])
try:
    print("optimized" if shard.optimize() else "already optimal", flush=True)
    shard.flush()
finally:
    shard.close()
"""


def _copy_sparse(src: str, dst: str) -> str:
    """Copy only a file's data extents (SEEK_DATA/SEEK_HOLE, copy_file_range): about half the bytes.

    Edge preallocates 32 MiB WAL and storage files that are mostly holes; a plain copy writes the
    zeros out. Falls back to ``shutil.copy2`` where the kernel or file system says no.
    """
    try:
        with Path(src).open("rb") as fin, Path(dst).open("wb") as fout:
            size = os.fstat(fin.fileno()).st_size
            pos = 0
            while pos < size:
                try:
                    start = os.lseek(fin.fileno(), pos, os.SEEK_DATA)
                except OSError:  # ENXIO: only a hole is left
                    break
                end = os.lseek(fin.fileno(), start, os.SEEK_HOLE)
                while start < end:
                    copied = os.copy_file_range(fin.fileno(), fout.fileno(), end - start, start, start)
                    if copied == 0:
                        raise OSError(f"copy_file_range made no progress on {src}")
                    start += copied
                pos = end
            fout.truncate(size)
        shutil.copystat(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


@dataclass(slots=True)
class _OptimizeJob:
    name: str
    proc: subprocess.Popen[bytes]
    started: float
    copy_s: float


class EdgeIndex:
    """``VectorIndex`` over an embedded Qdrant Edge shard on local disk: the default backend.

    One process per path (a lock file enforces it). Use from one thread, the loop's; ``maintain()``
    keeps the HNSW index fresh out of process (see the module docstring for why not in a thread).
    ``optimize()`` is the blocking, in-process variant for bulk loads and benchmarks.
    """

    def __init__(
        self,
        path: Path,
        *,
        hnsw_m: int = 16,
        hnsw_ef_construct: int = 100,
        ef_search: int = 128,
        optimize_every: int = 20_000,
        segments: int = 8,
        full_scan_threshold_kb: int = 10_000,
        indexing_threshold_kb: int | None = None,
        max_segment_kb: int | None = None,
        optimize_threads: int = 0,
    ) -> None:
        """Nothing touches the disk until ``ensure``.

        ``optimize_every``: new points between two background optimisations; each costs a copy of the
        shard, so larger values trade a longer unindexed tail (searched exactly, cheap below ~50k) for
        fewer copies. ``full_scan_threshold_kb`` / ``indexing_threshold_kb`` / ``max_segment_kb``: Qdrant's
        own knobs (None: Qdrant's default). ``optimize_threads``: HNSW build threads, 0 = all cores.
        ``segments``: Qdrant's ``default_segment_number``. Its default on a small machine (about one per
        core) makes every optimisation merge all points and rebuild the graph; 8 lets each run index the
        new points as a segment of their own (measured: 4-5 s per 10k new points at 50k, against 8-19 s
        for a full rebuild) and merge small segments only when there are more than 8.
        """
        if optimize_every < 1:
            raise ValueError("optimize_every must be >= 1")
        self._path = Path(path)
        self._hnsw_m = hnsw_m
        self._hnsw_ef_construct = hnsw_ef_construct
        self._ef_search = ef_search
        self._optimize_every = optimize_every
        self._segments = segments
        self._full_scan_threshold_kb = full_scan_threshold_kb
        self._indexing_threshold_kb = indexing_threshold_kb
        self._max_segment_kb = max_segment_kb
        self._optimize_threads = optimize_threads
        self._shard: qe.EdgeShard | None = None
        self._meta: dict[str, Any] = {}
        self._lock_fd: int | None = None
        self._since_optimize = 0
        self._job: _OptimizeJob | None = None
        self._journal: list[qe.UpdateOperation] = []
        self._log = get_logger("index", backend="edge")

    # -- lifecycle ----------------------------------------------------------------------------------

    def ensure(self, dim: int, model_version: str) -> None:
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        if self._shard is not None:
            _mismatch(str(self._path), self._meta["dim"], self._meta["model_version"], dim, model_version)
            return
        self._path.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        try:
            meta = self._read_sidecar()
            if meta is None:
                if any(self._path.glob("shard-*")):
                    raise IndexMismatchError(
                        f"{self._path} holds shard directories but no {_SIDECAR}: refusing to guess"
                        " their dimension and model version"
                    )
                meta = {"format": _FORMAT, "dim": dim, "model_version": model_version, "shard": "shard-0"}
                self._write_sidecar(meta)  # first: a shard directory never exists without it
            _mismatch(str(self._path), int(meta["dim"]), str(meta["model_version"]), dim, model_version)
            self._meta = meta
            self._remove_leftovers()
            self._shard = self._open_shard(self._path / meta["shard"], create=True)
        except BaseException:
            self._release_lock()
            raise
        info = self._shard.info()
        self._since_optimize = info.points_count - info.indexed_vectors_count

    def flush(self) -> None:
        self._open().flush()

    def close(self) -> None:
        """Stop a running optimisation (its copy is discarded), flush, close, release the lock."""
        if self._job is not None:
            self._stop_job(self._job)
        if self._shard is not None:
            self._shard.flush()
            self._shard.close()
            self._shard = None
        self._release_lock()

    # -- reads --------------------------------------------------------------------------------------

    def search(self, queries: Sequence[Query], k: int) -> list[list[Neighbour]]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not queries:
            return []
        shard, dim = self._open(), int(self._meta["dim"])
        params = qe.SearchParams(hnsw_ef=max(self._ef_search, k))
        requests = [
            qe.QueryRequest(
                limit=k,
                query=qe.Query.Nearest(_as_vector(q.vector, dim)),
                filter=_edge_filter(q.tenant, q.before, q.doc_id),
                params=params,
                with_payload=_RESULT_FIELDS,
                with_vector=False,
            )
            for q in queries
        ]
        hits = shard.query_batch(qe.QueryBatchRequest(requests))
        return [_ranked([_neighbour(p.payload, p.score) for p in row]) for row in hits]

    def find_hashes(self, queries: Sequence[HashQuery]) -> list[Neighbour | None]:
        if not queries:
            return []
        shard = self._open()

        def ordered(q: HashQuery, key: str, ts: int | None) -> qe.QueryRequest:
            extra = [qe.FieldCondition("text_hash", match=qe.MatchValue(q.text_hash))]
            if ts is not None:
                extra.append(qe.FieldCondition("ts", match=qe.MatchValue(ts)))
            return qe.QueryRequest(
                limit=_HASH_PROBE,
                query=qe.OrderBy(key, qe.Direction.Asc),
                filter=_edge_filter(q.tenant, q.before, q.doc_id, *extra),
                with_payload=_RESULT_FIELDS,
                with_vector=False,
            )

        first = shard.query_batch(qe.QueryBatchRequest([ordered(q, "ts", None) for q in queries]))
        picked = [_earliest([p.payload for p in row], _HASH_PROBE) for row in first]
        tied = [(i, ts) for i, (_, ts) in enumerate(picked) if ts is not None]
        out = [n for n, _ in picked]
        if tied:
            second = shard.query_batch(
                qe.QueryBatchRequest([ordered(queries[i], "pos", ts) for i, ts in tied])
            )
            for (i, _), row in zip(tied, second, strict=True):
                out[i] = _lowest_pos([p.payload for p in row])
        return out

    def fetch(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], StoredVector]:
        if not keys:
            return {}
        ids: list[str | int | uuid.UUID] = list(dict.fromkeys(point_id(t, d) for t, d in keys))
        records = self._open().retrieve(ids, ["id", "tenant", "text_hash", "decision"], True)
        out: dict[tuple[str, str], StoredVector] = {}
        for rec in records:
            p = rec.payload or {}
            vec = np.asarray(rec.vector, dtype=np.float32)
            key = (str(p["tenant"]), str(p["id"]))
            out[key] = _stored(key, p, vec)
        return out

    def count(self) -> int:
        return self._open().count(qe.CountRequest(exact=True))

    def describe(self) -> dict[str, Any]:
        """Points, HNSW-indexed points, segments and whether an optimisation runs: for metrics, benches."""
        info = self._open().info()
        return {
            "points": info.points_count,
            "indexed_vectors": info.indexed_vectors_count,
            "segments": info.segments_count,
            "optimizing": self._job is not None,
            "shard": self._meta["shard"],
        }

    # -- writes -------------------------------------------------------------------------------------

    def upsert(self, points: Sequence[IndexPoint]) -> None:
        if not points:
            return
        self._open()
        dim = int(self._meta["dim"])
        batch = [
            qe.Point(point_id(p.tenant, p.doc_id), _as_vector(p.vector, dim), _payload(p)) for p in points
        ]
        self._apply(qe.UpdateOperation.upsert_points(batch))
        self._since_optimize += len(batch)

    def delete(self, tenant: str | None, doc_ids: Sequence[str]) -> int:
        shard = self._open()
        ids = list(dict.fromkeys(doc_ids))
        if not ids:
            return 0
        if tenant is not None:
            pids: list[str | int | uuid.UUID] = [point_id(tenant, d) for d in ids]
            found = len(shard.retrieve(pids, False, False))
            if found:
                self._apply(qe.UpdateOperation.delete_points(pids))
            return found
        by_id = qe.Filter(must=[qe.FieldCondition("id", match=qe.MatchAny(ids))])
        found = shard.count(qe.CountRequest(exact=True, filter=by_id))
        if found:
            self._apply(qe.UpdateOperation.delete_points_by_filter(by_id))
        return found

    # -- optimisation -------------------------------------------------------------------------------

    @property
    def optimizing(self) -> bool:
        return self._job is not None

    @property
    def ef_search(self) -> int:
        """HNSW beam width at query time: recall against latency, adjustable while running."""
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        if value < 1:
            raise ValueError("ef_search must be >= 1")
        self._ef_search = value

    def maintain(self) -> None:
        """Start a background optimisation when due; swap in a finished one. Never waits for the child."""
        if self._shard is None:
            return
        if self._job is not None:
            if self._job.proc.poll() is not None:
                self._finish_job(self._job)
            return
        if self._since_optimize >= self._optimize_every:
            self._start_job()

    def optimize(self) -> bool:
        """Optimise in process and wait (bulk loads, benchmarks): the GIL is held throughout."""
        if self._job is not None:
            self._job.proc.wait()
            self._finish_job(self._job)
        changed = self._open().optimize()
        self._since_optimize = 0
        return changed

    def _start_job(self) -> None:
        shard = self._open()
        shard.flush()
        name = f"shard-{self._next_generation()}"
        target = self._path / name
        started = time.perf_counter()
        # WAL included, see the module docstring; holes kept, Edge preallocates its files sparsely.
        shutil.copytree(self._path / self._meta["shard"], target, copy_function=_copy_sparse)
        copy_s = time.perf_counter() - started
        with (self._path / "optimize.log").open("wb") as log_file:
            proc = subprocess.Popen(  # noqa: S603 -- fixed argv: this interpreter, our script, our path
                [sys.executable, "-c", _OPTIMIZE_CHILD, str(target), str(os.getpid())],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        self._job = _OptimizeJob(name=name, proc=proc, started=time.perf_counter(), copy_s=copy_s)
        self._journal = []
        self._log.info(
            "index.optimize.started", shard=name, new_points=self._since_optimize, copy_ms=round(copy_s * 1e3)
        )
        self._since_optimize = 0

    def _finish_job(self, job: _OptimizeJob) -> None:
        self._job = None
        journal, self._journal = self._journal, []
        target = self._path / job.name
        child_s = time.perf_counter() - job.started
        if job.proc.returncode != 0:
            self._log.error(
                "index.optimize.failed",
                shard=job.name,
                returncode=job.proc.returncode,
                log=str(self._path / "optimize.log"),
            )
            shutil.rmtree(target, ignore_errors=True)
            return
        started = time.perf_counter()
        fresh: qe.EdgeShard | None = None
        try:
            fresh = self._open_shard(target, create=False)
            for op in journal:
                fresh.update(op)
            fresh.flush()
        except Exception:
            # The live shard holds everything: drop the copy, keep streaming, try again later.
            self._log.exception("index.optimize.swap_failed", shard=job.name)
            if fresh is not None:
                fresh.close()
            shutil.rmtree(target, ignore_errors=True)
            return
        old, old_dir = self._shard, self._path / self._meta["shard"]
        self._write_sidecar({**self._meta, "shard": job.name})  # the commit point of the swap
        self._meta = {**self._meta, "shard": job.name}
        self._shard = fresh
        if old is not None:
            old.close()
        shutil.rmtree(old_dir, ignore_errors=True)
        self._log.info(
            "index.optimize.finished",
            shard=job.name,
            child_ms=round(child_s * 1e3),
            replayed_ops=len(journal),
            swap_ms=round((time.perf_counter() - started) * 1e3),
        )

    def _stop_job(self, job: _OptimizeJob) -> None:
        self._job, self._journal = None, []
        if job.proc.poll() is None:
            job.proc.terminate()
            try:
                job.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                job.proc.kill()
                job.proc.wait()
        shutil.rmtree(self._path / job.name, ignore_errors=True)

    def _apply(self, op: qe.UpdateOperation) -> None:
        self._open().update(op)
        if self._job is not None:
            self._journal.append(op)  # replayed into the optimised copy before it goes live

    # -- files --------------------------------------------------------------------------------------

    def _open(self) -> qe.EdgeShard:
        if self._shard is None:
            raise RuntimeError("EdgeIndex used before ensure() or after close()")
        return self._shard

    def _config(self) -> qe.EdgeConfig:
        optimizers = qe.EdgeOptimizersConfig(
            default_segment_number=self._segments,
            indexing_threshold=self._indexing_threshold_kb,
            max_segment_size=self._max_segment_kb,
        )
        return qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=int(self._meta["dim"]), distance=qe.Distance.Cosine),
            hnsw_config=qe.HnswIndexConfig(
                m=self._hnsw_m,
                ef_construct=self._hnsw_ef_construct,
                full_scan_threshold=self._full_scan_threshold_kb,
                max_indexing_threads=self._optimize_threads,
            ),
            optimizers=optimizers,
        )

    def _open_shard(self, where: Path, *, create: bool) -> qe.EdgeShard:
        """Load (checking the vector config) or create, then add any payload index it lacks."""
        if (where / "edge_config.json").exists():
            shard = qe.EdgeShard.load(str(where), self._config())
        elif create:
            shutil.rmtree(where, ignore_errors=True)  # a create cut short; the sidecar came first
            shard = qe.EdgeShard.create(str(where), self._config())
        else:
            raise RuntimeError(f"{where} is not a Qdrant Edge shard")
        present = shard.info().payload_schema
        # Only the tenant gets payload-aware HNSW links: the other fields filter exact lookups or
        # cut off by order, and extra graphs for them would only lengthen every optimisation.
        wanted: dict[str, qe.KeywordIndexParams | qe.IntegerIndexParams] = {
            "tenant": qe.KeywordIndexParams(is_tenant=True),
            "text_hash": qe.KeywordIndexParams(enable_hnsw=False),
            "id": qe.KeywordIndexParams(enable_hnsw=False),
            "ts": qe.IntegerIndexParams(lookup=True, range=True, enable_hnsw=False),
            "pos": qe.IntegerIndexParams(lookup=True, range=True, enable_hnsw=False),
        }
        for field, schema in wanted.items():
            if field not in present:
                shard.update(qe.UpdateOperation.create_field_index(field, schema))
        return shard

    def _read_sidecar(self) -> dict[str, Any] | None:
        path = self._path / _SIDECAR
        if not path.exists():
            return None
        meta: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        if meta.get("format") != _FORMAT:
            raise IndexMismatchError(f"{path} has format {meta.get('format')!r}, this code reads {_FORMAT}")
        return meta

    def _write_sidecar(self, meta: dict[str, Any]) -> None:
        path = self._path / _SIDECAR
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        dir_fd = os.open(self._path, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _remove_leftovers(self) -> None:
        """Shard directories other than the live one are copies from an optimisation cut short."""
        for stale in self._path.glob("shard-*"):
            if stale.name != self._meta["shard"]:
                self._log.warning("index.leftover_removed", shard=stale.name)
                shutil.rmtree(stale, ignore_errors=True)

    def _next_generation(self) -> int:
        names = [p.name for p in self._path.glob("shard-*")] + [self._meta["shard"]]
        return 1 + max(int(n.removeprefix("shard-")) for n in names if n.removeprefix("shard-").isdigit())

    def _acquire_lock(self) -> None:
        fd = os.open(self._path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(f"index {self._path} is open in another process") from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None


# ---------------------------------------------------------------------------------------------------
# Qdrant server (qdrant-client). The client is imported lazily: ``worker.core.step`` imports this module
# for the protocol and must not pay for (or depend on) qdrant_client.


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
        scalar_quantization: bool = False,
        quantization_oversampling: float = 2.0,
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
            stored = (info.config.metadata or {}).get(_MODEL_KEY)
            if stored is None:
                if info.points_count:
                    raise IndexMismatchError(
                        f"{where} holds {info.points_count} points but no {_MODEL_KEY} in its metadata:"
                        f" refusing to assume they are model {model_version!r}"
                    )
                self._client.update_collection(self._collection, metadata={_MODEL_KEY: model_version})
                stored = model_version
            _mismatch(where, vectors.size, str(stored), dim, model_version)
            self._ensure_payload_indexes(set(info.payload_schema))
        self._dim = dim

    def _create(self, dim: int, model_version: str) -> None:
        from qdrant_client import models

        quantization = (
            models.ScalarQuantization(
                scalar=models.ScalarQuantizationConfig(
                    type=models.ScalarType.INT8, quantile=0.99, always_ram=True
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
                metadata={_MODEL_KEY: model_version},
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

        wanted: dict[str, models.KeywordIndexParams | models.IntegerIndexParams] = {
            "tenant": models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True),
            "text_hash": models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD),
            "id": models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD),
            "ts": models.IntegerIndexParams(type=models.IntegerIndexType.INTEGER, lookup=True, range=True),
            "pos": models.IntegerIndexParams(type=models.IntegerIndexType.INTEGER, lookup=True, range=True),
        }
        for field, schema in wanted.items():
            if field not in present:
                self._client.create_payload_index(self._collection, field, field_schema=schema, wait=True)

    def _filter(self, tenant: str, before: OrderKey, doc_id: str, **equal: str | int) -> models.Filter:
        from qdrant_client import models

        _check_key(before)
        ts, pos = before
        earlier = models.Filter(
            should=[
                models.FieldCondition(key="ts", range=models.Range(lt=ts)),
                models.Filter(
                    must=[
                        models.FieldCondition(key="ts", match=models.MatchValue(value=ts)),
                        models.FieldCondition(key="pos", range=models.Range(lt=pos)),
                    ]
                ),
            ]
        )
        must: list[models.Condition] = [
            models.FieldCondition(key="tenant", match=models.MatchValue(value=tenant)),
            earlier,
        ]
        must += [models.FieldCondition(key=k, match=models.MatchValue(value=v)) for k, v in equal.items()]
        return models.Filter(must=must, must_not=[models.HasIdCondition(has_id=[point_id(tenant, doc_id)])])

    def _dimension(self) -> int:
        if self._dim is None:
            raise RuntimeError("QdrantIndex used before ensure()")
        return self._dim

    def search(self, queries: Sequence[Query], k: int) -> list[list[Neighbour]]:
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
                query=_as_vector(q.vector, dim),
                filter=self._filter(q.tenant, q.before, q.doc_id),
                limit=k,
                params=params,
                with_payload=_RESULT_FIELDS,
                with_vector=False,
            )
            for q in queries
        ]
        with _unavailable(self._collection):
            responses = self._client.query_batch_points(self._collection, requests)
        return [_ranked([_neighbour(p.payload, p.score) for p in r.points]) for r in responses]

    def find_hashes(self, queries: Sequence[HashQuery]) -> list[Neighbour | None]:
        from qdrant_client import models

        if not queries:
            return []

        def ordered(q: HashQuery, key: str, ts: int | None) -> models.QueryRequest:
            equal: dict[str, str | int] = (
                {"text_hash": q.text_hash} if ts is None else {"text_hash": q.text_hash, "ts": ts}
            )
            return models.QueryRequest(
                query=models.OrderByQuery(order_by=models.OrderBy(key=key, direction=models.Direction.ASC)),
                filter=self._filter(q.tenant, q.before, q.doc_id, **equal),
                limit=_HASH_PROBE,
                with_payload=_RESULT_FIELDS,
                with_vector=False,
            )

        with _unavailable(self._collection):
            first = self._client.query_batch_points(
                self._collection, [ordered(q, "ts", None) for q in queries]
            )
            picked = [_earliest([p.payload for p in r.points], _HASH_PROBE) for r in first]
            tied = [(i, ts) for i, (_, ts) in enumerate(picked) if ts is not None]
            out = [n for n, _ in picked]
            if tied:
                second = self._client.query_batch_points(
                    self._collection, [ordered(queries[i], "pos", ts) for i, ts in tied]
                )
                for (i, _), r in zip(tied, second, strict=True):
                    out[i] = _lowest_pos([p.payload for p in r.points])
        return out

    def fetch(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], StoredVector]:
        if not keys:
            return {}
        ids = list(dict.fromkeys(point_id(t, d) for t, d in keys))
        with _unavailable(self._collection):
            records = self._client.retrieve(
                self._collection,
                ids,
                with_payload=["id", "tenant", "text_hash", "decision"],
                with_vectors=True,
            )
        out: dict[tuple[str, str], StoredVector] = {}
        for rec in records:
            p = rec.payload or {}
            if not isinstance(rec.vector, list):
                raise RuntimeError(f"point {rec.id} has no single dense vector")
            key = (str(p["tenant"]), str(p["id"]))
            vec = np.asarray(rec.vector, dtype=np.float32)
            out[key] = _stored(key, p, vec)
        return out

    def upsert(self, points: Sequence[IndexPoint]) -> None:
        from qdrant_client import models

        if not points:
            return
        dim = self._dimension()
        batch = [
            models.PointStruct(
                id=point_id(p.tenant, p.doc_id), vector=_as_vector(p.vector, dim), payload=_payload(p)
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

    def count(self) -> int:
        with _unavailable(self._collection):
            return self._client.count(self._collection, exact=True).count

    def maintain(self) -> None:
        """Nothing to do: the server runs its own optimiser."""

    def flush(self) -> None:
        """Nothing to do: every write waited for the server's WAL (``wait=True``)."""

    def close(self) -> None:
        """The client belongs to the caller, who closes it."""
