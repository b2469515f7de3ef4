"""Promotion under load: a new model goes live while posts keep flowing, and nothing is lost or decided
twice with different outcomes (README, "Promoting a new model").

One Tansu broker, one input topic fed at a steady rate from start to end. The live worker (``python -m
worker run``, the live model, its own embedded index) decides; then a shadow worker starts with the
candidate model, its own group, its own index and shadow topics, and replays the topic from the start.
Once its ``twinflag_consumer_lag`` (``/metrics``) is down to a second of posts, the switch, as the
runbook does it: SIGTERM the live worker (it commits what it sent); wait until the shadow's committed
offsets pass the live group's on every partition; SIGTERM the shadow; start the live worker again with
the candidate model and the shadow's index, in the live group. The posts between the two groups'
positions are in the new index already, with the candidate's stored decisions: they are republished.

Checked on the live decisions topic: every produced post has a decision (none lost); one distinct
decision per key (byte-identical replays collapse); every post at or past the live group's position at
the switch, and so every post produced after the switch began, is decided by the candidate (the ones
before by the live model); the republished decisions equal the shadow's byte for byte; the new index
holds every post (no hole between the groups' positions). Timed: the longest gap between decisions and
the worst post latency during the switch (the blip), against the same figures before it.

    python -m bench.promotion --rate 50 --before 30 --after 30 --json bench/results/promotion.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.crash import index_check
from bench.harness import Producer, argv_command, dump, rel, start_worker, stop_worker, worker_env
from bench.soak import Pacer, long_stream
from devkit.broker import tansu
from devkit.kafka import Names, Output, committed, create_topics, read_all
from devkit.tiny import tiny_model
from worker.model.directory import read_manifest

INPUT = "documents-promotion"


class Arrivals(threading.Thread):
    """Every record of a topic with the moment this process read it (``time.monotonic``)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(name=f"arrivals-{topic}", daemon=True)
        self.bootstrap, self.topic = bootstrap, topic
        self.records: list[tuple[float, bytes, bytes]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(
            self.topic, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=20
        )
        try:
            while not self.stop.is_set():
                for batch in consumer.poll(timeout_ms=100).values():
                    now = time.monotonic()
                    self.records += [(now, r.key or b"", r.value) for r in batch]
        finally:
            consumer.close()

    def positions(self) -> set[tuple[int, int]]:
        return {(s["partition"], s["offset"]) for s in (json.loads(v)["source"] for _, _, v in self.records)}


def metric(env: dict[str, str], name: str) -> float | None:
    """One unlabelled sample of a worker's ``/metrics``; None while it does not answer."""
    url = f"http://127.0.0.1:{env['TWINFLAG_METRICS_PORT']}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def wait(what: str, done: Any, timeout_s: float, process: Any = None) -> float:
    """Poll ``done()`` every 0.1 s; seconds waited. Fails if ``process`` exits or time runs out."""
    began = time.monotonic()
    while not done():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"worker exited with {process.returncode} while waiting for {what}")
        if time.monotonic() - began > timeout_s:
            raise TimeoutError(f"{what} not within {timeout_s} s")
        time.sleep(0.1)
    return round(time.monotonic() - began, 2)


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    posts = long_stream(int(args.rate * (args.before + args.after + args.budget)) + 1, args.seed)
    texts = [str(p["text"]) for p in posts[:2000]]
    live_model = args.live or tiny_model(work / "live-model", texts, seed=args.seed)
    candidate = args.candidate or tiny_model(work / "candidate-model", texts, seed=args.seed + 1)
    old, new = read_manifest(live_model).version, read_manifest(candidate).version
    if old == new:
        raise SystemExit("the live and candidate models have the same version: nothing to promote")
    live, shadow = Names.for_run("live", INPUT), Names.for_run("shadow", INPUT)
    old_index, new_index = work / "index-live", work / "index-candidate"
    marks: dict[str, float] = {}
    with tansu(log_path=work / "tansu.log", timeout_s=30) as bootstrap:
        create_topics(bootstrap, live, args.partitions)
        create_topics(bootstrap, shadow, with_input=False)
        arrivals = Arrivals(bootstrap, live.decisions)
        arrivals.start()
        producer = Producer(bootstrap, INPUT)
        env = worker_env(bootstrap, live_model, live, old_index)
        worker = start_worker(env, work / "live.log")
        producer.send(posts[0])  # ready first: the run measures a running worker, not its start
        producer.flush()
        wait("the live worker's first decision", lambda: len(arrivals.records) > 0, 180, worker)
        pacer = Pacer(producer, posts[1:], args.rate, len(posts) / args.rate)
        pacer.start()
        time.sleep(args.before)
        print(f"shadow starts: {pacer.offered} posts offered", flush=True)
        marks["shadow_start"] = time.monotonic()
        shadow_env = worker_env(
            bootstrap, candidate, shadow, new_index, extra={"TWINFLAG_COMMIT_INTERVAL_MS": "1000"}
        )
        shadow_worker = start_worker(shadow_env, work / "shadow.log")
        target = pacer.acked

        def caught_up() -> bool:
            lag, records = (metric(shadow_env, f"twinflag_{m}") for m in ("consumer_lag", "records_total"))
            return lag is not None and records is not None and records >= target and lag <= args.rate

        catch_up_s = wait("the shadow to catch up", caught_up, args.budget, shadow_worker)
        print(f"shadow caught up in {catch_up_s} s; switch", flush=True)
        marks["switch"], offered_at_switch = time.monotonic(), pacer.offered
        live_exit = stop_worker(worker)
        marks["live_stopped"] = time.monotonic()
        at_live = committed(bootstrap, live.group, INPUT)

        def shadow_passed() -> bool:
            at_shadow = committed(bootstrap, shadow.group, INPUT)
            return all(at_shadow.get(p, 0) >= offset for p, offset in at_live.items())

        wait("the shadow to pass the live group's offsets", shadow_passed, 60, shadow_worker)
        shadow_exit = stop_worker(shadow_worker)
        at_shadow = committed(bootstrap, shadow.group, INPUT)
        marks["shadow_stopped"] = time.monotonic()
        before_restart = len(arrivals.records)
        worker = start_worker(worker_env(bootstrap, candidate, live, new_index), work / "promoted.log")
        wait(
            "the promoted worker's first decision",
            lambda: len(arrivals.records) > before_restart,
            180,
            worker,
        )
        marks["promoted_first_decision"] = time.monotonic()
        time.sleep(args.after)
        pacer.stop.set()
        pacer.join()
        wanted = set(producer.positions)
        wait("every post decided", lambda: wanted <= arrivals.positions(), 120, worker)
        promoted_exit = stop_worker(worker)
        time.sleep(1.0)  # the tail reads what the stop flushed
        arrivals.stop.set()
        arrivals.join(10)
        flags = read_all(bootstrap, live.flags)
        shadow_decisions = read_all(bootstrap, shadow.decisions)
        producer.close()
    keys = sorted({(str(p["tenant"]), str(p["id"])) for p in producer.positions.values()})
    points, found = index_check(new_index, read_manifest(candidate).dim, new, keys, None)
    run = {
        "rate": args.rate,
        "partitions": args.partitions,
        "live_model": {"version": old, "path": rel(args.live) if args.live else "devkit.tiny, random"},
        "candidate_model": {
            "version": new,
            "path": rel(candidate) if args.candidate else "devkit.tiny, random",
        },
        "offered_at_switch": offered_at_switch,
        "catch_up_s": catch_up_s,
        "exits": {"live": live_exit, "shadow": shadow_exit, "promoted": promoted_exit},
        "committed_at_switch": {"live": at_live, "shadow": at_shadow},
        "handed_over": sum(at_shadow.get(p, 0) - o for p, o in at_live.items()),
        "new_index": {"points": points, "missing": len(keys) - len(found)},
    }
    return run | checks(run, producer.positions, arrivals.records, (flags, shadow_decisions), marks, pacer)


