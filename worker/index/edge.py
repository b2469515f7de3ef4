"""``EdgeIndex``: the ``VectorIndex`` over an embedded Qdrant Edge shard on local disk (the default).

What we measured, and what the design rests on (Qdrant Edge 0.9.0):

* Durability. The shard's write-ahead log is on by default (``EdgeConfig.wal_enabled=None``) and we
  leave it on. ``update`` returns after the operation is in the WAL (a memory-mapped file), so an
  upsert survives the *process* being SIGKILLed before ``flush``: 1,000 points upserted, no flush,
  SIGKILL, reload → 1,000 points (``tests/integration/test_index_edge.py``). With the WAL off only
  what was flushed survives (0 of 1,000; 500 of 1,000 after a flush at 500). A power cut is another
  matter (the page cache goes with it; we could not test one): treat only ``flush()`` as durable
  against that. The loop calls ``flush()`` before it commits offsets; a batch lost with the machine
  is redone from the last commit, and idempotent upserts make that harmless.
* The GIL. The binding holds the GIL for the whole of every call, so calls are serialised and the
  shard is safe to share between threads, but nothing runs beside them: the optimiser runs in a child
  process (``worker.index.edge_optimize``).
* Optimisation cost. With Qdrant's defaults on a small machine every run merges into one segment and
  rebuilds its HNSW graph from scratch: O(N log N), 10 s at 20k points, 19 s at 50k here. With
  ``segments=8`` (our default) a run indexes the new points as their own segment: 4-5 s per 10k.
  The optimiser runs only when asked; there is no background service.

The directory layout and its crash safety are ``worker.index.edge_store``'s; how the reads are spelled
(filters, searches, hash probes) is ``worker.index.edge_query``'s.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from worker.core.errors import IndexMismatchError
from worker.core.logs import get_logger
from worker.core.ports import Candidate, Expiry, HashQuery, IndexPoint, Query, StoredVector
from worker.core.records import OrderKey
from worker.index import edge_optimize
from worker.index.config import DEFAULT_OPTIMIZE_EVERY, OVERSAMPLING, QUANTILE
from worker.index.edge_optimize import OptimizeJob
from worker.index.edge_query import DIALECT, last_request, probe_requests, search_requests, search_results
from worker.index.edge_store import FORMAT, OPTIMIZE_LOG, SIDECAR, IndexDirectory, open_shard
from worker.index.payload import (
    MAX_KEY,
    STORED_FIELDS,
    HashProbe,
    as_vector,
    check_model,
    expired_filter,
    find_earliest,
    payload,
    point_id,
    point_ids,
    stored_by_key,
)


class EdgeIndex:
    """``VectorIndex`` over an embedded Qdrant Edge shard on local disk: the default backend.

    One process per path (a lock file enforces it). Use from one thread, the loop's; ``maintain()``
    keeps the HNSW index fresh out of process (see ``worker.index.edge_optimize`` for why not in a
    thread). ``optimize()`` is the blocking, in-process variant for bulk loads and benchmarks.
    """

    def __init__(
        self,
        path: Path,
        *,
        hnsw_m: int = 16,
        hnsw_ef_construct: int = 100,
        ef_search: int = 128,
        optimize_every: int = DEFAULT_OPTIMIZE_EVERY,
        segments: int = 8,
        full_scan_threshold_kb: int = 10_000,
        indexing_threshold_kb: int | None = None,
        max_segment_kb: int | None = None,
        optimize_threads: int = 0,
        scalar_quantization: bool = True,
        quantization_oversampling: float = OVERSAMPLING,
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
        ``scalar_quantization``: the optimiser keeps an int8 copy of each indexed segment's vectors in
        RAM; the graph walk compares those, and the best ``oversampling`` x k are rescored with the
        float32 vectors. Measured at 100k random unit vectors: 2.7x the queries/s at the same ef, the
        same recall (``bench.pipeline``). It applies to segments optimised after it is set.
        """
        if optimize_every < 1:
            raise ValueError("optimize_every must be >= 1")
        self._path = Path(path)
        self._dir = IndexDirectory(self._path)
        self._hnsw_m = hnsw_m
        self._hnsw_ef_construct = hnsw_ef_construct
        self._ef_search = ef_search
        self._optimize_every = optimize_every
        self._segments = segments
        self._full_scan_threshold_kb = full_scan_threshold_kb
        self._indexing_threshold_kb = indexing_threshold_kb
        self._max_segment_kb = max_segment_kb
        self._optimize_threads = optimize_threads
        self._scalar = scalar_quantization
        self._oversampling = quantization_oversampling
        self._shard: qe.EdgeShard | None = None
        self._meta: dict[str, Any] = {}
        self._since_optimize = 0
        self._job: OptimizeJob | None = None
        self._journal: list[qe.UpdateOperation] = []
        self._latest: OrderKey = (MAX_KEY, MAX_KEY)  # no point is later than this (known after ensure)
        self._log = get_logger("index", backend="edge")

    # -- lifecycle ----------------------------------------------------------------------------------

    def ensure(self, dim: int, model_version: str) -> None:
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        if self._shard is not None:
            check_model(str(self._path), self._meta["dim"], self._meta["model_version"], dim, model_version)
            return
        self._path.mkdir(parents=True, exist_ok=True)
        self._dir.lock()
        try:
            meta = self._dir.read_meta()
            if meta is None:
                if self._dir.has_shards():
                    raise IndexMismatchError(
                        f"{self._path} holds shard directories but no {SIDECAR}: refusing to guess"
                        " their dimension and model version"
                    )
                meta = {"format": FORMAT, "dim": dim, "model_version": model_version, "shard": "shard-0"}
                self._dir.write_meta(meta)  # first: a shard directory never exists without it
            check_model(str(self._path), int(meta["dim"]), str(meta["model_version"]), dim, model_version)
            self._meta = meta
            self._dir.remove_leftovers(meta["shard"])
            self._shard = open_shard(self._path / meta["shard"], self._config(), create=True)
        except BaseException:
            self._dir.unlock()
            raise
        info = self._shard.info()
        self._since_optimize = info.points_count - info.indexed_vectors_count
        self._latest = self._latest_stored()

    def _latest_stored(self) -> OrderKey:
        """The largest order key stored (``(0, 0)`` if none): a stream read in order searches past it,
        and then needs no order-key condition. Deletions leave it where it was (an upper bound)."""
        shard = self._open()

        def last(field: str, where: qe.Filter | None) -> Mapping[str, Any] | None:
            rows = shard.query_batch(qe.QueryBatchRequest([last_request(field, where)]))[0]
            return rows[0].payload if rows else None

        top = last("ts", None)
        if top is None:
            return (0, 0)
        ts = int(top["ts"])
        row = last("pos", qe.Filter(must=[DIALECT.equals("ts", ts)]))
        return (ts, int(row["pos"]) if row is not None else MAX_KEY)

    def flush(self) -> None:
        self._open().flush()

    def close(self) -> None:
        """Stop a running optimisation (its copy is discarded), flush, close, release the lock."""
        if self._job is not None:
            job, self._job, self._journal = self._job, None, []
            edge_optimize.stop_job(job, self._dir)
        if self._shard is not None:
            self._shard.flush()
            self._shard.close()
            self._shard = None
        self._dir.unlock()

    # -- reads --------------------------------------------------------------------------------------

    def search(self, queries: Sequence[Query], k: int) -> list[list[Candidate]]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not queries:
            return []
        shard, dim = self._open(), int(self._meta["dim"])
        params = qe.SearchParams(
            hnsw_ef=max(self._ef_search, k),
            quantization=(
                qe.QuantizationSearchParams(rescore=True, oversampling=self._oversampling)
                if self._scalar
                else None
            ),
        )
        hits = shard.query_batch(qe.QueryBatchRequest(search_requests(queries, k, dim, self._latest, params)))
        return search_results(queries, hits, k)

    def find_hashes(self, queries: Sequence[HashQuery]) -> list[Candidate | None]:
        return find_earliest(queries, self._run_probes)

    def _run_probes(self, probes: list[HashProbe]) -> list[list[Mapping[str, Any] | None]]:
        rows = self._open().query_batch(qe.QueryBatchRequest(probe_requests(probes, self._latest)))
        return [[p.payload for p in row] for row in rows]

    def fetch(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], StoredVector]:
        if not keys:
            return {}
        ids: list[str | int | uuid.UUID] = [*point_ids(keys)]
        records = self._open().retrieve(ids, STORED_FIELDS, True)
        return stored_by_key((rec.payload, rec.vector) for rec in records)

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
        batch = [qe.Point(point_id(p.tenant, p.doc_id), as_vector(p.vector, dim), payload(p)) for p in points]
        self._latest = max(self._latest, *(p.order for p in points))
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

    def expire(self, expiries: Sequence[Expiry]) -> int:
        shard, removed = self._open(), 0
        for expiry in expiries:
            where = expired_filter(DIALECT, expiry)
            found = shard.count(qe.CountRequest(exact=True, filter=where))
            if found:
                self._apply(qe.UpdateOperation.delete_points_by_filter(where))
                removed += found
        return removed

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
        self._open().flush()
        self._job = edge_optimize.start_job(self._dir, self._meta["shard"])
        self._journal = []
        self._log.info(
            "index.optimize.started",
            shard=self._job.name,
            new_points=self._since_optimize,
            copy_ms=round(self._job.copy_s * 1e3),
        )
        self._since_optimize = 0

    def _finish_job(self, job: OptimizeJob) -> None:
        """Swap in the optimised copy after replaying the journal into it; drop it if it fails."""
        self._job = None
        journal, self._journal = self._journal, []
        target = self._path / job.name
        child_s = time.perf_counter() - job.started
        if job.proc.returncode != 0:
            self._log.error(
                "index.optimize.failed",
                shard=job.name,
                returncode=job.proc.returncode,
                log=str(self._path / OPTIMIZE_LOG),
            )
            shutil.rmtree(target, ignore_errors=True)
            return
        started = time.perf_counter()
        fresh: qe.EdgeShard | None = None
        try:
            fresh = open_shard(target, self._config(), create=False)
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
        self._dir.write_meta({**self._meta, "shard": job.name})  # the commit point of the swap
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
            quantization_config=(
                qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=QUANTILE, always_ram=True)
                if self._scalar
                else None
            ),
        )
