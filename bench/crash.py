"""Crash recovery: SIGKILL ``python -m worker run`` at random points of a stream with reposts, restart it,
and hold what README's "Delivery guarantees" promise against an uninterrupted run of the same records.

One Tansu broker, one input topic of generated posts (``devkit.posts``: originals, exact copies, spam
edits, rewrites, near misses), read by three runs, each with its own group, output topics and embedded
index: ``ref`` and ``control`` run once to the end (``control`` shows what differs between two runs with
no crash at all); ``crash`` is SIGKILLed ``--kills`` times, each time after a random
number of newly decided posts plus a random delay of up to one second (so kills land in every phase
of a batch: embedding, publishing, flushing, committing, the index optimiser's copy and swap), restarted
each time, then left to finish and stopped with SIGTERM. A random kill mostly lands before the batch's
output reaches the broker, where a replay redoes work but republishes nothing; ``--aimed`` adds kills
sent the moment a batch's decisions appear on the topic, racing the commit that follows within
milliseconds, so that republished copies exist to compare. Then:

- complete: every input position has a decision (and every post id);
- equal: collapsed by key (first copy), the crash run's flags and decisions equal the reference's,
  compared as JSON field by field; ``stage`` is counted apart, as two independent runs cut their batches
  differently and may legitimately differ there;
- byte-identical: every republished flag or decision equals its first copy, byte for byte;
- replays: extra copies (work redone), next to what was decided but not committed at each kill;
- order: first decisions that came out after the decision of a post later by order key (the worker
  merges its partitions by timestamp; anything here means a post was decided before an earlier one
  of another partition had been read);
- index: recall@10 of its search against brute force (below 1: approximate, so a neighbour seen
  exactly inside one batch can be missed from the index in another run); after each kill (on a copy
  of the directory, so the restarted worker's own recovery is left untouched) and at the end, the
  index holds every committed document, with the stage its decision reported.

``--delivery exactly-once`` runs them all with the transactional producer and reads the outputs with
read_committed. Tansu 0.6 commits transactions, but records of a transaction that never committed
(the killed worker's open one) stay visible and are not aborted when the next worker re-inits the same
transactional id, so copies after a crash are expected there: they measure Tansu, not the worker.

    python -m bench.crash --n 10000 --kills 5 --aimed 3 --seed 7 --json bench/results/crash.json
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bench.harness import (
    Position,
    Producer,
    Tail,
    argv_command,
    dump,
    log_events,
    rel,
    stamp,
    start_worker,
    stop_worker,
    worker_env,
)
from devkit.broker import tansu
from devkit.kafka import Names, Output, committed, create_topics, read_all
from devkit.posts import generate
from devkit.tiny import tiny_model

K = TypeVar("K", bound=Hashable)
INPUT = "documents-crash"
MAX_KILL_DELAY_S = 1.0  # about two batches of 256 with the tiny model: kills land in every phase


@dataclass
class Kill:
    """One SIGKILL and what the dead worker left behind."""

    life: int
    kind: str  # "random": after a random delay; "aimed": the moment a batch's decisions appear
    target: int  # distinct positions decided that this life waited for
    delay_s: float  # then this much longer
    life_s: float
    first_output_s: float | None  # start → first decision record of this life (restart cost)
    ready_s: float | None  # start → the worker's "worker_started" log line (model and index loaded)
    decided: int  # distinct positions decided by then (the outputs of the dead process are final)
    copies: int  # decision records by then
    committed: int
    uncommitted_decided: int  # decided but not committed: a restart must redo these
    index_points: int | None = None
    index_missing_committed: int | None = None


@dataclass
class Run:
    """A run's lives, its wall time and what came out of it."""

    name: str
    wall_s: float = 0.0
    kills: list[Kill] = field(default_factory=list)
    final_life_s: float = 0.0
    final_first_output_s: float | None = None
    final_ready_s: float | None = None
    final_exit: int | None = None
    reused_vectors: int = 0  # replayed documents found already stored (the restarted worker's logs)