def checks(
    run: dict[str, Any],
    produced: dict[tuple[int, int], dict[str, Any]],
    arrivals: list[tuple[float, bytes, bytes]],
    read: tuple[list[Output], list[Output]],
    marks: dict[str, float],
    pacer: Pacer,
) -> dict[str, Any]:
    """What the live decisions and flags topics (and the shadow's decisions) say about the switch."""
    order = {str(p["id"]): i for i, p in enumerate(pacer.posts)}  # the pacer's index of each post
    old, new = run["live_model"]["version"], run["candidate_model"]["version"]
    at_live = run["committed_at_switch"]["live"]
    by_key: dict[bytes, set[bytes]] = defaultdict(set)
    first: dict[tuple[int, int], tuple[float, dict[str, Any], bytes]] = {}
    for at, key, value in arrivals:
        by_key[key].add(value)
        decision = json.loads(value)
        position = (decision["source"]["partition"], decision["source"]["offset"])
        first.setdefault(position, (at, decision, value))
    conflicts = {k.decode(): sorted(v.decode() for v in vs) for k, vs in by_key.items() if len(vs) > 1}
    wrong_side = [
        pos
        for pos, (_, decision, _) in first.items()
        if pos in produced and decision["model"] != (old if pos[1] < at_live.get(pos[0], 0) else new)
    ]
    after_switch = [
        d["model"] for p, (_, d, _) in first.items() if order.get(d["id"], -1) >= run["offered_at_switch"]
    ]
    flags, shadow_decisions = ([json.loads(o.value) for o in topic] for topic in read)
    shadow_bytes = {
        (d["source"]["partition"], d["source"]["offset"]): o.value
        for d, o in zip(shadow_decisions, read[1], strict=True)
    }
    at_shadow = run["committed_at_switch"]["shadow"]
    handed = [pos for pos in first if at_live.get(pos[0], 0) <= pos[1] < at_shadow.get(pos[0], 0)]
    late_flags = [f for f in flags if order.get(f["id"], -1) >= run["offered_at_switch"]]
    times = sorted(at for at, _, _ in arrivals)
    gaps = [(b - a, a) for a, b in itertools.pairwise(times)]
    lateness = [
        (at - (pacer.started + order[d["id"]] / pacer.rate), at)
        for at, d, _ in first.values()
        if d["id"] in order
    ]

    def worst(pairs: list[tuple[float, float]], since: float, until: float) -> float:
        return round(max((v for v, at in pairs if since <= at < until), default=0.0), 3)

    steady = (pacer.started + 5.0, marks["shadow_start"])
    switch = (marks["switch"] - 1.0, marks["promoted_first_decision"] + 5.0)
    span = times[-1] - pacer.started if times else 0.0
    return {
        "produced": len(produced),
        "decided": len(set(first) & set(produced)),
        "lost": len(set(produced) - set(first)),
        "decision_records": len(arrivals),
        "keys_with_two_decisions": len(conflicts),
        "conflicts": dict(list(conflicts.items())[:5]),
        "byte_identical_copies": len(arrivals) - len(first),
        "decided_by": {
            "live": sum(d["model"] == old for _, d, _ in first.values()),
            "candidate": sum(d["model"] == new for _, d, _ in first.values()),
        },
        "model_not_per_live_offsets": len(wrong_side),
        "produced_after_switch": len(after_switch),
        "after_switch_not_candidate": sum(m != new for m in after_switch),
        "flags_after_switch": len(late_flags),
        "flags_after_switch_not_candidate": sum(f["model"] != new for f in late_flags),
        "handed_over_equal_to_shadow": sum(first[p][2] == shadow_bytes.get(p) for p in handed),
        "switch_s": {
            "live_stop": round(marks["live_stopped"] - marks["switch"], 2),
            "shadow_pass_and_stop": round(marks["shadow_stopped"] - marks["live_stopped"], 2),
            "restart_to_first_decision": round(marks["promoted_first_decision"] - marks["shadow_stopped"], 2),
        },
        "longest_gap_s": {"steady": worst(gaps, *steady), "switch": worst(gaps, *switch)},
        "worst_latency_s": {"steady": worst(lateness, *steady), "switch": worst(lateness, *switch)},
        "decided_per_s": round(len(first) / span, 1) if span else 0.0,
        "offered_per_s": pacer.rate,
    }


