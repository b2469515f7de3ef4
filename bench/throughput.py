"""Throughput: documents/s of the encoder alone, ``scan``, ``worker run`` through a real broker, a naive
one-message-at-a-time consumer and MinHash LSH, all on the same generated stream in the same run.

Every figure is reported next to the encoder-alone rate measured in the same run (these machines are
shared and noisy: absolute numbers drift, ratios much less).

    python -m bench.throughput --n 2000 --out bench/results/throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from devkit.baselines import MinHashLSHStream
from devkit.broker import free_port, tansu
from devkit.posts import generate, read_jsonl, write_stream
from worker.core.normalize import text_hash
from worker.core.ports import IndexPoint, Query
from worker.index.edge import EdgeIndex
from worker.model.encode import TorchEncoder, load_encoder
from worker.service.scan import scan

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("parse", "delete", "exact", "embed", "search", "verify", "decide", "upsert", "messages", "publish")


ZERO_SHOT = ROOT / "models" / "zero-shot"  # ``python -m bench --zero-shot DIR`` points this elsewhere


def default_model() -> Path:
    """models/default when the trainer has shipped one, else the zero-shot export."""
    default = ROOT / "models" / "default"
    return default if (default / "manifest.json").is_file() else ZERO_SHOT


def manifest(model: Path) -> dict[str, Any]:
    return dict(json.loads((model / "manifest.json").read_text()))


def make_stream(n: int, seed: int, out_dir: Path) -> tuple[Path, Path]:
    """A generated repost stream of ``n`` posts (devkit.posts) in ``out_dir``: (posts, truth)."""
    return write_stream(generate(n, seed), out_dir)


def encoder_rate(encoder: TorchEncoder, texts: Sequence[str], batch: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(texts), batch):
        encoder.embed(texts[i : i + batch])
    return len(texts) / (time.perf_counter() - started)


def scan_rate(encoder: TorchEncoder, posts: Path, batch: int, threshold: float, work: Path) -> float:
    """``worker.service.scan.scan`` end to end (file in, decisions file out) with a fresh EdgeIndex."""
    index = EdgeIndex(Path(tempfile.mkdtemp(dir=work, prefix="scan-index-")))
    started = time.perf_counter()
    try:
        summary = scan(
            posts, work / f"scan-{batch}.jsonl", encoder, index, threshold, batch_size=batch, progress=False
        )
    finally:
        elapsed = time.perf_counter() - started
        index.close()
    return summary.lines / elapsed


def exact_share(posts: Sequence[dict[str, Any]]) -> float:
    """Share of posts whose normalised text repeats an earlier one of the same tenant: the exact fast path
    answers those without embedding, which the encoder-alone baseline does not get to skip."""
    from worker.core.normalize import normalize

    seen: set[tuple[str, str]] = set()
    hits = 0
    for post in posts:
        key = (str(post.get("tenant", "default")), text_hash(normalize(str(post["text"]))))
        hits += key in seen
        seen.add(key)
    return hits / len(posts) if posts else 0.0


def minhash_rate(posts: Sequence[dict[str, Any]]) -> float:
    lsh = MinHashLSHStream(threshold=0.5)
    started = time.perf_counter()
    for post in posts:
        lsh.add(str(post["tenant"]), str(post["id"]), str(post["text"]))
    return len(posts) / (time.perf_counter() - started)


# ------------------------------------------------------------------------------------- the broker


def create_topics(bootstrap: str, names: Sequence[str]) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(t, 1, 1) for t in names])
    admin.close()


def produce(bootstrap: str, topic: str, posts: Sequence[dict[str, Any]]) -> None:
    """Everything at once (the backlog the worker then drains)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    for post in posts:
        producer.send(
            topic, key=str(post["id"]).encode(), value=json.dumps(post).encode(), timestamp_ms=_stamp(post)
        )
    producer.flush(60)
    producer.close(5)


def _stamp(post: dict[str, Any]) -> int:
    created = datetime.fromisoformat(str(post["created_at"]).replace("Z", "+00:00"))
    return int(created.timestamp() * 1000)