class Life:
    """One worker process from start to kill: its progress as the decisions tail sees it."""

    def __init__(self, tail: Tail, process: subprocess.Popen[bytes], n: int) -> None:
        self.tail, self.process, self.n = tail, process, n
        self.copies_before, self.decided_before = tail.snapshot()
        self.started, self.started_wall = time.monotonic(), time.time()
        self.first_output_s: float | None = None

    def decided(self, target: int) -> bool:
        """At least ``target`` distinct positions decided; notes this life's first decision record."""
        copies, decided = self.tail.snapshot()
        if self.first_output_s is None and copies > self.copies_before:
            self.first_output_s = round(time.monotonic() - self.started, 2)
        return decided >= target

    def wait_for_output(self, timeout_s: float) -> None:
        """Until the next decision record appears (a batch's output is at the broker), or none can."""
        copies, _ = self.tail.snapshot()
        deadline = time.monotonic() + timeout_s
        while self.tail.snapshot()[0] == copies and self.tail.snapshot()[1] < self.n:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"worker exited with {self.process.poll()} or stalled before its next batch"
                )
            time.sleep(0.001)

    def wait(self, target: int, timeout_s: float, what: str, then: Callable[[], bool] = lambda: True) -> None:
        """Until ``target`` positions are decided and ``then`` holds; fail early if the worker dies."""
        deadline = time.monotonic() + timeout_s
        while not (self.decided(target) and then()):
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode} while waiting for {what}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not within {timeout_s} s")
            time.sleep(0.02)


def settle(tail: Tail, quiet_s: float = 1.0, timeout_s: float = 10.0) -> None:
    """Wait until the tail has read everything a dead worker published (nothing new for ``quiet_s``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and time.monotonic() - max(tail.last_arrival, 0.0) < quiet_s:
        time.sleep(0.1)


def ready_after(log_path: Path, started_wall: float) -> float | None:
    """Seconds from the process start to its "worker_started" line; None if it never got there."""
    from datetime import datetime

    for event in log_events(log_path):
        if event.get("event") == "worker_started":
            at = datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()
            return round(at - started_wall, 2)
    return None


def order_of(position: Position, post: dict[str, Any]) -> tuple[int, int]:
    """The worker's order key of a post (``worker.core.records.order_key``): timestamp, partition/offset."""
    return (stamp(post), position[0] << 40 | position[1])


def index_check(
    index: Path, dim: int, version: str, keys: Sequence[tuple[str, str]], copy_to: Path | None
) -> tuple[int, dict[tuple[str, str], str | None]]:
    """Points in the index and the stored stage of each of ``keys`` found there.

    With ``copy_to`` the directory is copied first and the copy opened: opening an index flushes it and
    removes leftovers, which must stay the restarted worker's job.
    """
    from worker.core.decide import decode_verdict
    from worker.index.edge import EdgeIndex

    path = index
    if copy_to is not None:
        shutil.rmtree(copy_to, ignore_errors=True)
        shutil.copytree(index, copy_to, ignore=shutil.ignore_patterns(".lock"))
        path = copy_to
    edge = EdgeIndex(path)
    try:
        edge.ensure(dim, version)
        found: dict[tuple[str, str], str | None] = {}
        for i in range(0, len(keys), 1000):
            for key, stored in edge.fetch(keys[i : i + 1000]).items():
                first = decode_verdict(stored.decision)
                found[key] = None if first is None or first.duplicate_of is None else first.duplicate_of.stage
        return edge.count(), found
    finally:
        edge.close()
        if copy_to is not None:
            shutil.rmtree(copy_to, ignore_errors=True)


