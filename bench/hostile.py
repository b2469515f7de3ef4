"""Hostile input and hostile clients: what one post, or a crowd of idle sockets, can cost the worker.

``python -m bench.hostile`` (about 2 minutes here) measures two things and writes
``bench/results/hostile.json``:

1. **Posts.** For each worst case we know of, a post just under ``TWINFLAG_MAX_MESSAGE_BYTES`` (runs of
   combining marks, a Tibetan sign that decomposes into two marks, "a a a ...", one endless word,
   emoji, characters NFKC expands eighteenfold, deep JSON, escapes), the time of every step the
   worker runs on it: parsing and validation, normalisation, the content hash, the tokenizer (with
   the model's own hardened normaliser), and embedding. Then a batch of 20 ordinary posts plus the
   worst of them goes through the real batch step while a client polls ``/healthz`` every 20 ms: the
   longest wait for an answer says whether the status endpoint (and, on the same GIL, the Kafka
   heartbeat thread) stays alive during such a batch. The line: no step over 1 s.
2. **Clients.** A real ``python -m worker run`` (tiny model, Tansu) decides a paced stream while this
   process holds 2,000 idle connections and 200 slow clients (a byte every 0.5 s) on its status
   port: posts decided per second before and during, ``/healthz`` latency during, and the worker's
   open descriptors before, during and after.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.harness import (
    Producer,
    Tail,
    argv_command,
    dump,
    start_worker,
    stop_worker,
    worker_env,
)
from devkit.broker import tansu
from devkit.kafka import Names, create_topics
from devkit.posts import generate
from devkit.tiny import tiny_model

MAX_MESSAGE_BYTES = 1_000_000
LINE_S = 1.0


def worst_posts(limit: int = MAX_MESSAGE_BYTES) -> dict[str, bytes]:
    """Each a JSON document just under ``limit`` bytes."""
    room = limit - 64

    def doc(text: str) -> bytes:
        return json.dumps({"id": "hostile", "text": text}, ensure_ascii=False).encode()

    def fill(unit: str) -> str:
        return unit * (room // len(unit.encode()))

    return {
        "combining marks": doc("a" + fill("\u0301\u0316")),
        "tibetan II (two marks each)": doc(fill("\u0f73")),
        "'a ' repeated": doc(fill("a ")),
        "one endless word": doc(fill("a")),
        "emoji": doc(fill("👍")),
        "NFKC ×18 (ﷺ)": doc(fill("\ufdfa")),
        "homoglyphs and zero-width": doc(fill("е\u200b")),
        "escaped controls": json.dumps({"id": "hostile", "text": "x" + "\x01" * (room // 7)}).encode(),
        "deep meta": (b'{"id": "hostile", "text": "t", "meta": ' + b'{"m": ' * 60 + b"1" + b"}" * 61),
    }


def timed(call: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = call()
    return time.perf_counter() - start, out


def post_steps(model: Path) -> dict[str, Any]:
    """Seconds per step and post, and /healthz during a batch holding the worst post."""
    from worker.core.normalize import normalize, text_hash
    from worker.core.parse import parse_record
    from worker.core.records import Record
    from worker.core.step import StepConfig, run_batch
    from worker.index.memory import MemoryIndex
    from worker.model.encode import TorchEncoder, clip_for_tokenizer
    from worker.service.status import Metrics, Readiness, StatusServer

    encoder = TorchEncoder(model, device="cpu")
    rows: dict[str, dict[str, float]] = {}
    worst_name, worst_total = "", -1.0
    for name, value in worst_posts().items():
        record = Record("documents", 0, 0, 0, b"hostile", value)
        parse_s, parsed = timed(lambda r=record: parse_record(r, MAX_MESSAGE_BYTES, 256))
        text = getattr(parsed, "text", None)
        row = {"bytes": float(len(value)), "parse_s": parse_s}
        if text is not None:
            row["normalize_s"], normalised = timed(lambda t=text: normalize(t))
            row["hash_s"], _ = timed(lambda n=normalised: text_hash(n))
            row["tokenize_s"], _ = timed(
                lambda t=text: encoder.tokenizer.encode_batch(clip_for_tokenizer([t], encoder.tokenizer))
            )
            row["known_s"], _ = timed(lambda t=text: encoder.known([t]))
            row["embed_s"], _ = timed(lambda t=text: encoder.embed([t]))
        rows[name] = {k: round(v, 4) for k, v in row.items()}
        total = sum(v for k, v in row.items() if k.endswith("_s"))
        if total > worst_total:
            worst_name, worst_total = name, total
        print(f"  {name:28s} " + " ".join(f"{k}={v:.3f}" for k, v in row.items() if k.endswith("_s")))

    ordinary = [f"an ordinary post number {i} about the weather and the trains" for i in range(20)]
    batch = [
        Record("documents", 0, i, i, None, json.dumps({"id": f"p{i}", "text": t}).encode())
        for i, t in enumerate(ordinary)
    ]
    batch.insert(10, Record("documents", 0, 99, 99, b"hostile", worst_posts()[worst_name]))
    waits: list[float] = []
    with StatusServer("127.0.0.1", 0, Metrics(), Readiness()) as server:
        done = threading.Event()

        def probe() -> None:
            while not done.is_set():
                start = time.perf_counter()
                with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=30) as r:
                    r.read()
                waits.append(time.perf_counter() - start)
                time.sleep(0.02)

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        time.sleep(0.2)
        batch_s, _ = timed(lambda: run_batch(batch, encoder, MemoryIndex(), StepConfig(0.8, encoder.version)))
        time.sleep(0.2)
        done.set()
        prober.join(5)
    steps = [v for row in rows.values() for k, v in row.items() if k.endswith("_s")]
    return {
        "posts": rows,
        "slowest_step_s": max(steps),
        "worst_post": worst_name,
        "batch_with_worst_post_s": round(batch_s, 3),
        "healthz_probes_during_batch": len(waits),
        "healthz_longest_wait_s": round(max(waits), 4) if waits else None,
    }


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def healthz_wait(port: int) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as response:
        response.read()
    return time.perf_counter() - start


def crowd(
    work: Path, idle: int, slow: int, posts: int, rate: float, phase_s: float, seed: int
) -> dict[str, Any]:
    """A real worker deciding a paced stream, then the same with a crowd on its status port."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, idle + slow + 1024)), hard))
    stream = [dict(p) for p in generate(posts, seed).posts]
    model = tiny_model(work / "tiny-model", [str(p["text"]) for p in stream[:2000]], seed)
    names = Names.for_run("hostile", "documents-hostile")
    with tansu(log_path=work / "tansu.log", timeout_s=30) as bootstrap:
        create_topics(bootstrap, names, 1)
        env = worker_env(bootstrap, model, names, work / "index", batch=64)
        port = int(env["TWINFLAG_METRICS_PORT"])
        tail, producer = Tail(bootstrap, names.decisions), Producer(bootstrap, names.input)
        process = start_worker(env, work / "worker.log")
        try:
            producer.send(stream[0])
            producer.flush()
            deadline = time.monotonic() + 120
            while tail.snapshot()[1] < 1:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker not ready; see {work / 'worker.log'}")
                time.sleep(0.1)
            fds_before = open_fds(process.pid)
            sent = 1

            def paced(seconds: float) -> float:
                """Offer ``rate`` posts/s for ``seconds``; posts decided per second meanwhile."""
                nonlocal sent
                start, base, decided0 = time.monotonic(), sent, tail.snapshot()[1]
                while (elapsed := time.monotonic() - start) < seconds and sent < len(stream):
                    while sent < min(base + int(elapsed * rate), len(stream)):
                        producer.send(stream[sent])
                        sent += 1
                    producer.flush()
                    time.sleep(0.05)
                return (tail.snapshot()[1] - decided0) / (time.monotonic() - start)

            quiet_rate = paced(phase_s)
            sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(idle)]
            slow_socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(slow)]
            stop = threading.Event()

            def drip() -> None:
                while not stop.is_set():
                    for s in slow_socks:
                        with contextlib.suppress(OSError):  # the server closed it: as it should
                            s.send(b"G")
                    stop.wait(0.5)

            dripper = threading.Thread(target=drip, daemon=True)
            dripper.start()
            waits: list[float] = []
            fds_during: list[int] = []

            def probe() -> None:
                while not stop.is_set():
                    try:
                        waits.append(healthz_wait(port))
                    except OSError:
                        waits.append(float("inf"))
                    fds_during.append(open_fds(process.pid))
                    stop.wait(0.25)

            prober = threading.Thread(target=probe, daemon=True)
            prober.start()
            attacked_rate = paced(phase_s)
            stop.set()
            dripper.join(5)
            prober.join(5)
            for s in sockets + slow_socks:
                s.close()
            time.sleep(4)  # the server's own timeouts close what it still holds
            fds_after = open_fds(process.pid)
            alive = process.poll() is None
        finally:
            code = stop_worker(process)
            tail.close()
            producer.close()
    return {
        "idle_connections": idle,
        "slow_clients": slow,
        "offered_posts_per_s": rate,
        "decided_per_s_quiet": round(quiet_rate, 1),
        "decided_per_s_under_crowd": round(attacked_rate, 1),
        "healthz_answers_under_crowd": sum(w != float("inf") for w in waits),
        "healthz_failures_under_crowd": sum(w == float("inf") for w in waits),
        "healthz_longest_wait_s": round(max(w for w in waits if w != float("inf")), 4) if waits else None,
        "worker_fds_before": fds_before,
        "worker_fds_peak_under_crowd": max(fds_during) if fds_during else None,
        "worker_fds_after": fds_after,
        "worker_alive_throughout": alive,
        "worker_exit_code": code,
    }


