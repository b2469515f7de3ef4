"""Soak: a steady offered load through the real broker to one ``python -m worker run`` for minutes, sampled
every few seconds: throughput (decisions/s), consumer lag (posts acknowledged on the input topic minus
distinct posts decided on the decisions topic) and the worker's resident memory (``/proc/PID/status``).

What it answers: does the worker keep up at a rate it should sustain, and does its memory level off once
warm? The embedded index lives in the worker's process, so part of its RSS grows with the points it
holds (memory-mapped vectors and payloads, ``RssFile``); a leak would show as growth of the heap
(``RssAnon``). Both are sampled and the verdict reports both. The index optimiser runs as a child
process; its memory is sampled apart.

The default rate (100 posts/s) suits the tiny random model (``devkit.tiny``), which decides several
hundred posts/s here; with the real model on a 2-core CPU the worker decides about 15-20 posts/s, so
offer ~10-15/s there (``--model models/default --rate 12``).

    python -m bench.soak --minutes 10 --rate 100 --json bench/results/soak.json --plot bench/soak.png
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import (
    Producer,
    Tail,
    argv_command,
    dump,
    log_events,
    rel,
    start_worker,
    stop_worker,
    worker_env,
)
from devkit.broker import tansu
from devkit.kafka import Names, create_topics
from devkit.posts import MIN_N, START, generate
from devkit.tiny import tiny_model

INPUT = "documents-soak"
MIB = 1024.0


@dataclass(frozen=True)
class Sample:
    """One look at the run."""

    t_s: float  # since the first post was offered
    produced: int  # acknowledged on the input topic
    decided: int  # distinct input positions with a decision
    throughput: float  # decisions/s since the previous sample
    lag: int  # produced - decided
    rss_mib: float  # the worker's VmRSS
    rss_anon_mib: float  # of which anonymous (heap, torch, Python objects)
    rss_file_mib: float  # of which file-backed (the index's memory-mapped files, libraries)
    children_rss_mib: float  # the index optimiser, while one runs


def long_stream(n: int, seed: int, chunk: int = 10_000) -> list[dict[str, Any]]:
    """``n`` posts from chunks of ``devkit.posts.generate`` (one stream of it runs out of new originals
    somewhere past 10-20k posts), ids prefixed by chunk, each chunk's ``created_at`` moved past the end
    of the one before so time keeps increasing. Later chunks reuse the vocabularies, so a few of their
    originals repeat earlier texts: a little more exact-duplicate traffic than one stream has."""
    from datetime import UTC, datetime, timedelta

    def parse(value: object) -> datetime:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))

    posts: list[dict[str, Any]] = []
    shift = timedelta(0)
    for k in range(-(-n // chunk)):
        size = min(chunk, n - len(posts))
        part = generate(max(size, MIN_N), seed + k).posts[:size]
        for post in part:
            at = (parse(post["created_at"]) + shift).astimezone(UTC)
            posts.append(
                {**post, "id": f"c{k}-{post['id']}", "created_at": at.strftime("%Y-%m-%dT%H:%M:%SZ")}
            )
        shift = parse(posts[-1]["created_at"]) - START + timedelta(seconds=1)  # every created_at > START
    return posts


def proc_status(pid: int) -> dict[str, int]:
    """The ``kB`` fields of ``/proc/PID/status`` (empty once the process is gone)."""
    fields: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        name, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            fields[name] = int(parts[0])
    return fields


def children_rss_kib(pid: int) -> int:
    """VmRSS of the process's direct children (the index optimiser runs as one)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0
    return sum(proc_status(int(child)).get("VmRSS", 0) for child in children)


class ChildPeak(threading.Thread):
    """The highest children VmRSS since the last ``take``: the optimiser lives a second or two, far less
    than a sampling interval, so it is watched four times a second."""

    def __init__(self, pid: int) -> None:
        super().__init__(name="child-peak", daemon=True)
        self.pid, self.peak_kib = pid, 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.25):
            self.peak_kib = max(self.peak_kib, children_rss_kib(self.pid))

    def take(self) -> int:
        peak, self.peak_kib = self.peak_kib, 0
        return peak


