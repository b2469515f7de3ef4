"""Latency: produce → decision, p50/p95/p99, at a steady offered load below saturation, through Tansu and
``python -m worker run`` (its own process, the embedded index, decisions topic on).

The worker is warmed up first (model loaded, group joined, a few posts decided); then posts are offered
at a fixed rate, each timed from the producer's ``send`` to the arrival of its decision at a consumer
on the same machine (one clock).

    python -m bench.latency --rate 10 --n 400 --out bench/results/latency.json --plot bench/latency_cdf.png
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.throughput import (
    _stamp,
    create_topics,
    default_model,
    make_stream,
    worker_process,
)
from devkit.broker import tansu
from devkit.posts import read_jsonl

WARMUP = 20


def _collect(bootstrap: str, topic: str, arrived: dict[str, float], stop: threading.Event) -> None:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    try:
        while not stop.is_set():
            for records in consumer.poll(timeout_ms=50).values():
                now = time.time()
                for record in records:
                    arrived.setdefault(str(json.loads(record.value)["id"]), now)
    finally:
        consumer.close()


def offer(
    bootstrap: str, model: Path, posts: Sequence[dict[str, Any]], rate: float, work: Path, timeout_s: float
) -> dict[str, Any]:
    from kafka import KafkaProducer

    group = "lat"
    topic, decisions = "documents-lat", f"decisions-{group}"
    create_topics(bootstrap, [topic, decisions, "duplicate-flags", "documents.dlq"])
    arrived: dict[str, float] = {}
    stop = threading.Event()
    collector = threading.Thread(target=_collect, args=(bootstrap, decisions, arrived, stop), daemon=True)
    collector.start()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    sent: dict[str, float] = {}

    def send(post: dict[str, Any]) -> None:
        sent[str(post["id"])] = time.time()
        producer.send(
            topic, key=str(post["id"]).encode(), value=json.dumps(post).encode(), timestamp_ms=_stamp(post)
        )

    warm, timed = posts[:WARMUP], posts[WARMUP:]
    with worker_process(bootstrap, model, work, group, topic=topic) as (process, log_path):
        for post in warm:
            send(post)
        producer.flush(30)
        deadline = time.monotonic() + timeout_s
        while not all(str(p["id"]) in arrived for p in warm):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready (exit {process.poll()}); see {log_path}")
            time.sleep(0.05)
        gap = 1.0 / rate
        start = time.monotonic()
        for i, post in enumerate(timed):
            wait = start + i * gap - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            send(post)
        producer.flush(30)
        offered_s = time.monotonic() - start
        while not all(str(p["id"]) in arrived for p in timed) and time.monotonic() < deadline:
            time.sleep(0.05)
    stop.set()
    collector.join(10)
    producer.close(5)
    ids = [str(p["id"]) for p in timed]
    lat = np.array([arrived[i] - sent[i] for i in ids if i in arrived]) * 1000.0
    return {
        "rate": rate,
        "offered": len(timed),
        "decided": int(lat.size),
        "offered_s": offered_s,
        "achieved_rate": len(timed) / offered_s if offered_s else float("nan"),
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "p99_ms": float(np.percentile(lat, 99)),
        "max_ms": float(lat.max()),
        "mean_ms": float(lat.mean()),
        "latencies_ms": [round(float(x), 2) for x in lat],
    }


def measure(
    rate: float, n: int, seed: int, model: Path, work: Path, timeout_s: float = 600.0
) -> dict[str, Any]:
    posts_path, _ = make_stream(n + WARMUP, seed, work / "stream")
    with tansu(log_path=work / "tansu.log") as bootstrap:
        result = offer(bootstrap, model, read_jsonl(posts_path), rate, work, timeout_s)
    print(
        f"latency at {rate:.1f} docs/s offered ({result['decided']}/{result['offered']} decided): "
        f"p50 {result['p50_ms']:.0f} ms  p95 {result['p95_ms']:.0f} ms  p99 {result['p99_ms']:.0f} ms",
        flush=True,
    )
    return result


def plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = np.sort(np.array(result["latencies_ms"]))
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.plot(lat, np.arange(1, lat.size + 1) / lat.size)
    for q in ("p50", "p95", "p99"):
        ax.axvline(result[f"{q}_ms"], linestyle=":", color="grey")
        ax.text(result[f"{q}_ms"], 0.02, q, rotation=90)
    ax.set(
        xlabel="produce → decision (ms)",
        ylabel="fraction of posts",
        title=f"Latency CDF at {result['rate']:.1f} posts/s offered (worker run, Tansu, CPU)",
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, required=True, help="posts/s offered (below saturation)")
    parser.add_argument("--n", type=int, default=400, help="posts timed")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="twinflag-lat-") as tmp:
        result = measure(args.rate, args.n, args.seed, args.model or default_model(), Path(tmp))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    if args.plot:
        plot(result, args.plot)


if __name__ == "__main__":
    main()