def index_recall(
    index: Path, dim: int, version: str, positions: dict[Position, dict[str, Any]], sample: int, seed: int
) -> float:
    """recall@10 of the index's "earlier neighbours" search against brute force, over ``sample`` posts.

    Below 1.0 the search is approximate (HNSW): a neighbour found exactly inside a batch may be missed
    from the index, so two runs that batch a post differently may list different matches for it.
    """
    import numpy as np

    from worker.core.ports import Query
    from worker.index.edge import EdgeIndex

    order = {
        (str(post["tenant"]), str(post["id"])): order_of(position, post)
        for position, post in positions.items()
    }
    keys = sorted(order)
    edge = EdgeIndex(index)
    try:
        edge.ensure(dim, version)
        vectors = {}
        for i in range(0, len(keys), 1000):
            vectors.update({k: v.vector for k, v in edge.fetch(keys[i : i + 1000]).items()})
        matrix = np.stack([vectors[k] for k in keys]).astype(np.float64)
        tenants = np.array([k[0] for k in keys])
        orders = [order[k] for k in keys]
        hits = total = 0
        for i in random.Random(seed).sample(range(len(keys)), min(sample, len(keys))):
            tenant, doc_id = keys[i]
            earlier = [j for j in np.flatnonzero(tenants == tenant) if orders[j] < orders[i]]
            if len(earlier) < 10:
                continue
            scores = matrix[earlier] @ matrix[i]
            truth = {keys[earlier[j]][1] for j in np.argsort(-scores)[:10]}
            found = edge.search([Query(vectors[keys[i]], tenant, orders[i], doc_id)], 10)[0]
            hits += len(truth & {n.doc_id for n in found})
            total += len(truth)
        return hits / total if total else float("nan")
    finally:
        edge.close()


def run_worker_lives(
    name: str,
    env: dict[str, str],
    tail: Tail,
    bootstrap: str,
    names: Names,
    positions: dict[Position, dict[str, Any]],
    plan: Sequence[str],
    rng: random.Random,
    work: Path,
    model_meta: tuple[int, str],
    index: Path,
    timeout_s: float,
    batch: int,
) -> Run:
    """Start, kill once per entry of ``plan`` ("random" or "aimed"), restart; the last life runs to the end
    and is stopped with SIGTERM. Kill targets leave two batches to go, so an aimed kill has a batch to
    aim at."""
    n, kills = len(positions), len(plan)
    run = Run(name)
    began = time.monotonic()

    def all_committed() -> bool:
        return sum(committed(bootstrap, names.group, names.input).values()) >= n

    for life in range(kills + 1):
        log_path = work / f"worker-{name}-{life}.log"
        watch = Life(tail, start_worker(env, log_path), n)
        try:
            if life == kills:  # the last life: to the end, then a clean stop
                watch.wait(n, timeout_s, f"{name}: all {n} committed", then=all_committed)
                run.final_life_s = round(time.monotonic() - watch.started, 2)
                run.final_first_output_s = watch.first_output_s
                run.final_exit = stop_worker(watch.process)
                run.final_ready_s = ready_after(log_path, watch.started_wall)
                break
            share = 2 * (n - watch.decided_before) // (kills - life + 1)
            target = watch.decided_before + rng.randint(1, max(1, share))
            target = max(watch.decided_before + 1, min(target, n - 2 * batch))
            delay = rng.uniform(0.0, MAX_KILL_DELAY_S) if plan[life] == "random" else 0.0
            watch.wait(target, timeout_s, f"{name}: {target} decided")
            if plan[life] == "aimed":  # between the output reaching the broker and the commit, if in time
                watch.wait_for_output(timeout_s)
            time.sleep(delay)
        finally:  # the last life has exited by now, unless something failed: then it goes too
            if watch.process.poll() is None:
                watch.process.send_signal(signal.SIGKILL)
            watch.process.wait()
        life_s = time.monotonic() - watch.started
        settle(tail)
        copies, decided = tail.snapshot()
        offsets = committed(bootstrap, names.group, names.input)
        undone = sum(1 for p, o in tail.decided_positions() if o >= offsets.get(p, 0))
        kill = Kill(
            life=life,
            kind=plan[life],
            target=target,
            delay_s=round(delay, 3),
            life_s=round(life_s, 2),
            first_output_s=watch.first_output_s,
            ready_s=ready_after(log_path, watch.started_wall),
            decided=decided,
            copies=copies,
            committed=sum(offsets.values()),
            uncommitted_decided=undone,
        )
        if index.exists():
            done = [positions[(p, o)] for p, o in positions if o < offsets.get(p, 0)]
            keys = [(str(post["tenant"]), str(post["id"])) for post in done]
            points, found = index_check(index, *model_meta, keys, work / f"index-copy-{name}")
            kill.index_points, kill.index_missing_committed = points, len(keys) - len(found)
        run.kills.append(kill)
        print(
            f"  {name} life {life}: killed after {life_s:.1f} s, {kill.decided}/{n} decided, "
            f"{kill.committed} committed, {undone} decided-but-uncommitted, "
            f"index missing {kill.index_missing_committed} committed",
            flush=True,
        )
    run.wall_s = time.monotonic() - began
    return run


