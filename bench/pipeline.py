"""The pipeline's own cost: how fast ``scan`` and ``worker run`` go when the encoder costs almost nothing,
how far that is from the raw Qdrant Edge batched query at the same index size, and, with the real
model, ``worker run`` against the encoder alone. Ratios are measured side by side in one run (these
machines are shared and noisy: absolute numbers drift, ratios much less).

    python -m bench.pipeline --out bench/results/pipeline.json
    python -m bench.pipeline --points 100000 --index-cache /tmp/twinflag-100k --no-model

The near-free encoder (``FreeEncoder``) gives each distinct text a random unit vector (seeded by its
CRC32): about 10 µs a text, and the hardest geometry for HNSW, so the index figures are a floor. The
index is preloaded with ``--points`` random unit vectors of the same model version, optimised (HNSW
built), and copied fresh for every measurement. ``worker run`` with the free encoder is the real
wiring (``worker.service.wiring.run_worker``: Kafka source, publisher, Edge index, the loop) started
as ``python -m bench.pipeline serve``; with the real model it is ``python -m worker run``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import argv_command, dump
from bench.report import machine
from bench.throughput import (
    RunResult,
    batch_logs,
    create_topics,
    default_model,
    encoder_rate,
    produce,
    run_rate,
)
from devkit.broker import free_port, tansu
from devkit.posts import generate, read_jsonl, write_stream
from worker.core.ports import Candidate, Expiry, HashQuery, IndexPoint, Query, StoredVector, VectorIndex
from worker.index.config import OVERSAMPLING
from worker.index.edge import EdgeIndex
from worker.service.scan import scan

ROOT = Path(__file__).resolve().parent.parent
DIM = 384
FREE_VERSION = "free-v1"
BATCH = 256
K = 10  # what the step asks the index for: top_k 5 × TIE_MARGIN 2


class FreeEncoder:
    """A near-free ``Encoder``: a random unit vector per distinct text, seeded by its CRC32."""

    dim = DIM
    version = FREE_VERSION
    max_tokens = 256

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), DIM), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row] = np.random.default_rng(zlib.crc32(text.encode("utf-8"))).standard_normal(DIM)
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out

    def known(self, texts: Sequence[str]) -> list[bool]:
        return [True] * len(texts)

    def health(self) -> bool:
        return True


class NullIndex:
    """A ``VectorIndex`` that holds nothing and answers at once: what the pipeline costs on its own."""

    def ensure(self, dim: int, model_version: str) -> None:
        pass

    def search(self, queries: Sequence[Query], k: int) -> list[list[Candidate]]:
        return [[] for _ in queries]

    def find_hashes(self, queries: Sequence[HashQuery]) -> list[Candidate | None]:
        return [None for _ in queries]

    def fetch(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], StoredVector]:
        return {}

    def upsert(self, points: Sequence[IndexPoint]) -> None:
        pass

    def delete(self, tenant: str | None, doc_ids: Sequence[str]) -> int:
        return 0

    def expire(self, expiries: Sequence[Expiry]) -> int:
        return 0

    def count(self) -> int:
        return 0

    def maintain(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def unit_vectors(n: int, rng: np.random.Generator) -> np.ndarray:
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def open_index(path: Path, scalar: bool) -> EdgeIndex:
    """The bench's Edge index: the worker's defaults, with or without scalar quantisation."""
    return EdgeIndex(path, scalar_quantization=scalar)


def preload(path: Path, points: int, scalar: bool) -> dict[str, Any]:
    """An Edge index of ``points`` random unit vectors, order keys (0, i): before every stream post."""
    if path.exists():
        index = open_index(path, scalar)
        index.ensure(DIM, FREE_VERSION)
        info = index.describe()
        index.close()
        if info["points"] == points:
            return {"points": points, "seconds": 0.0, "cached": True}
        shutil.rmtree(path)
    started = time.perf_counter()
    index = open_index(path, scalar)
    index.ensure(DIM, FREE_VERSION)
    rng = np.random.default_rng(0)
    for start in range(0, points, 5000):
        vectors = unit_vectors(min(5000, points - start), rng)
        index.upsert(
            [
                IndexPoint(f"pre-{start + i}", "default", v, f"pre-{start + i}", (0, start + i), FREE_VERSION)
                for i, v in enumerate(vectors)
            ]
        )
    index.optimize()
    index.close()
    return {"points": points, "seconds": time.perf_counter() - started, "cached": False}


def fresh_copy(source: Path | None, work: Path, name: str) -> Path:
    target = work / name
    if source is None:
        target.mkdir()
    else:
        shutil.copytree(source, target)
    return target


def raw_query_rate(
    index_path: Path, work: Path, tail: int, scalar: bool, batches: int = 6
) -> dict[str, float]:
    """Queries/s of Qdrant Edge's batched query at this index, 256 requests a call: bare (no filter,
    no payload) and as ``EdgeIndex.search`` builds them (the filter, the result payload); then again
    with ``tail`` more points not yet indexed (searched exactly), as at the end of a stream that long."""
    import qdrant_edge as qe

    index = open_index(fresh_copy(index_path, work, f"raw-index-{scalar}"), scalar)
    index.ensure(DIM, FREE_VERSION)
    rng = np.random.default_rng(1)
    shard = index._open()  # the bare binding is what this measures
    rescored = qe.QuantizationSearchParams(rescore=True, oversampling=OVERSAMPLING) if scalar else None
    params = qe.SearchParams(hnsw_ef=index.ef_search, quantization=rescored)

    def bare() -> None:
        requests = [
            qe.QueryRequest(limit=K, query=qe.Query.Nearest(v.tolist()), params=params, with_payload=False)
            for v in unit_vectors(BATCH, rng)
        ]
        shard.query_batch(qe.QueryBatchRequest(requests))

    def worker() -> None:
        queries = [
            Query(v, "default", (0, 1 << 40 | i), f"q-{i}") for i, v in enumerate(unit_vectors(BATCH, rng))
        ]
        index.search(queries, K)

    def rate() -> float:
        started = time.perf_counter()
        for _ in range(batches):
            call()
        return batches * BATCH / (time.perf_counter() - started)

    out = {}
    for name, call in (("bare", bare), ("edge_search", worker)):
        call()  # warm
        out[f"{name}_queries_per_s"] = rate()
    vectors = unit_vectors(tail, rng)
    index.upsert(
        [
            IndexPoint(f"tail-{i}", "default", v, f"tail-{i}", (1, i), FREE_VERSION)
            for i, v in enumerate(vectors)
        ]
    )
    call = worker
    out["edge_search_with_tail_queries_per_s"] = rate()
    index.close()
    return out


def free_scan_rate(posts: Path, index_path: Path | None, work: Path, name: str, scalar: bool = True) -> float:
    index: VectorIndex = (
        NullIndex() if name == "scan-null" else open_index(fresh_copy(index_path, work, name), scalar)
    )
    started = time.perf_counter()
    try:
        summary = scan(posts, work / f"{name}.jsonl", FreeEncoder(), index, 0.9, BATCH, progress=False)
    finally:
        elapsed = time.perf_counter() - started
        index.close()
    return summary.lines / elapsed


def serve() -> int:
    """``worker run`` with the near-free encoder: the real wiring from ``TWINFLAG_*`` settings."""
    from worker.core import logs
    from worker.service.commands import load_settings
    from worker.service.wiring import run_worker, stop_on_signals

    settings = load_settings()
    logs.configure(settings.log_level, settings.log_format)
    return run_worker(settings, FreeEncoder(), 0.9, stop_on_signals())


def free_run_rate(
    bootstrap: str, posts: Sequence[dict[str, Any]], index_path: Path, work: Path, timeout_s: float
) -> RunResult:
    """The posts produced first, then the free-encoder worker drains them; first → last batch line."""
    group = "free"
    create_topics(bootstrap, ["free-in", f"decisions-{group}", "duplicate-flags", "documents.dlq"])
    produce(bootstrap, "free-in", posts)
    env = {
        **os.environ,
        "TWINFLAG_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "TWINFLAG_KAFKA__GROUP_ID": group,
        "TWINFLAG_KAFKA__INPUT_TOPIC": "free-in",
        "TWINFLAG_KAFKA__DECISIONS_TOPIC": f"decisions-{group}",
        "TWINFLAG_KAFKA__MAX_POLL_INTERVAL_MS": "60000",
        "TWINFLAG_KAFKA__SESSION_TIMEOUT_MS": "10000",
        "TWINFLAG_KAFKA__CREATE_TOPICS": "false",
        "TWINFLAG_KAFKA__MAX_POLL_RECORDS": str(BATCH),
        "TWINFLAG_INDEX__BACKEND": "embedded",
        "TWINFLAG_INDEX__PATH": str(fresh_copy(index_path, work, "run-index")),
        "TWINFLAG_METRICS_PORT": str(free_port()),
        "TWINFLAG_LOG_FORMAT": "json",
    }
    log_path = work / "free-worker.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.pipeline", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and process.poll() is None:
            if sum(int(r["records"]) for r in batch_logs(log_path)) >= len(posts):
                break
            time.sleep(0.5)
        if process.poll() is not None:
            raise RuntimeError(f"free worker exited with {process.returncode}; see {log_path}")
    finally:
        process.terminate()
        process.wait(30)
    logs = batch_logs(log_path)
    stamps = [datetime.fromisoformat(str(r["timestamp"]).replace("Z", "+00:00")).timestamp() for r in logs]
    span = stamps[-1] - stamps[0] if len(stamps) > 1 else float("nan")
    after_first = sum(int(r["records"]) for r in logs[1:])
    busy_ms = sum(float(r.get("total_ms", 0.0)) for r in logs)
    keys = sorted({k for r in logs for k in r if k.endswith("_ms")})
    return RunResult(
        documents=sum(int(r["records"]) for r in logs),
        first_batch=int(logs[0]["records"]) if logs else 0,
        span_s=span,
        docs_per_s=after_first / span if span > 0 else float("nan"),
        busy_docs_per_s=sum(int(r["records"]) for r in logs) / (busy_ms / 1000) if busy_ms else float("nan"),
        batches=len(logs),
        mean_ms={k[:-3]: float(np.mean([float(r.get(k) or 0.0) for r in logs])) for k in keys},
    )


def model_section(model: Path, n: int, work: Path, timeout_s: float) -> dict[str, Any]:
    """``worker run`` with the real model against the encoder alone at the default batch, side by side."""
    from worker.model.encode import load_encoder

    posts_path, _ = write_stream(generate(n, 11), work / "model-stream")
    posts = read_jsonl(posts_path)
    texts = [str(p["text"]) for p in posts]
    encoder = load_encoder(model, "cpu")
    encoder.embed(texts[:32])
    before = encoder_rate(encoder, texts, BATCH)
    print(f"  encoder alone: {before:.1f} texts/s", flush=True)
    with tansu(log_path=work / "tansu-model.log") as bootstrap:
        run = run_rate(bootstrap, model, posts, work, timeout_s, BATCH, group="model")
    after = encoder_rate(encoder, texts, BATCH)
    mean = (before + after) / 2
    print(f"  encoder alone after: {after:.1f} texts/s; run {run.docs_per_s:.1f} posts/s", flush=True)
    return {
        "model": str(model.relative_to(ROOT)) if model.is_relative_to(ROOT) else str(model),
        "n": n,
        "batch": BATCH,
        "encoder_before_texts_per_s": before,
        "encoder_after_texts_per_s": after,
        "run": asdict(run),
        "run_vs_encoder": run.docs_per_s / mean,
    }


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"machine": machine(), "n": args.n, "points": args.points, "batch": BATCH}
    posts_path, _ = write_stream(generate(args.n, 7), work / "stream")
    posts = read_jsonl(posts_path)
    texts = [str(p["text"]) for p in posts]
    free = FreeEncoder()
    started = time.perf_counter()
    for i in range(0, len(texts), BATCH):
        free.embed(texts[i : i + BATCH])
    result["free_encoder_texts_per_s"] = len(texts) / (time.perf_counter() - started)
    cache = args.index_cache or work / "preloaded"
    scalar_cache, float_cache = cache / "scalar", cache / "float"
    result["preload"] = preload(scalar_cache, args.points, scalar=True)
    print(f"preloaded index (scalar quantisation, the default): {result['preload']}", flush=True)
    result["raw"] = raw_query_rate(scalar_cache, work, args.n, scalar=True)
    print(f"raw Qdrant Edge at {args.points}: {result['raw']}", flush=True)
    result["scan_null_posts_per_s"] = free_scan_rate(posts_path, None, work, "scan-null")
    print(
        f"scan, free encoder, no index (NullIndex): {result['scan_null_posts_per_s']:.0f} posts/s", flush=True
    )
    result["scan_empty_posts_per_s"] = free_scan_rate(posts_path, None, work, "scan-empty")
    print(f"scan, free encoder, empty index: {result['scan_empty_posts_per_s']:.0f} posts/s", flush=True)
    result["scan_posts_per_s"] = free_scan_rate(posts_path, scalar_cache, work, "scan-full")
    result["scan_vs_raw"] = result["scan_posts_per_s"] / result["raw"]["edge_search_queries_per_s"]
    print(
        f"scan, free encoder, {args.points} points: {result['scan_posts_per_s']:.0f} posts/s "
        f"({result['scan_vs_raw']:.2f} of the raw Edge search)",
        flush=True,
    )
    float_index: dict[str, Any] = {"preload": preload(float_cache, args.points, scalar=False)}
    float_index["raw"] = raw_query_rate(float_cache, work, args.n, scalar=False)
    float_index["scan_posts_per_s"] = free_scan_rate(
        posts_path, float_cache, work, "scan-float", scalar=False
    )
    result["float_index"] = float_index
    print(
        f"the same without quantisation (TWINFLAG_INDEX__QUANTIZATION=none): raw {float_index['raw']}, "
        f"scan {float_index['scan_posts_per_s']:.0f} posts/s",
        flush=True,
    )
    if not args.no_run:
        with tansu(log_path=work / "tansu.log") as bootstrap:
            run = free_run_rate(bootstrap, posts, scalar_cache, work, args.timeout_s)
        result["run"] = asdict(run)
        result["run_vs_raw"] = run.docs_per_s / result["raw"]["edge_search_queries_per_s"]
        print(
            f"worker run, free encoder, {args.points} points: {run.docs_per_s:.0f} posts/s "
            f"(busy {run.busy_docs_per_s:.0f}; {result['run_vs_raw']:.2f} of the raw Edge search); "
            f"mean ms per batch {json.dumps({k: round(v, 1) for k, v in run.mean_ms.items()})}",
            flush=True,
        )
    raw = result["raw"]["edge_search_with_tail_queries_per_s"]
    result["bound"] = (
        f"Qdrant Edge search: one batched query per post not repeated exactly; at {args.points} points "
        f"it answers {result['raw']['bare_queries_per_s']:.0f} bare and "
        f"{result['raw']['edge_search_queries_per_s']:.0f} worker queries/s ({raw:.0f} with the stream's "
        f"unindexed tail); without an index the pipeline decides "
        f"{result['scan_null_posts_per_s']:.0f} posts/s"
    )
    print(result["bound"], flush=True)
    if not args.no_model:
        print(f"real model {args.model} on {args.model_n} posts:", flush=True)
        result["model"] = model_section(args.model, args.model_n, work, args.timeout_s)
        print(f"  run / encoder alone: {result['model']['run_vs_encoder']:.3f}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        return serve()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=9058, help="posts in the free-encoder stream")
    parser.add_argument("--points", type=int, default=100_000, help="points preloaded into the index")
    parser.add_argument("--index-cache", type=Path, default=None, help="keep the preloaded index here")
    parser.add_argument("--model", type=Path, default=default_model())
    parser.add_argument("--model-n", type=int, default=3000, help="posts for the real-model comparison")
    parser.add_argument("--no-run", action="store_true", help="skip the broker run with the free encoder")
    parser.add_argument("--no-model", action="store_true", help="skip the real-model comparison")
    parser.add_argument("--timeout-s", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="twinflag-pipeline-") as tmp:
        result = measure(args, Path(tmp))
    result["command"] = argv_command("bench.pipeline", argv)
    dump(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
