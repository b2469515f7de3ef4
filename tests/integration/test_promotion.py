"""Promoting a new model while posts keep coming (README, "Promoting a new model"; ``bench.promotion`` is
the long version with real model processes).

The runbook's steps through the real broker and the real wiring (``run_worker``), in process, with two
hash encoders of different dimensions as the live and the candidate model: a shadow in its own group
with its own index replays the topic; the live worker stops; the shadow passes the live group's
offsets and stops; the live group restarts on the candidate and the shadow's index. A user sees every
post decided once, none lost, and every post sent after the switch began decided by the new model.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

from devkit.kafka import Names, committed, create_topics, read_all
from tests.fakes import HashEncoder
from tests.integration.conftest import make_stream, worker_settings
from worker.core.ports import Encoder
from worker.index.edge import EdgeIndex
from worker.service.settings import WorkerSettings
from worker.service.wiring import run_worker

pytestmark = pytest.mark.integration


class Worker:
    """``run_worker`` (what ``python -m worker run`` runs after loading the model) in a thread."""

    def __init__(self, broker: str, names: Names, index: Path, encoder: Encoder) -> None:
        settings = worker_settings(broker, names, index).model_copy(update={"commit_interval_ms": 300})
        self.stop_event, self.exit_code = threading.Event(), -1
        self.thread = threading.Thread(target=self._run, args=(settings, encoder), daemon=True)
        self.thread.start()

    def _run(self, settings: WorkerSettings, encoder: Encoder) -> None:
        self.exit_code = run_worker(settings, encoder, 0.8, self.stop_event)

    def stop(self) -> None:
        """What SIGTERM does: finish the batch, flush, commit, close."""
        self.stop_event.set()
        self.thread.join(30)
        assert self.exit_code == 0


class Feeder(threading.Thread):
    """Posts at a steady rate until stopped; ``sent`` counts what the broker acknowledged."""

    def __init__(self, broker: str, topic: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.broker, self.topic, self.rate = broker, topic, rate
        self.posts = make_stream(3000, seed=5)
        self.sent = 0
        self.halt = threading.Event()

    def run(self) -> None:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=self.broker, linger_ms=5)
        started = time.monotonic()
        for i, post in enumerate(self.posts):
            if self.halt.is_set():
                break
            time.sleep(max(0.0, started + i / self.rate - time.monotonic()))
            value = json.dumps({"id": post.id, "text": post.text}).encode()
            producer.send(self.topic, key=post.id.encode(), value=value).get(10)
            self.sent = i + 1
        producer.close(5)


def until(done: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_promotion_under_load_loses_nothing_and_switches_every_later_post(
    broker: str, names: Names, tmp_path: Path
) -> None:
    live_model, candidate = HashEncoder(version="hash-live"), HashEncoder(dim=128, version="hash-candidate")
    shadow = Names(
        names.input,
        names.flags + ".shadow",
        names.dlq + ".shadow",
        names.decisions + ".shadow",
        names.group + "-candidate",
    )
    create_topics(broker, names, partitions=3)
    create_topics(broker, shadow, with_input=False)

    def position(group: str) -> dict[int, int]:
        return committed(broker, group, names.input)

    feeder = Feeder(broker, names.input, rate=60.0)
    live = Worker(broker, names, tmp_path / "index-live", live_model)
    feeder.start()
    until(lambda: sum(position(names.group).values()) >= 60)
    shadow_worker = Worker(broker, shadow, tmp_path / "index-candidate", candidate)
    backlog = feeder.sent
    until(lambda: sum(position(shadow.group).values()) >= backlog)  # caught up with the history

    switch_at = feeder.sent  # the switch begins: live stops, the shadow passes it, the live group moves
    live.stop()
    stopped_at = feeder.sent  # the old model decides nothing sent after this
    at_live = position(names.group)
    until(lambda: all(position(shadow.group).get(p, 0) >= o for p, o in at_live.items()))
    shadow_worker.stop()
    promoted = Worker(broker, names, tmp_path / "index-candidate", candidate)
    until(lambda: sum(position(names.group).values()) >= switch_at + 60)
    feeder.halt.set()
    feeder.join(10)
    until(lambda: sum(position(names.group).values()) == feeder.sent)
    promoted.stop()

    decisions = [json.loads(o.value) for o in read_all(broker, names.decisions)]
    by_id: dict[str, set[str]] = defaultdict(set)
    for d in decisions:
        by_id[d["id"]].add(json.dumps(d, sort_keys=True))
    assert set(by_id) == {post.id for post in feeder.posts[: feeder.sent]}  # none lost
    assert all(len(copies) == 1 for copies in by_id.values())  # one decision per post
    # Everything the live group committed before it stopped is the old model's; every record after
    # its last commit the candidate's; posts sent while the live worker stopped may fall on either side.
    for d in decisions:
        source = d["source"]
        before_switch = source["offset"] < at_live.get(source["partition"], 0)
        assert d["model"] == ("hash-live" if before_switch else "hash-candidate"), d["id"]
    models = {d["id"]: d["model"] for d in decisions}
    assert models[feeder.posts[0].id] == "hash-live"
    assert {models[post.id] for post in feeder.posts[stopped_at : feeder.sent]} == {"hash-candidate"}
    index = EdgeIndex(tmp_path / "index-candidate")  # the new model knows every post, for later copies
    index.ensure(candidate.dim, candidate.version)
    assert index.count() == feeder.sent
    index.close()