# ------------------------------------------------------------------------------------------ checks


def by_key(outputs: Iterable[Output], key: Callable[[Output], K]) -> dict[K, list[bytes]]:
    """Copies of each message, in topic order."""
    out: dict[K, list[bytes]] = defaultdict(list)
    for record in outputs:
        out[key(record)].append(record.value)
    return dict(out)


def source_of(record: Output) -> Position:
    source = json.loads(record.value)["source"]
    return (int(source["partition"]), int(source["offset"]))


def key_of(record: Output) -> bytes:
    return record.key or b""


def copies_summary(groups: dict[K, list[bytes]]) -> dict[str, Any]:
    """Replays (extra copies), how many differ from their first copy, in which fields, examples."""
    fields: Counter[str] = Counter()
    examples: list[dict[str, Any]] = []
    for key, copies in groups.items():
        for copy in copies[1:]:
            if copy == copies[0]:
                continue
            a, b = json.loads(copies[0]), json.loads(copy)
            differing = sorted(f for f in set(a) | set(b) if a.get(f) != b.get(f))
            fields.update(differing)
            if len(examples) < 5:
                examples.append({"key": repr(key), "first": copies[0].decode(), "republished": copy.decode()})
    return {
        "distinct": len(groups),
        "records": sum(len(c) for c in groups.values()),
        "replays": sum(len(c) - 1 for c in groups.values()),
        "replayed_keys": sum(len(c) > 1 for c in groups.values()),
        "copies_not_byte_identical": sum(copy != copies[0] for copies in groups.values() for copy in copies),
        "differing_fields": dict(fields),
        "examples": examples,
    }


SCORE_TOLERANCE = 1e-6
"""One unit in the last published decimal: a post embedded beside other posts than in the reference run
(a crash moved its batch boundary before its vector was stored) can score that much apart, because a
forward pass's last float bits depend on which texts share it (README, "Reruns agree")."""