class Pacer(threading.Thread):
    """Offers posts at a fixed rate (by the clock, not by sleeping a fixed gap: no drift)."""

    def __init__(self, producer: Producer, posts: list[dict[str, Any]], rate: float, seconds: float) -> None:
        super().__init__(name="pacer", daemon=True)
        self.producer, self.posts, self.rate, self.seconds = producer, posts, rate, seconds
        self.started = 0.0
        self.offered = 0
        self.acked = 0
        self.behind_s = 0.0  # the most the pacer fell behind its schedule (a sign of a starved producer)
        self.stop = threading.Event()

    def run(self) -> None:
        base = len(self.producer.positions)  # posts acknowledged before the offer (the readiness probe)
        self.started = time.monotonic()
        total = min(len(self.posts), int(self.rate * self.seconds))
        last_flush = self.started
        for i in range(total):
            if self.stop.is_set():
                break
            due = self.started + i / self.rate
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            else:
                self.behind_s = max(self.behind_s, -wait)
            self.producer.send(self.posts[i])
            self.offered = i + 1
            if time.monotonic() - last_flush >= 0.5:  # acknowledgements: what the topic now holds
                self.acked = self.producer.flush() - base
                last_flush = time.monotonic()
        self.acked = self.producer.flush() - base


def _baseline_child(points: int, dim: int, every: int, out: Any) -> None:
    """In a fresh process: ``points`` upserts into a fresh EdgeIndex, the way the worker makes them
    (batches of 256, flush, maintain), RSS recorded every ``every`` points."""
    import hashlib

    from worker.core.ports import IndexPoint
    from worker.index.config import IndexSettings
    from worker.index.edge import EdgeIndex

    rng = np.random.default_rng(0)
    rows: list[tuple[int, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="twinflag-soak-baseline-") as tmp:
        index = EdgeIndex(Path(tmp) / "index", optimize_every=IndexSettings().optimize_every)
        index.ensure(dim, "baseline")
        for start in range(0, points, 256):
            batch = []
            for i in range(start, min(start + 256, points)):
                vector = rng.standard_normal(dim).astype(np.float32)
                batch.append(
                    IndexPoint(
                        doc_id=f"c{i // 10_000}-p{i % 10_000:05d}",
                        tenant="acme" if i % 7 == 0 else "default",
                        vector=vector / np.linalg.norm(vector),
                        text_hash=hashlib.sha256(str(i).encode()).hexdigest(),
                        order=(1_750_000_000_000 + 1000 * i, i),
                        model="transformer-0123456789ab",
                        created_at="2025-06-02T07:00:00+00:00",
                        decision='{"flagged":false,"matches":[]}',  # as the worker stores one
                    )
                )
            index.upsert(batch)
            index.flush()
            index.maintain()
            done = min(start + 256, points)
            if done // every != start // every or done == points:
                status = proc_status(os.getpid())
                rows.append((done, status.get("VmRSS", 0) / MIB, status.get("RssAnon", 0) / MIB))
        index.close()
    out.put(rows)


def index_baseline(points: int, dim: int, every: int = 2000) -> list[tuple[int, float, float]]:
    """(points, VmRSS MiB, RssAnon MiB) of an EdgeIndex alone as it grows to ``points``: what the worker's
    RSS may grow by for its index alone, to tell growth with the data from a leak."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_baseline_child, args=(points, dim, every, queue))
    child.start()
    rows: list[tuple[int, float, float]] = queue.get(timeout=900)
    child.join(60)
    return rows


def fit_slope(t_s: np.ndarray, values: np.ndarray) -> float:
    """Least-squares slope per minute (nan with fewer than 3 points)."""
    if len(t_s) < 3:
        return float("nan")
    return float(np.polyfit(t_s / 60.0, values, 1)[0])


def verdict(
    samples: list[Sample],
    warmup_s: float,
    rate: float,
    offer_s: float,
    baseline: list[tuple[int, float, float]],
) -> dict[str, Any]:
    """Throughput against the offered rate, the worst lag, and memory growth once warm, over the samples
    taken while the load was offered (the drain after it is plotted, not judged); the growth is set
    against what an index alone grows by over the same points (``baseline``)."""
    samples = [s for s in samples if s.t_s <= offer_s + 1.0] or samples
    t = np.array([s.t_s for s in samples])
    rss = np.array([s.rss_mib for s in samples])
    anon = np.array([s.rss_anon_mib for s in samples])
    file_backed = np.array([s.rss_file_mib for s in samples])
    warm = t >= warmup_s
    half = t >= t[-1] / 2
    offered_span = [s for s in samples if s.t_s >= warmup_s]
    achieved = (
        (offered_span[-1].decided - offered_span[0].decided) / (offered_span[-1].t_s - offered_span[0].t_s)
        if len(offered_span) > 1
        else float("nan")
    )
    return {
        "offered_rate": rate,
        "achieved_docs_per_s_after_warmup": achieved,
        "max_lag": int(max(s.lag for s in samples)),
        "max_lag_after_warmup": int(max((s.lag for s in offered_span), default=0)),
        "mean_lag_after_warmup": float(np.mean([s.lag for s in offered_span]))
        if offered_span
        else float("nan"),
        "rss_at_warmup_mib": float(rss[warm][0]) if warm.any() else float("nan"),
        "rss_end_mib": float(rss[-1]),
        "rss_peak_mib": float(rss.max()),
        "rss_max_minus_min_after_warmup_mib": float(rss[warm].max() - rss[warm].min()) if warm.any() else 0.0,
        "rss_slope_second_half_mib_per_min": fit_slope(t[half], rss[half]),
        "rss_anon_slope_second_half_mib_per_min": fit_slope(t[half], anon[half]),
        "rss_file_slope_second_half_mib_per_min": fit_slope(t[half], file_backed[half]),
        "rss_anon_at_warmup_mib": float(anon[warm][0]) if warm.any() else float("nan"),
        "rss_anon_end_mib": float(anon[-1]),
        "children_rss_peak_mib": float(max(s.children_rss_mib for s in samples)),
        **index_share(samples, warmup_s, baseline),
    }


def index_share(
    samples: list[Sample], warmup_s: float, baseline: list[tuple[int, float, float]]
) -> dict[str, float]:
    """The worker's RSS growth from warm-up to the end, and the index-alone growth over the same points
    (each decided post is one point); the excess is what the index does not explain."""
    warm = [s for s in samples if s.t_s >= warmup_s]
    if len(warm) < 2 or len(baseline) < 2:
        return {}
    points = np.array([b[0] for b in baseline], dtype=float)
    first, last = warm[0], warm[-1]
    index_rss = np.interp([first.decided + 1, last.decided + 1], points, [b[1] for b in baseline])
    index_anon = np.interp([first.decided + 1, last.decided + 1], points, [b[2] for b in baseline])
    worker_growth, worker_anon = last.rss_mib - first.rss_mib, last.rss_anon_mib - first.rss_anon_mib
    return {
        "points_at_warmup": first.decided + 1,
        "points_at_end": last.decided + 1,
        "worker_rss_growth_mib": worker_growth,
        "worker_anon_growth_mib": worker_anon,
        "index_alone_rss_growth_mib": float(index_rss[1] - index_rss[0]),
        "index_alone_anon_growth_mib": float(index_anon[1] - index_anon[0]),
        "index_alone_kib_per_point": float(
            1024 * (baseline[-1][1] - baseline[0][1]) / (points[-1] - points[0])
        ),
        "unexplained_growth_mib": float(worker_growth - (index_rss[1] - index_rss[0])),
    }


def plot(samples: list[Sample], result: dict[str, Any], out: Path) -> None:
    """Throughput, lag and RSS against time, one panel each, the warm-up shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([s.t_s for s in samples]) / 60.0
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    ax1.plot(t, [s.throughput for s in samples], label="decided")
    ax1.axhline(result["rate"], color="grey", linestyle=":", label=f"offered {result['rate']:g}/s")
    ax1.set_ylabel("posts/s")
    ax1.legend(loc="lower right")
    ax2.plot(t, [s.lag for s in samples], color="tab:orange")
    ax2.set_ylabel("lag (posts)")
    ax3.plot(t, [s.rss_mib for s in samples], label="worker VmRSS")
    ax3.plot(t, [s.rss_anon_mib for s in samples], label="of which RssAnon")
    ax3.plot(t, [s.rss_file_mib for s in samples], label="of which RssFile")
    ax3.plot(t, [s.children_rss_mib for s in samples], label="optimiser child (peak)", linewidth=0.8)
    baseline = result.get("index_baseline") or []
    warm = [s for s in samples if s.t_s >= result["warmup_s"]]
    if len(baseline) > 1 and warm:
        points = [b[0] for b in baseline]
        index_rss = np.interp([s.decided + 1 for s in warm], points, [b[1] for b in baseline])
        ax3.plot(
            np.array([s.t_s for s in warm]) / 60.0,
            warm[0].rss_mib + index_rss - index_rss[0],
            linestyle="--",
            color="black",
            linewidth=0.9,
            label="warm RSS + an EdgeIndex alone's growth",
        )
    ax3.set_ylabel("MiB")
    ax3.set_xlabel("minutes")
    ax3.legend(loc="center right", fontsize="small")
    for ax in (ax1, ax2, ax3):
        ax.axvspan(0, result["warmup_s"] / 60.0, color="grey", alpha=0.12)  # warm-up
        ax.axvline(result["minutes"], color="grey", linestyle="--", linewidth=0.8)  # the offer ends
        ax.grid(alpha=0.3)
    v = result["verdict"]
    fig.suptitle(
        f"Soak: {result['rate']:g} posts/s offered for {result['minutes']:g} min ({result['model']}); "
        f"RSS slope {v['rss_slope_second_half_mib_per_min']:.2f} MiB/min (2nd half)",
        fontsize="medium",
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def soak(
    minutes: float,
    rate: float,
    seed: int,
    model: Path | None,
    work: Path,
    *,
    sample_s: float = 5.0,
    warmup_s: float = 60.0,
    partitions: int = 3,
    batch: int = 256,
) -> tuple[dict[str, Any], list[Sample]]:
    """Run the soak; returns the figures and the samples."""
    from worker.model.directory import read_manifest

    seconds = minutes * 60.0
    n = int(rate * seconds) + 1
    print(f"generating {n} posts", flush=True)
    posts = long_stream(n, seed)
    if model is None:
        model = tiny_model(work / "tiny-model", [str(p["text"]) for p in posts[:2000]], seed)
    manifest = read_manifest(model)
    names = Names.for_run("soak", INPUT)
    samples: list[Sample] = []
    with tansu(log_path=work / "tansu.log", timeout_s=30) as bootstrap:
        create_topics(bootstrap, names, partitions)
        env = worker_env(bootstrap, model, names, work / "index", batch=batch)
        tail = Tail(bootstrap, names.decisions)
        producer = Producer(bootstrap, INPUT)
        process = start_worker(env, work / "worker.log")
        children = ChildPeak(process.pid)
        children.start()
        try:
            # Ready first (model loaded, group joined): the soak measures the running worker, not its start.
            producer.send(posts[0])
            producer.flush()
            deadline = time.monotonic() + 120
            while tail.snapshot()[1] < 1:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker not ready (exit {process.poll()}); see {work / 'worker.log'}")
                time.sleep(0.1)
            pacer = Pacer(producer, posts[1:], rate, seconds)
            pacer.start()
            while pacer.started == 0.0:
                time.sleep(0.01)
            last_t, last_decided = 0.0, tail.snapshot()[1] - 1
            drain_deadline: float | None = None
            while True:
                time.sleep(max(0.0, pacer.started + len(samples) * sample_s + sample_s - time.monotonic()))
                t = time.monotonic() - pacer.started
                decided = tail.snapshot()[1] - 1  # the readiness post is not part of the offer
                produced = pacer.acked
                status = proc_status(process.pid)
                if not status:
                    raise RuntimeError(f"worker exited with {process.poll()}; see {work / 'worker.log'}")
                samples.append(
                    Sample(
                        t_s=round(t, 2),
                        produced=produced,
                        decided=decided,
                        throughput=round((decided - last_decided) / (t - last_t), 2),
                        lag=max(0, produced - decided),
                        rss_mib=round(status.get("VmRSS", 0) / MIB, 1),
                        rss_anon_mib=round(status.get("RssAnon", 0) / MIB, 1),
                        rss_file_mib=round(status.get("RssFile", 0) / MIB, 1),
                        children_rss_mib=round(children.take() / MIB, 1),
                    )
                )
                last_t, last_decided = t, decided
                s = samples[-1]
                if len(samples) % max(1, int(60 / sample_s)) == 0:
                    print(
                        f"  {t / 60:5.1f} min: {s.decided}/{s.produced} decided, {s.throughput:.0f}/s, "
                        f"lag {s.lag}, RSS {s.rss_mib:.0f} MiB (anon {s.rss_anon_mib:.0f})",
                        flush=True,
                    )
                if not pacer.is_alive():
                    drain_deadline = drain_deadline or time.monotonic() + 120
                    if decided >= pacer.acked or time.monotonic() > drain_deadline:
                        break
            pacer.join()
            drained_s = time.monotonic() - pacer.started - seconds
        finally:
            children.stop.set()
            exit_code = stop_worker(process)
            tail.close()
            producer.close()
    events = log_events(work / "worker.log")
    result: dict[str, Any] = {
        "minutes": minutes,
        "rate": rate,
        "seed": seed,
        "partitions": partitions,
        "batch": batch,
        "sample_s": sample_s,
        "warmup_s": warmup_s,
        "model": rel(model) if not str(model).startswith(str(work)) else "tiny random BERT (devkit.tiny)",
        "model_version": manifest.version,
        "offered": pacer.offered,
        "acknowledged": pacer.acked,
        "decided": samples[-1].decided if samples else 0,
        "pacer_max_behind_s": round(pacer.behind_s, 3),
        "drain_after_offer_s": round(drained_s, 1),
        "worker_exit": exit_code,
        "batches": sum(e.get("event") == "batch" for e in events),
        "optimisations": sum(e.get("event") == "index.optimize.finished" for e in events),
        "backoffs": sum(e.get("event") == "backing_off" for e in events),
        "errors": sorted({str(e["event"]) for e in events if e.get("level") in ("error", "critical")}),
    }
    print(f"index alone: upserting {result['decided'] + 1} points into a fresh EdgeIndex", flush=True)
    baseline = index_baseline(result["decided"] + 1, manifest.dim)
    result["index_baseline"] = baseline
    result["verdict"] = verdict(samples, warmup_s, rate, seconds, baseline)
    return result, samples


def summary(result: dict[str, Any]) -> str:
    v = result["verdict"]
    return "\n".join(
        [
            f"### Soak: {result['rate']:g} posts/s offered for {result['minutes']:g} min",
            "",
            f"`{result['command']}`",
            "",
            f"- model: {result['model']}; {result['decided']}/{result['acknowledged']} decided, "
            f"worker exit {result['worker_exit']}, {result['optimisations']} index optimisations, "
            f"{result['backoffs']} back-offs, errors: {result['errors'] or 'none'}",
            f"- throughput after warm-up: {v['achieved_docs_per_s_after_warmup']:.1f} posts/s "
            f"(offered {v['offered_rate']:g}); lag max {v['max_lag']} (after warm-up "
            f"{v['max_lag_after_warmup']}, mean {v['mean_lag_after_warmup']:.0f}); drained "
            f"{result['drain_after_offer_s']:.1f} s after the offer ended",
            f"- RSS: {v['rss_at_warmup_mib']:.0f} MiB at warm-up ({result['warmup_s']:.0f} s) → "
            f"{v['rss_end_mib']:.0f} MiB at the end (peak {v['rss_peak_mib']:.0f}); max−min after warm-up "
            f"{v['rss_max_minus_min_after_warmup_mib']:.0f} MiB; slope over the second half "
            f"{v['rss_slope_second_half_mib_per_min']:.2f} MiB/min (anon "
            f"{v['rss_anon_slope_second_half_mib_per_min']:.2f}, file-backed "
            f"{v['rss_file_slope_second_half_mib_per_min']:.2f}); optimiser child peak "
            f"{v['children_rss_peak_mib']:.0f} MiB",
            f"- verdict: {growth_verdict(result)}",
        ]
    )


def growth_verdict(result: dict[str, Any]) -> str:
    """One sentence: flat, growing with the index it holds, or growing beyond it."""
    v, rate = result["verdict"], result["rate"]
    total = v["rss_slope_second_half_mib_per_min"]
    per_10k = total / (rate * 60) * 10_000 if rate else float("nan")
    if abs(total) < 1.0:
        return f"memory flat once warm ({total:+.2f} MiB/min)"
    if "unexplained_growth_mib" not in v:
        return f"RSS grows {total:+.2f} MiB/min (≈{per_10k:.1f} MiB per 10k posts); no index baseline"
    grown, index_grown = v["worker_rss_growth_mib"], v["index_alone_rss_growth_mib"]
    excess = v["unexplained_growth_mib"]
    explained = abs(excess) <= max(20.0, 0.2 * abs(grown))
    return (
        f"RSS grows {total:+.2f} MiB/min (≈{per_10k:.1f} MiB per 10k posts): {grown:.0f} MiB from warm-up to "
        f"the end, against {index_grown:.0f} MiB for an EdgeIndex alone taking the same points "
        f"({v['index_alone_kib_per_point']:.1f} KiB/point); "
        + (
            f"the index explains it (excess {excess:+.0f} MiB): growth with the data held, no leak seen"
            if explained
            else f"{excess:+.0f} MiB beyond the index: look for a leak"
        )
    )


def main(argv: list[str] | None = None) -> None:
    args_list = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the load is offered")
    parser.add_argument(
        "--rate", type=float, default=100.0, help="posts/s offered (real model on CPU: ~10-15)"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--model", type=Path, default=None, help="model directory (default: a tiny random one)"
    )
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds left out of the memory verdict")
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256, help="TWINFLAG_KAFKA__MAX_POLL_RECORDS")
    parser.add_argument("--work", type=Path, default=None, help="keep the logs and index here")
    parser.add_argument("--json", type=Path, default=Path("bench/results/soak.json"))
    parser.add_argument("--plot", type=Path, default=Path("bench/soak.png"))
    args = parser.parse_args(args_list)
    from bench.report import machine

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-ups: worker, broker, temp dir
    with tempfile.TemporaryDirectory(prefix="twinflag-soak-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result, samples = soak(
            args.minutes,
            args.rate,
            args.seed,
            args.model,
            work,
            sample_s=args.sample,
            warmup_s=args.warmup,
            partitions=args.partitions,
            batch=args.batch,
        )
    result["command"] = argv_command("bench.soak", args_list)
    result["machine"] = machine()
    result["samples"] = [asdict(s) for s in samples]
    plot(samples, result, args.plot)
    dump(result, args.json)
    print(summary(result), flush=True)


if __name__ == "__main__":
    main()