@contextmanager
def worker_process(
    bootstrap: str,
    model: Path,
    work: Path,
    group: str,
    topic: str = "documents",
    extra_env: dict[str, str] | None = None,
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``python -m worker run`` as its own process (JSON logs to a file), SIGTERM on exit."""
    log_path = work / f"worker-{group}.log"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TWINFLAG_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "TWINFLAG_KAFKA__GROUP_ID": group,
        "TWINFLAG_KAFKA__INPUT_TOPIC": topic,
        "TWINFLAG_KAFKA__DECISIONS_TOPIC": f"decisions-{group}",
        "TWINFLAG_KAFKA__MAX_POLL_INTERVAL_MS": "60000",
        "TWINFLAG_KAFKA__SESSION_TIMEOUT_MS": "10000",
        "TWINFLAG_KAFKA__CREATE_TOPICS": "false",
        "TWINFLAG_INDEX__BACKEND": "embedded",
        "TWINFLAG_INDEX__PATH": str(work / f"index-{group}"),
        "TWINFLAG_MODEL__PATH": str(model),
        "TWINFLAG_MODEL__DEVICE": "cpu",
        "TWINFLAG_METRICS_PORT": str(free_port()),
        "TWINFLAG_LOG_FORMAT": "json",
        **(extra_env or {}),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker", "run"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
        )
        try:
            yield process, log_path
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def batch_logs(log_path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("event") == "batch":
            rows.append(row)
    return rows


@dataclass
class RunResult:
    documents: int
    first_batch: int
    span_s: float
    docs_per_s: float  # (documents - first batch) / (first decision → last decision)
    busy_docs_per_s: float  # documents / Σ batch total_ms from the worker's own log
    batches: int
    mean_ms: dict[str, float] = field(default_factory=dict)
    verified: int = 0  # documents the verifier judged (the batch lines' ``verified``)


def run_rate(
    bootstrap: str,
    model: Path,
    posts: Sequence[dict[str, Any]],
    work: Path,
    timeout_s: float,
    batch: int = 256,
    *,
    group: str = "tp",
    produced: bool = False,
    extra_env: dict[str, str] | None = None,
) -> RunResult:
    """Produce every post first (unless ``produced``: an earlier run's group did), then start the worker
    and time first decision → last decision."""
    from kafka import KafkaConsumer

    topics = [f"decisions-{group}"] if produced else ["documents", f"decisions-{group}"]
    create_topics(bootstrap, [*topics, "duplicate-flags", "documents.dlq"] if not produced else topics)
    if not produced:
        produce(bootstrap, "documents", posts)
    consumer = KafkaConsumer(
        f"decisions-{group}",
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    seen: dict[str, float] = {}
    batch_env = {"TWINFLAG_KAFKA__MAX_POLL_RECORDS": str(batch), **(extra_env or {})}
    with worker_process(bootstrap, model, work, group, extra_env=batch_env) as (process, log_path):
        deadline = time.monotonic() + timeout_s
        while len(seen) < len(posts) and time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"worker exited with {process.returncode}; see {log_path}")
            for records in consumer.poll(timeout_ms=200).values():
                now = time.perf_counter()
                for record in records:
                    seen.setdefault(str(json.loads(record.value)["id"]), now)
    consumer.close()
    logs = batch_logs(log_path)
    # Each batch's log line is written after its decisions are flushed and its offsets committed: the
    # first line marks the first batch's decisions out, the last line the last ones.
    stamps = [datetime.fromisoformat(str(r["timestamp"]).replace("Z", "+00:00")).timestamp() for r in logs]
    first_batch = int(logs[0]["records"]) if logs else 0
    span = stamps[-1] - stamps[0] if len(stamps) > 1 else float("nan")
    after_first = sum(int(r["records"]) for r in logs[1:])
    busy_ms = sum(float(row.get("total_ms", 0.0)) for row in logs)
    keys = [f"{s}_ms" for s in STAGES] + ["flush_ms", "commit_ms", "total_ms"]
    mean_ms = {k[:-3]: float(np.mean([float(r.get(k, 0.0)) for r in logs])) for k in keys} if logs else {}
    return RunResult(
        documents=len(seen),
        first_batch=first_batch,
        span_s=span,
        docs_per_s=after_first / span if span > 0 else float("nan"),
        busy_docs_per_s=sum(int(r.get("records", 0)) for r in logs) / (busy_ms / 1000)
        if busy_ms
        else float("nan"),
        batches=len(logs),
        mean_ms=mean_ms,
        verified=sum(int(r.get("verified", 0)) for r in logs),
    )


def naive_rate(
    bootstrap: str, encoder: TorchEncoder, posts: Sequence[dict[str, Any]], work: Path, threshold: float
) -> tuple[float, dict[str, float]]:
    """poll 1 → embed 1 → search 1 → produce 1 → flush → commit, the same model and index kind."""
    from kafka import KafkaConsumer, KafkaProducer

    topic = "naive-in"
    create_topics(bootstrap, [topic, "naive-out"])
    produce(bootstrap, topic, posts)
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id="naive",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=1,
        max_poll_interval_ms=60000,
        session_timeout_ms=10000,
    )
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    index = EdgeIndex(Path(tempfile.mkdtemp(dir=work, prefix="naive-index-")))
    index.ensure(encoder.dim, encoder.version)
    done = 0
    started: float | None = None
    spent = dict.fromkeys(("poll", "embed", "search", "produce", "upsert", "flush", "commit"), 0.0)
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        if started is not None:
            spent[stage] += now - clock
        clock = now

    try:
        while done < len(posts):
            polled = consumer.poll(timeout_ms=1000, max_records=1)
            lap("poll")
            for records in polled.values():
                for record in records:
                    started = started or time.perf_counter()
                    post = json.loads(record.value)
                    vector = encoder.embed([post["text"]])[0]
                    lap("embed")
                    order = (record.timestamp, record.offset)
                    hits = index.search([Query(vector, post["tenant"], order, post["id"])], 5)[0]
                    lap("search")
                    best = hits[0] if hits else None
                    flagged = best is not None and best.score >= threshold
                    out = {"id": post["id"], "duplicate_of": best.doc_id if flagged and best else None}
                    producer.send("naive-out", key=post["id"].encode(), value=json.dumps(out).encode())
                    lap("produce")
                    index.upsert(
                        [
                            IndexPoint(
                                post["id"],
                                post["tenant"],
                                vector,
                                text_hash(post["text"]),
                                order,
                                encoder.version,
                            )
                        ]
                    )
                    lap("upsert")
                    producer.flush(30)
                    lap("flush")
                    consumer.commit()
                    lap("commit")
                    done += 1
    finally:
        consumer.close()
        producer.close(5)
        index.close()
    assert started is not None
    per_msg_ms = {k: 1000 * v / done for k, v in spent.items()}
    return done / (time.perf_counter() - started), per_msg_ms


# ------------------------------------------------------------------------------------------- main


def measure(
    n: int,
    seed: int,
    batches: Sequence[int],
    naive_n: int,
    model: Path,
    work: Path,
    with_run: bool = True,
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    posts_path, _ = make_stream(n, seed, work / "stream")
    posts = read_jsonl(posts_path)
    texts = [str(p["text"]) for p in posts]
    encoder = load_encoder(model, "cpu")
    threshold = float(manifest(model)["thresholds"]["decision"])
    encoder.embed(texts[:32])  # warm-up (allocator, kernels), not timed
    sweep = []
    for batch in batches:
        enc = encoder_rate(encoder, texts, batch)
        sc = scan_rate(encoder, posts_path, batch, threshold, work)
        sweep.append(
            {"batch": batch, "encoder_docs_per_s": enc, "scan_docs_per_s": sc, "scan_vs_encoder": sc / enc}
        )
        print(
            f"batch {batch:>4}: encoder {enc:7.1f} docs/s  scan {sc:7.1f} docs/s  "
            f"scan/encoder {sc / enc:.3f}",
            flush=True,
        )
    default_batch = 256 if 256 in batches else batches[-1]
    encoder_ref = next(r["encoder_docs_per_s"] for r in sweep if r["batch"] == default_batch)
    exact_hits = exact_share(posts)
    minhash = minhash_rate(posts)
    result: dict[str, Any] = {
        "n": n,
        "seed": seed,
        "model": str(model.relative_to(ROOT)) if model.is_relative_to(ROOT) else str(model),
        "model_version": encoder.version,
        "threshold": threshold,
        "sweep": sweep,
        "default_batch": default_batch,
        "exact_share": exact_hits,
        "encoder_ref_docs_per_s": encoder_ref,
        "minhash_docs_per_s": minhash,
        "minhash_vs_encoder": minhash / encoder_ref,
    }
    print(f"minhash LSH {minhash:.1f} docs/s ({minhash / encoder_ref:.2f}x encoder)", flush=True)
    if with_run:
        with tansu(log_path=work / "tansu.log") as bootstrap:
            run = run_rate(bootstrap, model, posts, work, timeout_s, default_batch)
            encoder_after = encoder_rate(encoder, texts, default_batch)
            encoder_one = encoder_rate(encoder, texts[:naive_n], 1)  # the naive loop's own baseline
            naive, naive_ms = naive_rate(bootstrap, encoder, posts[:naive_n], work, threshold)
        encoder_mean = (encoder_ref + encoder_after) / 2
        result.update(
            {
                "run": asdict(run),
                "encoder_after_docs_per_s": encoder_after,
                "encoder_mean_docs_per_s": encoder_mean,
                "run_vs_encoder": run.docs_per_s / encoder_mean,
                "pipeline_cost": 1 - run.docs_per_s / encoder_mean,
                "naive_n": naive_n,
                "naive_docs_per_s": naive,
                "naive_ms_per_message": naive_ms,
                "encoder_one_docs_per_s": encoder_one,
                "naive_vs_encoder_one": naive / encoder_one,
                "naive_vs_encoder": naive / encoder_mean,
                "run_vs_naive": run.docs_per_s / naive,
            }
        )
        print(
            f"run {run.docs_per_s:.1f} docs/s = {run.docs_per_s / encoder_mean:.3f} of encoder "
            f"(pipeline cost {100 * (1 - run.docs_per_s / encoder_mean):.1f}%), "
            f"busy-time {run.busy_docs_per_s:.1f}; "
            f"naive {naive:.1f} docs/s ({naive / encoder_mean:.3f} of encoder)",
            flush=True,
        )
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="posts in the generated stream")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--naive-n", type=int, default=300, help="messages through the naive loop")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--no-run", action="store_true", help="skip the broker parts (run, naive)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="twinflag-tp-") as tmp:
        result = measure(
            args.n,
            args.seed,
            args.batches,
            args.naive_n,
            args.model or default_model(),
            Path(tmp),
            with_run=not args.no_run,
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
