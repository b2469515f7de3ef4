"""How the embedded index (``EdgeIndex``) scales: upserts/s, batched queries/s, memory, recall, optimise cost.

One index grows through a ladder of sizes (random unit vectors, dim 384, 4 tenants). At each size:
upsert the increment; query before optimising (the newest points sit in a plain segment, searched
exactly); optimise the way the worker does (``maintain()``: copy, child process, swap) while queries
keep running; query again. Recall@10 is HNSW against exact numpy search within the query's tenant,
on random queries (the hard case: no structure) — ``dup@1`` is the easy, real one: a noisy copy of
a stored point must come back first. Before the ladder, one probe shows why the optimiser cannot
simply run in a thread: the binding holds the GIL, so the stream stalls for the whole optimisation.

    python -m bench.index_scaling --quick --out bench/results/index_scaling.json
    python -m bench.index_scaling --max-points 1000000 --out bench/results/index_scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import structlog

from worker.core.ports import IndexPoint, Query
from worker.index.edge import EdgeIndex

DIM = 384
TENANTS = 4
LADDER = [10_000, 50_000, 100_000, 200_000, 500_000, 1_000_000]
QUICK = [10_000, 50_000]
UPSERT_BATCH = 1_000
QUERY_BATCH = 64
K = 10
MODEL = "bench"


@dataclass
class Row:
    points: int
    upsert_per_s: float
    before_qps: float
    before_recall: float
    optimize_child_s: float  # what the stream would stall for if the optimiser ran in process
    start_stall_ms: float  # maintain() that starts: flush + sparse copy + spawn
    swap_stall_ms: float  # maintain() that finishes: load the copy, replay the journal, swap
    swap_load_ms: float  # of which: load the optimised copy, replay, flush it
    during_median_batch_ms: float
    during_max_batch_ms: float
    after_qps: float
    after_recall: float
    after_recall_ef512: float
    after_dup_at_1: float
    segments: int
    indexed: int
    rss_mb: float
    disk_mb: float


def rss_mb() -> float:
    """Resident memory from /proc (psutil is not installed); includes mapped shard pages touched."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def disk_mb(path: Path) -> float:
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file()) / 2**20


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class Data:
    """``random``: uniform on the sphere, no structure at all: the worst case for any graph index.

    ``lowrank``: a 32-dim latent through a fixed random 32×384 map, plus noise of a tenth of its
    norm. Closer to real sentence embeddings, whose neighbourhoods are what HNSW walks along.

    ``text``: real sentence embeddings (``text_embeddings``); embedding is what limits its size here.
    """

    def __init__(self, kind: str, rng: np.random.Generator, pool: np.ndarray | None = None) -> None:
        self.kind = kind
        self.rng = rng
        self.mix = (rng.standard_normal((32, DIM)) / np.sqrt(32)).astype(np.float32)
        self.pool, self.taken = pool, 0

    def rows(self, n: int) -> np.ndarray:
        if self.pool is not None:  # ``text``: the next unused embeddings of real texts, never reused
            if self.taken + n > len(self.pool):
                raise ValueError(f"{len(self.pool)} text embeddings are too few for this ladder")
            self.taken += n
            return self.pool[self.taken - n : self.taken]
        if self.kind == "random":
            return unit_rows(self.rng, n)
        v = self.rng.standard_normal((n, 32)).astype(np.float32) @ self.mix
        v += 0.1 * np.sqrt(DIM) * unit_rows(self.rng, n)
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def text_embeddings(n: int, seed: int) -> np.ndarray:
    """``text``: embeddings of ``n`` distinct real texts, by models/default (or zero-shot): every text of
    the pair files under ../shared/data, shuffled, topped up with generated posts (``devkit.posts``)."""
    from bench.pair_quality import DATA
    from bench.throughput import default_model
    from devkit.posts import generate
    from trainer.data import read_pairs
    from trainer.recipes import pair_files
    from worker.model.encode import TorchEncoder

    texts: dict[str, None] = {}
    for path in pair_files(DATA) if DATA.is_dir() else []:
        for pair in read_pairs(path)[0]:
            texts[pair.text_a] = None
            texts[pair.text_b] = None
    pool = list(texts)
    random.Random(seed).shuffle(pool)
    if len(pool) < n:
        pool += [str(post["text"]) for post in generate(n - len(pool), seed).posts]
    encoder = TorchEncoder(default_model(), device="auto")
    if encoder.dim != DIM:
        raise ValueError(f"{default_model()} embeds to {encoder.dim} dimensions, the ladder uses {DIM}")
    started = time.perf_counter()
    vectors = np.concatenate([encoder.embed(pool[i : min(n, i + 4096)]) for i in range(0, n, 4096)])
    print(f"embedded {n:,} texts in {time.perf_counter() - started:.0f} s", flush=True)
    return vectors.astype(np.float32)