def crowd_verdict(clients: dict[str, Any]) -> dict[str, bool]:
    return {
        "/healthz answered under the crowd": clients["healthz_failures_under_crowd"] == 0,
        "the worker kept deciding under the crowd": clients["decided_per_s_under_crowd"]
        >= 0.9 * clients["decided_per_s_quiet"],
        "no descriptor leak": clients["worker_fds_after"] <= clients["worker_fds_before"] + 2,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model for the post steps (default: zero-shot export)")
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--slow", type=int, default=200)
    parser.add_argument("--posts", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=60.0, help="posts/s offered to the worker")
    parser.add_argument("--phase-s", type=float, default=20.0, help="seconds quiet, then under the crowd")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--json", type=Path, default=Path("bench/results/hostile.json"))
    parser.add_argument("--posts-only", action="store_true", help="skip the crowd on the status port")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="twinflag-hostile-") as tmp:
        work = Path(tmp)
        model = args.model
        if model is None:
            from trainer.export import export_pretrained
            from worker.model.pretrained import default_base_model

            model = work / "zero-shot"
            export_pretrained(default_base_model(), model, device="cpu")
        print("posts: seconds per step", flush=True)
        posts = post_steps(model)
        clients: dict[str, Any] = {}
        if not args.posts_only:
            print(f"clients: {args.idle} idle, {args.slow} slow on the status port", flush=True)
            clients = crowd(work, args.idle, args.slow, args.posts, args.rate, args.phase_s, args.seed)
    result = {
        "command": argv_command("bench.hostile", sys.argv[1:] if argv is None else argv),
        "max_message_bytes": MAX_MESSAGE_BYTES,
        "line_s": LINE_S,
        "posts": posts,
        "clients": clients,
        "verdict": {
            "no step above 1 s": posts["slowest_step_s"] <= LINE_S,
            "/healthz answered during the worst batch": posts["healthz_longest_wait_s"] is not None
            and posts["healthz_longest_wait_s"] <= LINE_S,
            **(crowd_verdict(clients) if clients else {}),
        },
    }
    dump(result, args.json)
    summary = {k: v for k, v in posts.items() if k != "posts"}
    print(json.dumps({"posts": summary, "clients": clients, "verdict": result["verdict"]}, indent=2))


if __name__ == "__main__":
    main()
