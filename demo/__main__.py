"""`make demo`: the project's repost stream through the real `python -m worker run`, end to end.

Starts a local Kafka-protocol broker (Tansu) on loopback, uses ``models/default`` (or exports the
zero-shot base model), runs the worker as its own process with the embedded Qdrant Edge index,
produces the demo posts, prints each flag as it arrives, then a summary, and shuts everything down.
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
from datetime import datetime
from pathlib import Path

from devkit.broker import free_port, tansu
from devkit.posts import precision_recall, read_jsonl

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "default"
ZERO_SHOT = ROOT / "models" / "zero-shot"


def say(message: str) -> None:
    print(message, flush=True)


def ensure_model(explicit: Path | None) -> Path:
    """models/default when it exists; otherwise the zero-shot base model, exported once (< 1 minute)."""
    if explicit is not None:
        return explicit
    if (DEFAULT_MODEL / "manifest.json").is_file():
        return DEFAULT_MODEL
    if not (ZERO_SHOT / "manifest.json").is_file():
        say(
            "· no models/default: exporting the zero-shot all-MiniLM-L6-v2 (run `make model` for the "
            "fine-tuned one)"
        )
        from worker.model.pretrained import default_base_model

        command = [
            sys.executable,
            "-m",
            "trainer",
            "export",
            "--from-pretrained",
            str(default_base_model()),
            "--out",
            str(ZERO_SHOT),
        ]
        subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})  # noqa: S603
    return ZERO_SHOT


def produce(bootstrap: str, topic: str, posts: list[dict[str, object]], rate: float) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    gap = 1.0 / rate if rate > 0 else 0.0
    for post in posts:
        stamp = datetime.fromisoformat(str(post["created_at"]).replace("Z", "+00:00"))
        producer.send(
            topic,
            key=str(post["id"]).encode(),
            value=json.dumps(post).encode(),
            timestamp_ms=int(stamp.timestamp() * 1000),
        )
        if gap:
            time.sleep(gap)
    producer.flush(30)
    producer.close(5)


def snippet(text: str, width: int = 56) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument("--posts", type=Path, default=ROOT / "demo" / "posts.jsonl")
    parser.add_argument("--truth", type=Path, default=ROOT / "demo" / "truth.jsonl")
    parser.add_argument("--model", type=Path, help="model directory (default: models/default or zero-shot)")
    parser.add_argument("--rate", type=float, default=0.0, help="posts/s to offer (0: all at once)")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    args = parser.parse_args(argv)

    model = ensure_model(args.model)
    manifest = json.loads((model / "manifest.json").read_text())
    posts = read_jsonl(args.posts)
    truth = read_jsonl(args.truth)
    texts = {str(p["id"]): str(p["text"]) for p in posts}
    stream = manifest.get("stream")
    setting = (
        f"flags at P(duplicate) ≥ {stream['point']:.3f}"
        + (", with a verifier" if manifest.get("verifier") else "")
        if stream
        else f"threshold {manifest['thresholds']['decision']:.3f}"
    )
    say(f"· model {manifest['version']} ({setting}), {len(posts)} posts")

    from kafka import KafkaConsumer
    from kafka.admin import KafkaAdminClient, NewTopic

    work = Path(tempfile.mkdtemp(prefix="twinflag-demo-"))
    with tansu(log_path=work / "tansu.log") as bootstrap:
        say(f"· broker (Tansu) on {bootstrap}; index (Qdrant Edge) in {work / 'index'}")
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        # One partition keeps arrival order total, so every repost is processed after its original.
        admin.create_topics(
            [NewTopic(t, 1, 1) for t in ("documents", "duplicate-flags", "documents.dlq", "decisions")]
        )
        admin.close()
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TWINFLAG_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "TWINFLAG_KAFKA__GROUP_ID": "twinflag-demo",
            "TWINFLAG_KAFKA__DECISIONS_TOPIC": "decisions",
            "TWINFLAG_KAFKA__MAX_POLL_INTERVAL_MS": "10000",
            "TWINFLAG_KAFKA__SESSION_TIMEOUT_MS": "10000",
            "TWINFLAG_KAFKA__CREATE_TOPICS": "false",
            "TWINFLAG_INDEX__BACKEND": "embedded",
            "TWINFLAG_INDEX__PATH": str(work / "index"),
            "TWINFLAG_MODEL__PATH": str(model),
            "TWINFLAG_METRICS_PORT": str(free_port()),
            "TWINFLAG_LOG_FORMAT": "json",
        }
        log = (work / "worker.log").open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "worker", "run"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        consumer = KafkaConsumer(
            "decisions",
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        started = time.monotonic()
        produce(bootstrap, "documents", posts, args.rate)
        say(f"· produced {len(posts)} posts in {time.monotonic() - started:.1f} s; flags as they arrive:")
        decisions: dict[str, dict[str, object]] = {}
        first = last = None
        try:
            while len(decisions) < len(posts) and time.monotonic() - started < args.timeout:
                if worker.poll() is not None:
                    say(f"! the worker exited with status {worker.returncode}; see {work / 'worker.log'}")
                    return 1
                for records in consumer.poll(timeout_ms=500).values():
                    for record in records:
                        decision = json.loads(record.value)
                        doc_id = str(decision["id"])
                        if doc_id in decisions:
                            continue
                        decisions[doc_id] = decision
                        first = first or time.monotonic()
                        last = time.monotonic()
                        if decision.get("flagged"):
                            dup = str(decision["duplicate_of"])
                            say(
                                f"  FLAG {doc_id} ≈ {dup}  {float(decision['score']):.3f} "  # type: ignore[arg-type]
                                f"[{decision.get('stage')}, {decision.get('decided_by')}]  "
                                f"“{snippet(texts.get(doc_id, ''))}”  "
                                f"≈ “{snippet(texts.get(dup, ''))}”"
                            )
        finally:
            consumer.close()
            worker.send_signal(signal.SIGTERM)
            try:
                code = worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                code = worker.wait()
            log.close()
        elapsed = (last or time.monotonic()) - started
        score = precision_recall(list(decisions.values()), truth)
        flags = sum(1 for d in decisions.values() if d.get("flagged"))
        say("")
        say("── summary " + "─" * 60)
        say(f"documents decided   {len(decisions)} / {len(posts)}")
        say(f"flags               {flags}")
        say(score.describe())
        say(
            f"throughput          {len(decisions) / elapsed:.1f} documents/s end to end "
            f"(produce → decision, {elapsed:.1f} s, including the worker's start)"
        )
        say(f"worker exit         {code} after SIGTERM (0 = finished its batch, committed, closed)")
        say(f"logs                {work}")
        return 0 if len(decisions) == len(posts) and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
