"""Moderators' verdicts through the real broker: a rejected pair is not flagged again, in the same run
and after a restart; a bad verdict is a dead letter; a tenant's learned point is announced.

The loop runs in process with the wiring of ``python -m worker run`` (``build_feedback`` included) and
the hash encoder, whose cosine is a trigram overlap: the pairs below are built to sit above 0.8.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from devkit.kafka import Names, create_topics, produce, read_topic
from tests.fakes import HashEncoder
from tests.integration.conftest import REPO, worker_settings
from worker.service.decision import step_config
from worker.service.feedback import build_feedback
from worker.service.loop import run
from worker.service.settings import WorkerSettings
from worker.service.wiring import build_consumer, build_index, build_publisher, topics

pytestmark = pytest.mark.integration

ORIGINAL = "the library on station road opens its new reading room on monday at nine with free coffee"
NEAR_MISS = "the library on station road opens its new reading room on friday at nine with free coffee"


def _topic(bootstrap: str, name: str) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, 1, 1)])
    finally:
        admin.close()


@contextmanager
def running(settings: WorkerSettings) -> Iterator[None]:
    """The worker loop, with its feedback, in a thread until the block ends."""
    encoder, stop = HashEncoder(), threading.Event()
    with ExitStack() as stack:
        index = build_index(settings.index, stack)
        index.ensure(encoder.dim, encoder.version)
        config = step_config(settings, encoder, threshold=0.8)
        feedback = build_feedback(settings, index, config, stack, stop)
        assert feedback is not None
        source = build_consumer(settings)
        stack.callback(source.close, 2.0)
        publisher = build_publisher(settings)
        stack.callback(publisher.close, 2.0)
        thread = threading.Thread(
            target=run,
            args=(source, encoder, index, publisher, config, stop),
            kwargs={"topics": topics(settings), "feedback": feedback, "commit_interval_s": 0.0},
        )
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(30)


def post(doc_id: str, text: str) -> tuple[bytes, bytes]:
    return doc_id.encode(), json.dumps({"id": doc_id, "text": text}).encode()


def deletion(doc_id: str) -> tuple[bytes, bytes]:
    return doc_id.encode(), json.dumps({"id": doc_id, "deleted": True}).encode()


def decisions(broker: str, names: Names, expect: int) -> dict[str, dict[str, Any]]:
    """The latest decision per document id, once ``expect`` decisions have been published."""
    found = [
        json.loads(value) for _, value in read_topic(broker, names.decisions, expect=expect, timeout_s=60)
    ]
    assert len(found) >= expect, found
    return {d["id"]: d for d in found}


def test_a_rejected_pair_is_not_flagged_again_in_the_same_run_nor_after_a_restart(
    broker: str, names: Names, tmp_path: Path
) -> None:
    verdicts, points = f"verdicts-{uuid.uuid4().hex[:8]}", f"points-{uuid.uuid4().hex[:8]}"
    create_topics(broker, names, partitions=1)
    _topic(broker, verdicts)
    _topic(broker, points)
    settings = worker_settings(
        broker, names, tmp_path / "index", verdicts_topic=verdicts, thresholds_topic=points
    )

    with running(settings):
        produce(broker, names.input, [post("a1", ORIGINAL), post("b1", NEAR_MISS)])
        first = decisions(broker, names, 2)
        assert first["b1"]["flagged"]
        assert first["b1"]["duplicate_of"] == "a1"  # the flag a moderator rejects

        verdict = {"id": "b1", "duplicate_of": "a1", "verdict": "not_duplicate", "at": "2026-11-30T10:00:00Z"}
        produce(
            broker, verdicts, [(b"default/b1/a1", json.dumps(verdict).encode()), (b"bad", b'{"id": "x"}')]
        )
        letters = [json.loads(v) for _, v in read_topic(broker, names.dlq, expect=1, timeout_s=30)]
        assert [(d["code"], d["source"]["topic"]) for d in letters] == [("missing_field", verdicts)]
        time.sleep(1.0)  # the loop reads verdicts before each poll of documents
        # b1 is edited (same id, new text), then removed; its text comes back under a new id
        produce(
            broker,
            names.input,
            [post("b1", NEAR_MISS + " today"), deletion("b1"), post("b2", NEAR_MISS)],
        )
        same_run = decisions(broker, names, 4)
    assert not same_run["b1"]["flagged"], same_run["b1"]  # the edit of a rejected post
    assert not same_run["b2"]["flagged"], same_run["b2"]  # the same two texts again
    assert "a1" not in [m["id"] for m in same_run["b2"]["matches"]]  # skipped, not just out-voted

    with running(settings):  # a new process: the verdict is read back from the compacted topic
        produce(broker, names.input, [deletion("b2"), post("b3", NEAR_MISS), post("c1", ORIGINAL + " now")])
        after = decisions(broker, names, 6)
    assert not after["b3"]["flagged"], after["b3"]

    # the texts a training run needs, read back from the documents topic where the worker found the posts
    exported = tmp_path / "verdicts.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWINFLAG_")}
    env |= {"TWINFLAG_KAFKA__BOOTSTRAP_SERVERS": broker, "TWINFLAG_KAFKA__INPUT_TOPIC": names.input}
    command = [
        sys.executable,
        "-m",
        "worker",
        "verdicts",
        "--out",
        str(exported),
        "--index",
        str(tmp_path / "index"),
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in exported.read_text().splitlines()]
    assert [(r["id"], r["duplicate_of"], r["text"], r["duplicate_text"]) for r in rows] == [
        ("b1", "a1", NEAR_MISS, ORIGINAL)  # b1 as it was when judged, though edited and deleted since
    ]
    assert "2 texts read back from the documents topic" in done.stderr
    assert after["c1"]["flagged"]
    assert after["c1"]["duplicate_of"] == "a1"  # other pairs are flagged as before
