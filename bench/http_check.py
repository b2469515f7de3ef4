"""``POST /v1/check`` throughput and latency at a few concurrency levels, beside the stream's own rate.

The stream's rate: the demo stream's posts added through the batch step in batches of 256
(``twinflag.Detector.scan``, what ``worker run`` does per poll, without Kafka). Then ``python -m worker
serve`` runs over that index in its own process, and httpx clients send checks of edited reposts of
the stream's posts (read-only; a suffix added, so each is embedded and searched, never an exact-hash
answer) for ``--seconds`` per concurrency level; requests/s, p50 and p99 latency per level.

    python -m bench.http_check --model models/default --out bench/results/http_check.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.throughput import default_model
from devkit.broker import free_port
from devkit.posts import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key-0123456789abcdef"


def stream_rate(model: Path, index: Path, posts: list[dict[str, Any]]) -> float:
    """Posts/s through the writing batch step (256 a batch), index flushed at the end."""
    from twinflag import Detector

    with Detector.open(model, index) as detector:
        started = time.perf_counter()
        for _ in detector.scan(posts, batch_size=256):
            pass
        return len(posts) / (time.perf_counter() - started)


def start_server(model: Path, index: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWINFLAG_")}
    env |= {
        "TWINFLAG_HTTP__KEYS": json.dumps({"default": KEY}),
        "TWINFLAG_HTTP__PORT": str(port),
        "TWINFLAG_LOG_LEVEL": "WARNING",
        "TWINFLAG_HTTP__TIMEOUT_S": "60",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker", "serve", "--model", str(model), "--index", str(index)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(log.read_text())
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError("serve did not start")


async def level(url: str, texts: list[str], concurrency: int, seconds: float) -> dict[str, Any]:
    """``concurrency`` clients, each sending checks back to back for ``seconds``."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as client:
        end = time.perf_counter() + seconds

        async def one(worker: int) -> None:
            nonlocal errors
            i = worker
            while time.perf_counter() < end:
                sent = time.perf_counter()
                response = await client.post("/v1/check", json={"text": texts[i % len(texts)]})
                latencies.append(time.perf_counter() - sent)
                errors += response.status_code != 200
                i += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(one(w) for w in range(concurrency)))
        wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "requests_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=default_model())
    parser.add_argument("--posts", type=Path, default=ROOT / "demo" / "posts.jsonl")
    parser.add_argument("--n", type=int, default=2000, help="stream posts in the index")
    parser.add_argument("--levels", default="1,4,16,64")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "http_check.json")
    args = parser.parse_args(argv)

    posts = [{"id": p["id"], "text": p["text"]} for p in read_jsonl(args.posts)][: args.n]
    texts = [f"{p['text']} (seen this?)" for p in posts]  # edited reposts: embedded and searched, not exact
    with tempfile.TemporaryDirectory(prefix="twinflag-http-") as tmp:
        index = Path(tmp) / "index"
        rate = stream_rate(args.model, index, posts)
        print(f"stream (batch step, 256 a batch): {rate:.1f} posts/s over {len(posts)} posts")
        port = free_port()
        server = start_server(args.model, index, port, Path(tmp) / "serve.log")
        try:
            url = f"http://127.0.0.1:{port}"
            asyncio.run(level(url, texts, 4, 2.0))  # warm-up
            results = []
            for concurrency in (int(c) for c in args.levels.split(",")):
                result = asyncio.run(level(url, texts, concurrency, args.seconds))
                results.append(result)
                print(
                    f"/v1/check concurrency {concurrency:>3}: {result['requests_per_s']:>7.1f} req/s  "
                    f"p50 {result['p50_ms']:>7.1f} ms  p99 {result['p99_ms']:>7.1f} ms  "
                    f"errors {result['errors']}"
                )
        finally:
            server.terminate()
            server.wait(timeout=30)
    manifest = json.loads((args.model / "manifest.json").read_text())
    report = {
        "model": manifest["version"],
        "model_path": str(args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model),
        "index_points": len(posts),
        "stream_posts_per_s": round(rate, 1),
        "seconds_per_level": args.seconds,
        "levels": results,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "command": "python -m bench.http_check " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