def summary(r: dict[str, Any]) -> str:
    nil = (
        "lost",
        "keys_with_two_decisions",
        "after_switch_not_candidate",
        "flags_after_switch_not_candidate",
    )
    r["passed"] = (
        not any(r[k] for k in (*nil, "model_not_per_live_offsets")) and not r["new_index"]["missing"]
    )
    return "\n".join(
        [
            f"promotion {r['live_model']['version']} -> {r['candidate_model']['version']} "
            f"at {r['offered_per_s']:g} posts/s; shadow caught up in {r['catch_up_s']} s",
            f"  (a) keys with two different decisions {r['keys_with_two_decisions']} (byte-identical "
            f"replays {r['byte_identical_copies']}); handed over from the shadow's index {r['handed_over']}, "
            f"byte-identical to its decisions {r['handed_over_equal_to_shadow']}",
            f"  (b) produced {r['produced']}, decided {r['decided']}, lost {r['lost']}; "
            f"new index missing {r['new_index']['missing']}",
            f"  (c) decided by {r['decided_by']}; after the switch {r['produced_after_switch']} posts, "
            f"{r['after_switch_not_candidate']} not by the candidate; {r['flags_after_switch']} flags, "
            f"{r['flags_after_switch_not_candidate']} not; off the offsets {r['model_not_per_live_offsets']}",
            f"  (d) switch {r['switch_s']} s; longest gap between decisions {r['longest_gap_s']} s; worst "
            f"latency {r['worst_latency_s']} s; {r['decided_per_s']} decided/s",
            f"  verdict: {'PASS' if r['passed'] else 'FAIL'}",
        ]
    )


def main(args_list: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.promotion", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=50.0, help="posts offered per second, throughout")
    parser.add_argument("--before", type=float, default=30.0, help="seconds of the live worker alone")
    parser.add_argument("--after", type=float, default=30.0, help="seconds of the promoted worker")
    parser.add_argument("--budget", type=float, default=180.0, help="longest the shadow may take to catch up")
    parser.add_argument("--live", type=Path, default=None, help="live model (default: a tiny random one)")
    parser.add_argument("--candidate", type=Path, default=None, help="candidate (default: another one)")
    parser.add_argument("--partitions", type=int, default=3, help="partitions of the input topic")
    parser.add_argument("--seed", type=int, default=5, help="stream and tiny models")
    parser.add_argument("--work", type=Path, default=None, help="keep logs and indexes here (default: temp)")
    parser.add_argument("--json", type=Path, default=Path("bench/results/promotion.json"))
    args = parser.parse_args(args_list)
    from bench.report import machine

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="twinflag-promotion-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = measure(args, work)
    argv = sys.argv[1:] if args_list is None else args_list
    result |= {"command": argv_command("bench.promotion", argv), "machine": machine()}
    result["wall_s"] = round(time.monotonic() - started, 1)
    print(summary(result), flush=True)
    dump(result, args.json)


if __name__ == "__main__":
    main()