def order(i: int) -> tuple[int, int]:
    return (1_700_000_000_000 + i // 100, i)


def batches(vectors: np.ndarray, lo: int, hi: int) -> Iterator[list[IndexPoint]]:
    for start in range(lo, hi, UPSERT_BATCH):
        yield [
            IndexPoint(f"d{i}", f"t{i % TENANTS}", vectors[i], f"h{i}", order(i), MODEL)
            for i in range(start, min(hi, start + UPSERT_BATCH))
        ]


def queries(vectors: np.ndarray, n: int) -> list[Query]:
    before = order(n + 1)
    return [Query(vectors[i], f"t{i % TENANTS}", before, f"q{i}") for i in range(len(vectors))]


def query_rate(index: EdgeIndex, qs: list[Query]) -> tuple[float, list[float]]:
    """Queries/s over batched calls, and each batch's latency in ms."""
    lat = []
    started = time.perf_counter()
    for i in range(0, len(qs), QUERY_BATCH):
        t = time.perf_counter()
        index.search(qs[i : i + QUERY_BATCH], K)
        lat.append((time.perf_counter() - t) * 1e3)
    return len(qs) / (time.perf_counter() - started), lat


def recall_at_k(index: EdgeIndex, stored: np.ndarray, qs: list[Query]) -> float:
    got = index.search(qs, K)
    tenant_of = np.arange(len(stored)) % TENANTS
    hits = 0
    for q, row in zip(qs, got, strict=True):
        members = np.flatnonzero(tenant_of == int(q.tenant[1:]))
        scores = stored[members] @ q.vector
        truth = {f"d{members[j]}" for j in np.argpartition(-scores, K)[:K]}
        hits += len(truth & {n.doc_id for n in row})
    return hits / (K * len(qs))


def dup_at_1(index: EdgeIndex, stored: np.ndarray, rng: np.random.Generator, n: int) -> float:
    picks = rng.choice(len(stored), size=n, replace=False)
    noisy = unit_rows(rng, n) * 0.35 + stored[picks]
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    before = order(len(stored) + 1)
    qs = [Query(noisy[j], f"t{i % TENANTS}", before, "q") for j, i in enumerate(picks)]
    got = index.search(qs, 1)
    return float(np.mean([bool(row) and row[0].doc_id == f"d{i}" for row, i in zip(got, picks, strict=True)]))


def gil_probe(root: Path, n: int, rng: np.random.Generator) -> dict[str, float]:
    """Optimise in a background thread and time the main thread's query batches meanwhile."""
    index = EdgeIndex(root / "gil-probe")
    index.ensure(DIM, MODEL)
    vectors = unit_rows(rng, n)
    for batch in batches(vectors, 0, n):
        index.upsert(batch)
    qs = queries(unit_rows(rng, QUERY_BATCH), n)
    _, idle = query_rate(index, qs)
    done = threading.Event()
    took: list[float] = []

    def optimise() -> None:
        t = time.perf_counter()
        index.optimize()
        took.append(time.perf_counter() - t)
        done.set()

    worst, served = 0.0, 0
    thread = threading.Thread(target=optimise)
    last = time.perf_counter()
    thread.start()
    while True:  # the stream: a query batch every 50 ms. Gaps are timed end to end, so a stall
        time.sleep(0.05)  # anywhere, even between two iterations, counts.
        index.search(qs, K)
        now = time.perf_counter()
        worst, last, served = max(worst, now - last - 0.05), now, served + 1
        if done.is_set():
            break
    thread.join()
    index.close()
    shutil.rmtree(root / "gil-probe")
    return {
        "points": n,
        "optimize_s": took[0],
        "idle_batch_ms": float(np.median(idle)),
        "worst_gap_s": worst,
        "batches_served": served,
    }


def measure(
    index: EdgeIndex, stored: np.ndarray, qs: list[Query], recall_qs: list[Query]
) -> tuple[float, float]:
    qps, _ = query_rate(index, qs)
    return qps, recall_at_k(index, stored, recall_qs)


def run(
    sizes: list[int],
    n_queries: int,
    n_recall: int,
    root: Path,
    seed: int,
    kind: str,
    on_step: Callable[[dict[str, object]], None] = lambda _: None,
) -> dict[str, object]:
    """The ladder; ``on_step`` gets the results so far after each size (a long run that is stopped
    keeps the steps it finished)."""
    rng = np.random.default_rng(seed)
    pool = text_embeddings(sizes[-1] + n_queries * len(sizes), seed) if kind == "text" else None
    data = Data(kind, rng, pool)
    probe = gil_probe(root, min(sizes[0], 20_000), rng)
    print(
        f"GIL probe: optimise of {probe['points']:,} points in a thread took {probe['optimize_s']:.1f} s;"
        f" a stream of query batches ({probe['idle_batch_ms']:.0f} ms each, one per 50 ms) got"
        f" {probe['batches_served']} through meanwhile; longest gap {probe['worst_gap_s']:.1f} s",
        flush=True,
    )
    vectors = data.rows(sizes[-1])
    index = EdgeIndex(root / "index", optimize_every=1)
    index.ensure(DIM, MODEL)
    rows: list[Row] = []
    have = 0
    for n in sizes:
        started = time.perf_counter()
        for batch in batches(vectors, have, n):
            index.upsert(batch)
        index.flush()
        upsert_rate = (n - have) / (time.perf_counter() - started)
        have = n
        stored = vectors[:n]
        qs = queries(data.rows(n_queries), n)
        recall_qs = qs[:n_recall]
        before_qps, before_recall = measure(index, stored, qs, recall_qs)

        # The index logs its own breakdown; capture it (and keep it off the table) with structlog's
        # test helper rather than parse log lines.
        with structlog.testing.capture_logs() as events:
            t = time.perf_counter()
            index.maintain()  # flush, copy, start the child
            start_stall = time.perf_counter() - t
            child_started = time.perf_counter()
            during: list[float] = []
            child_s = swap_stall = float("nan")
            while index.optimizing:  # the stream goes on: a query batch and a maintain() every 200 ms
                time.sleep(0.2)
                _, lat = query_rate(index, qs[:QUERY_BATCH])
                during += lat
                t = time.perf_counter()
                index.maintain()
                if not index.optimizing:  # this call found the child done and swapped its copy in
                    child_s, swap_stall = t - child_started, time.perf_counter() - t
        finished = [e for e in events if e["event"] == "index.optimize.finished"]
        swap_load = float(finished[0]["swap_ms"]) if finished else float("nan")

        after_qps, after_recall = measure(index, stored, qs, recall_qs)
        index.ef_search = 512
        after_recall_ef512 = recall_at_k(index, stored, recall_qs)
        index.ef_search = 128
        state = index.describe()
        row = Row(
            points=n,
            upsert_per_s=upsert_rate,
            before_qps=before_qps,
            before_recall=before_recall,
            optimize_child_s=child_s,
            start_stall_ms=start_stall * 1e3,
            swap_stall_ms=swap_stall * 1e3,
            swap_load_ms=swap_load,
            during_median_batch_ms=float(np.median(during)) if during else float("nan"),
            during_max_batch_ms=max(during) if during else float("nan"),
            after_qps=after_qps,
            after_recall=after_recall,
            after_recall_ef512=after_recall_ef512,
            after_dup_at_1=dup_at_1(index, stored, rng, min(200, n)),
            segments=state["segments"],
            indexed=state["indexed_vectors"],
            rss_mb=rss_mb(),
            disk_mb=disk_mb(root / "index"),
        )
        rows.append(row)
        print_row(row, header=len(rows) == 1)
        on_step(results(rows, kind, n_queries, n_recall, probe))
    index.close()
    return results(rows, kind, n_queries, n_recall, probe)


def results(
    rows: list[Row], kind: str, n_queries: int, n_recall: int, probe: dict[str, float]
) -> dict[str, object]:
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        },
        "qdrant_edge_py": version("qdrant-edge-py"),
        "data": kind,
        "dim": DIM,
        "tenants": TENANTS,
        "k": K,
        "query_batch": QUERY_BATCH,
        "queries": n_queries,
        "recall_queries": n_recall,
        "settings": {"hnsw_m": 16, "hnsw_ef_construct": 100, "ef_search": 128, "segments": 8},
        "gil_probe": probe,
        "rows": [asdict(r) for r in rows],
    }