def scores_within_tolerance(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same matches in the same order and the same decision; scores at most ``SCORE_TOLERANCE`` apart."""
    if {k: v for k, v in a.items() if k not in ("score", "matches", "stage")} != {
        k: v for k, v in b.items() if k not in ("score", "matches", "stage")
    }:
        return False
    ma, mb = a.get("matches") or [], b.get("matches") or []
    if [m["id"] for m in ma] != [m["id"] for m in mb]:
        return False
    pairs = [(m["score"], n["score"]) for m, n in zip(ma, mb, strict=True)] + [
        (a.get("score"), b.get("score"))
    ]
    return all(
        x == y or (x is not None and y is not None and abs(x - y) <= SCORE_TOLERANCE + 1e-12)
        for x, y in pairs
    )


def compare(
    crash: dict[K, list[bytes]], ref: dict[K, list[bytes]], partition_of: dict[str, int]
) -> dict[str, Any]:
    """First copies, field by field: equal, differing only in ``stage``, differing only in scores within
    ``SCORE_TOLERANCE``, differing elsewhere; and how many of the latter gained or lost a match from
    another input partition than the document's own."""
    fields: Counter[str] = Counter()
    equal = only_stage = within = other = cross = 0
    examples: list[dict[str, Any]] = []
    for key in sorted(set(crash) & set(ref), key=repr):
        a, b = json.loads(crash[key][0]), json.loads(ref[key][0])
        differing = sorted(f for f in set(a) | set(b) if a.get(f) != b.get(f))
        fields.update(differing)
        if not differing:
            equal += 1
            continue
        if differing == ["stage"]:
            only_stage += 1
        elif scores_within_tolerance(a, b):
            within += 1
        else:
            other += 1
            changed = matched_ids(a) ^ matched_ids(b)
            own = partition_of.get(str(a["id"]))
            cross += any(partition_of.get(i) != own for i in changed)
        if len(examples) < 5:
            examples.append(
                {"key": repr(key), **{f: {"crash": a.get(f), "ref": b.get(f)} for f in differing}}
            )
    return {
        "compared": len(set(crash) & set(ref)),
        "only_in_crash": len(set(crash) - set(ref)),
        "only_in_ref": len(set(ref) - set(crash)),
        "equal": equal,
        "differ_only_in_stage": only_stage,
        "differ_only_in_scores_within_tolerance": within,
        "differ_elsewhere": other,
        "differ_elsewhere_by_a_match_from_another_partition": cross,
        "differing_fields": dict(fields),
        "examples": examples,
    }


def matched_ids(message: dict[str, Any]) -> set[str]:
    """The ids a flag or decision names: its duplicate_of and its listed matches."""
    ids = {str(m["id"]) for m in message.get("matches") or []}
    return ids | ({str(message["duplicate_of"])} if message.get("duplicate_of") else set())


def out_of_order(decisions: list[Output], positions: dict[Position, dict[str, Any]]) -> int:
    """First decisions that came out after a decision of a later post (by order key): posts decided
    before an earlier post of another partition had been seen."""
    seen: set[Position] = set()
    latest: tuple[int, int] = (-1, -1)
    late = 0
    for record in decisions:
        position = source_of(record)
        if position in seen or position not in positions:
            continue
        seen.add(position)
        key = order_of(position, positions[position])
        if key < latest:
            late += 1
        latest = max(latest, key)
    return late


def analyse(
    positions: dict[Position, dict[str, Any]],
    crash: dict[str, list[Output]],
    ref: dict[str, list[Output]],
) -> dict[str, Any]:
    """Every figure that compares the crashed run with itself and with the reference."""
    decisions, ref_decisions = by_key(crash["decisions"], source_of), by_key(ref["decisions"], source_of)
    flags, ref_flags = by_key(crash["flags"], key_of), by_key(ref["flags"], key_of)
    ids = {str(json.loads(copies[0])["id"]) for copies in decisions.values()}
    posts = {str(post["id"]) for post in positions.values()}
    partition_of = {str(post["id"]): p for (p, _), post in positions.items()}
    return {
        "decisions_complete": set(decisions) == set(positions),
        "decided_positions": len(set(decisions) & set(positions)),
        "undecided_positions": len(set(positions) - set(decisions)),
        "decided_ids_equal_posts": ids == posts,
        "ref_decisions_complete": set(ref_decisions) == set(positions),
        "flags": copies_summary(flags),
        "decisions": copies_summary(decisions),
        "ref_flags": copies_summary(ref_flags),
        "ref_decisions": copies_summary(ref_decisions),
        "flags_vs_ref": compare(flags, ref_flags, partition_of),
        "decisions_vs_ref": compare(decisions, ref_decisions, partition_of),
        "decided_out_of_order": out_of_order(crash["decisions"], positions),
        "ref_decided_out_of_order": out_of_order(ref["decisions"], positions),
        "dead_letters": len(crash["dlq"]),
        "stages": dict(Counter(str(json.loads(c[0])["stage"]) for c in flags.values())),
    }


# -------------------------------------------------------------------------------------------- main


def measure(
    n: int,
    kills: int,
    aimed: int,
    seed: int,
    model: Path | None,
    work: Path,
    *,
    delivery: str = "at-least-once",
    partitions: int = 3,
    batch: int = 256,
    optimize_every: int = 2000,
    timeout_s: float = 900.0,
    control: bool = True,
) -> dict[str, Any]:
    """Build the stream (and the tiny model), run ``ref`` then ``crash`` on one broker, check both.

    ``kills`` random kills and ``aimed`` ones, in a seeded random order. ``control``: a second
    uninterrupted run, compared with ``ref``, shows what differs between two runs without any crash.
    """
    from worker.model.directory import read_manifest

    rng = random.Random(seed)
    plan = ["random"] * kills + ["aimed"] * aimed
    rng.shuffle(plan)
    stream = generate(n, seed)
    posts = [dict(p) for p in stream.posts]
    if model is None:
        model = tiny_model(work / "tiny-model", [str(p["text"]) for p in posts[:2000]], seed)
    manifest = read_manifest(model)
    meta = (manifest.dim, manifest.version)
    read_committed = delivery == "exactly-once"
    extra = {"TWINFLAG_INDEX__OPTIMIZE_EVERY": str(optimize_every)}
    runs: dict[str, Run] = {}
    outputs: dict[str, dict[str, list[Output]]] = {}
    raw_counts: dict[str, dict[str, int]] = {}
    final_index: dict[str, Any] = {}
    with tansu(log_path=work / "tansu.log", timeout_s=30) as bootstrap:
        run_plans: list[tuple[str, list[str]]] = [
            ("ref", []),
            *([("control", [])] if control else []),
            ("crash", plan),
        ]
        for i, (name, _) in enumerate(run_plans):
            create_topics(bootstrap, Names.for_run(name, INPUT), partitions, with_input=i == 0)
        producer = Producer(bootstrap, INPUT)
        for post in posts:
            producer.send(post)
        producer.close()
        positions = producer.positions
        print(f"produced {len(positions)} posts to {INPUT} ({partitions} partitions)", flush=True)
        for name, lives in run_plans:
            names = Names.for_run(name, INPUT)
            index = work / f"index-{name}"
            env = worker_env(bootstrap, model, names, index, batch=batch, delivery=delivery, extra=extra)
            tail = Tail(bootstrap, names.decisions)
            try:
                run = run_worker_lives(
                    name,
                    env,
                    tail,
                    bootstrap,
                    names,
                    positions,
                    lives,
                    rng,
                    work,
                    meta,
                    index,
                    timeout_s,
                    batch,
                )
            finally:
                tail.close()
            run.reused_vectors = sum(
                int(e.get("reused_vectors", 0))
                for life in range(len(lives) + 1)
                for e in log_events(work / f"worker-{name}-{life}.log")
                if e.get("event") == "batch"
            )
            runs[name] = run
            print(f"{name}: {run.wall_s:.1f} s, exit {run.final_exit}", flush=True)
            outputs[name] = {
                kind: read_all(bootstrap, topic, read_committed=read_committed)
                for kind, topic in (
                    ("flags", names.flags),
                    ("decisions", names.decisions),
                    ("dlq", names.dlq),
                )
            }
            if read_committed:  # what a read_uncommitted reader would see, for comparison
                raw_counts[name] = {
                    kind: len(read_all(bootstrap, topic))
                    for kind, topic in (("flags", names.flags), ("decisions", names.decisions))
                }
            keys = [(str(p["tenant"]), str(p["id"])) for p in positions.values()]
            points, found = index_check(index, *meta, keys, None)
            first = by_key(outputs[name]["decisions"], source_of)
            stage_mismatch = sum(
                1
                for pos, post in positions.items()
                if pos in first
                and (str(post["tenant"]), str(post["id"])) in found
                and found[(str(post["tenant"]), str(post["id"]))] != json.loads(first[pos][0])["stage"]
            )
            final_index[name] = {
                "recall_at_10": index_recall(index, *meta, positions, 300, seed),
                "points": points,
                "missing": len(keys) - len(found),
                "holds_all": len(found) == len(keys),
                "stored_stage_differs_from_decision": stage_mismatch,
            }
    checks = analyse(positions, outputs["crash"], outputs["ref"])
    if control:  # two uninterrupted runs of the same records: what differs without any crash
        partition_of = {str(post["id"]): p for (p, _), post in positions.items()}
        checks["control_vs_ref"] = {
            kind: compare(
                by_key(outputs["control"][kind], key), by_key(outputs["ref"][kind], key), partition_of
            )
            for kind, key in (("flags", key_of), ("decisions", source_of))
        }
    uncommitted = sum(k.uncommitted_decided for k in runs["crash"].kills)
    checks["replays_cover_uncommitted"] = checks["decisions"]["replays"] >= uncommitted
    checks["decided_but_uncommitted_at_kills"] = uncommitted
    checks["index"] = final_index
    checks["index_held_committed_after_every_kill"] = all(
        k.index_missing_committed == 0 for k in runs["crash"].kills
    )
    if read_committed:
        checks["read_uncommitted_records"] = raw_counts
    return {
        "n": n,
        "kills": kills + aimed,
        "random_kills": kills,
        "aimed_kills": aimed,
        "plan": plan,
        "seed": seed,
        "delivery": delivery,
        "read_committed": read_committed,
        "partitions": partitions,
        "batch": batch,
        "optimize_every": optimize_every,
        "model": rel(model) if not str(model).startswith(str(work)) else "tiny random BERT (devkit.tiny)",
        "model_version": manifest.version,
        "threshold": manifest.thresholds.decision,
        "runs": {name: asdict(run) for name, run in runs.items()},
        "checks": checks,
    }


def verdicts(result: dict[str, Any]) -> dict[str, bool]:
    """The yes/no answers the summary leads with."""
    c = result["checks"]
    return {
        "every document decided": bool(c["decisions_complete"] and c["decided_ids_equal_posts"]),
        "flags equal to the uninterrupted run (all fields)": c["flags_vs_ref"]["equal"]
        == c["flags_vs_ref"]["compared"]
        and not c["flags_vs_ref"]["only_in_crash"]
        and not c["flags_vs_ref"]["only_in_ref"],
        "flags equal to the uninterrupted run (all but stage; scores within 1e-6)": c["flags_vs_ref"][
            "differ_elsewhere"
        ]
        == 0
        and not c["flags_vs_ref"]["only_in_crash"]
        and not c["flags_vs_ref"]["only_in_ref"],
        "decided in timestamp order across partitions (first copies)": c["decided_out_of_order"] == 0
        and c["ref_decided_out_of_order"] == 0,
        "republished flags byte-identical": c["flags"]["copies_not_byte_identical"] == 0,
        "republished decisions byte-identical": c["decisions"]["copies_not_byte_identical"] == 0,
        "index held every committed document after each kill": bool(
            c["index_held_committed_after_every_kill"]
        ),
        "index holds every document at the end": bool(c["index"]["crash"]["holds_all"]),
        "stored stage = published stage": c["index"]["crash"]["stored_stage_differs_from_decision"] == 0,
        "no duplicates visible (exactly-once only)": c["decisions"]["replays"] == 0
        and c["flags"]["replays"] == 0,
    }


def summary(result: dict[str, Any]) -> str:
    """A short Markdown report of one run."""
    c, crash, ref = result["checks"], result["runs"]["crash"], result["runs"]["ref"]
    answers = verdicts(result)
    restarts = [k["first_output_s"] for k in crash["kills"][1:]] + [crash["final_first_output_s"]]
    ready = [k["ready_s"] for k in crash["kills"][1:]] + [crash["final_ready_s"]]
    if result["delivery"] != "exactly-once":
        answers.pop("no duplicates visible (exactly-once only)")
    lines = [
        f"### Crash recovery: {result['n']} posts, {result['kills']} SIGKILLs, {result['delivery']}",
        "",
        f"`{result['command']}`",
        "",
        "| check | result |",
        "|---|---|",
        *(f"| {k} | {'yes' if v else '**no**'} |" for k, v in answers.items()),
        "",
        f"- flags: {c['flags']['distinct']} distinct, {c['flags']['replays']} replayed copies "
        f"(reference: {c['ref_flags']['distinct']}); vs reference: {c['flags_vs_ref']['equal']} equal, "
        f"{c['flags_vs_ref']['differ_only_in_stage']} differ only in `stage`, "
        f"{c['flags_vs_ref'].get('differ_only_in_scores_within_tolerance', 0)} only in scores within 1e-6, "
        f"{c['flags_vs_ref']['differ_elsewhere']} elsewhere, "
        f"{c['flags_vs_ref']['only_in_crash']} only in the crashed run, "
        f"{c['flags_vs_ref']['only_in_ref']} only in the reference; fields: "
        f"{c['flags_vs_ref']['differing_fields'] or 'none'}; differing elsewhere by a match from another "
        f"input partition: {c['flags_vs_ref']['differ_elsewhere_by_a_match_from_another_partition']}",
        f"- decisions: {c['decisions']['distinct']}/{result['n']} positions, {c['decisions']['replays']} "
        f"replayed copies; {c['decided_but_uncommitted_at_kills']} decided-but-uncommitted at the kills; "
        f"vs reference: {c['decisions_vs_ref']['differ_only_in_stage']} differ only in `stage`, "
        f"{c['decisions_vs_ref']['differ_elsewhere']} elsewhere "
        f"({c['decisions_vs_ref']['differ_elsewhere_by_a_match_from_another_partition']} of them by a match "
        "from another input partition)",
        f"- order: {c['decided_out_of_order']} first decisions came out after a later post's "
        f"(reference: {c['ref_decided_out_of_order']})",
        f"- index: recall@10 of its search vs brute force {c['index']['crash']['recall_at_10']:.4f} "
        f"(reference {c['index']['ref']['recall_at_10']:.4f}); "
        f"{c['index']['crash']['points']} points at the end, "
        f"missing {c['index']['crash']['missing']}; "
        f"after each kill missing committed: {[k['index_missing_committed'] for k in crash['kills']]}",
        f"- wall: reference {ref['wall_s']:.0f} s, crashed run {crash['wall_s']:.0f} s; restart → first "
        f"decision: {restarts} s, of which loading model and index: {ready} s",
    ]
    if "control_vs_ref" in c:
        cf, cd = c["control_vs_ref"]["flags"], c["control_vs_ref"]["decisions"]
        lines.append(
            f"- two uninterrupted runs (control vs reference), no crash at all: flags {cf['equal']} equal, "
            f"{cf['differ_only_in_stage']} differ only in `stage`, {cf['differ_elsewhere']} elsewhere "
            f"({cf['differ_elsewhere_by_a_match_from_another_partition']} by a match from another input "
            f"partition), {cf['only_in_crash']} + {cf['only_in_ref']} flagged by one run only; decisions "
            f"differing elsewhere: {cd['differ_elsewhere']}"
        )
    if result["delivery"] == "exactly-once":
        lines.append(
            f"- read_committed saw {c['decisions']['records']} decision records; read_uncommitted "
            f"{c['read_uncommitted_records']['crash']['decisions']} (Tansu 0.6 leaves a killed worker's open "
            "transaction visible and does not abort it on re-init: copies here are Tansu's, see README)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import sys

    args_list = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="posts in the generated stream")
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs after a random delay")
    parser.add_argument(
        "--aimed",
        type=int,
        default=3,
        help="extra SIGKILLs the moment a batch's decisions appear, before its commit if in time (replays)",
    )
    parser.add_argument("--seed", type=int, default=7, help="stream, tiny model and kill points")
    parser.add_argument(
        "--model", type=Path, default=None, help="model directory (default: a tiny random one)"
    )
    parser.add_argument("--delivery", choices=["at-least-once", "exactly-once"], default="at-least-once")
    parser.add_argument("--partitions", type=int, default=3, help="partitions of the input topic")
    parser.add_argument("--batch", type=int, default=256, help="TWINFLAG_KAFKA__MAX_POLL_RECORDS")
    parser.add_argument(
        "--optimize-every",
        type=int,
        default=2000,
        help="TWINFLAG_INDEX__OPTIMIZE_EVERY (kills hit swaps too)",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="longest wait for one life, seconds")
    parser.add_argument("--work", type=Path, default=None, help="keep logs and indexes here (default: temp)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument(
        "--no-control", action="store_true", help="skip the second uninterrupted run (ref vs control)"
    )
    args = parser.parse_args(args_list)
    from bench.report import machine

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-ups: worker, broker, temp dir
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="twinflag-crash-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = measure(
            args.n,
            args.kills,
            args.aimed,
            args.seed,
            args.model,
            work,
            delivery=args.delivery,
            partitions=args.partitions,
            batch=args.batch,
            optimize_every=args.optimize_every,
            timeout_s=args.timeout,
            control=not args.no_control,
        )
    result["command"] = argv_command("bench.crash", args_list)
    result["wall_s"] = round(time.monotonic() - started, 1)
    result["machine"] = machine()
    result["verdicts"] = verdicts(result)
    print(summary(result), flush=True)
    dump(result, args.json)


if __name__ == "__main__":
    main()