COLUMNS = [
    ("points", "{:>9,}"),
    ("upsert/s", "{:>8,.0f}"),
    ("q/s pre", "{:>7,.0f}"),
    ("R@10 pre", "{:>8.3f}"),
    ("opt s", "{:>6.1f}"),
    ("copy ms", "{:>7,.0f}"),
    ("swap ms", "{:>7,.0f}"),
    ("load ms", "{:>7,.0f}"),
    ("p50 ms opt", "{:>6,.0f}"),
    ("max ms opt", "{:>6,.0f}"),
    ("q/s post", "{:>8,.0f}"),
    ("R@10 post", "{:>9.3f}"),
    ("R@10 ef512", "{:>9.3f}"),
    ("dup@1", "{:>5.2f}"),
    ("segs", "{:>4}"),
    ("RSS MB", "{:>6,.0f}"),
    ("disk MB", "{:>7,.0f}"),
]


def print_row(row: Row, *, header: bool) -> None:
    values = [
        row.points,
        row.upsert_per_s,
        row.before_qps,
        row.before_recall,
        row.optimize_child_s,
        row.start_stall_ms,
        row.swap_stall_ms,
        row.swap_load_ms,
        row.during_median_batch_ms,
        row.during_max_batch_ms,
        row.after_qps,
        row.after_recall,
        row.after_recall_ef512,
        row.after_dup_at_1,
        row.segments,
        row.rss_mb,
        row.disk_mb,
    ]
    cells = [fmt.format(v) for (_, fmt), v in zip(COLUMNS, values, strict=True)]
    widths = [max(len(name), len(cell)) for (name, _), cell in zip(COLUMNS, cells, strict=True)]
    if header:
        print(" | ".join(name.rjust(w) for (name, _), w in zip(COLUMNS, widths, strict=True)))
    print(" | ".join(cell.rjust(w) for cell, w in zip(cells, widths, strict=True)), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-points", type=int, default=1_000_000, help="largest size of the ladder")
    parser.add_argument("--quick", action="store_true", help="10k and 50k points only")
    parser.add_argument("--queries", type=int, default=512, help="queries per throughput measurement")
    parser.add_argument("--recall-queries", type=int, default=200, help="queries checked against numpy")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to build the index (default: a temp dir)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", choices=["random", "lowrank", "text"], default="random", help="see Data")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else [n for n in LADDER if n <= args.max_points] or [args.max_points]
    root = Path(tempfile.mkdtemp(prefix="twinflag-bench-", dir=args.dir))

    command = "python -m bench.index_scaling " + " ".join(argv if argv is not None else sys.argv[1:])

    def write(result: dict[str, object]) -> None:
        result["command"] = command
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")

    try:
        write(run(sizes, args.queries, args.recall_queries, root, args.seed, args.data, on_step=write))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.out:
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
