"""The real loop against the real broker and the real embedded index, in process.

Built with the same wiring functions as ``python -m worker run``; the hash encoder stands in for the
model (the decisions do not depend on which encoder, the plumbing does).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from devkit.kafka import Names, committed, create_topics, produce, read_topic
from tests.fakes import HashEncoder
from tests.integration.conftest import Post, make_stream, produce_posts, worker_settings
from worker.service.decision import step_config
from worker.service.loop import run
from worker.service.settings import WorkerSettings
from worker.service.wiring import build_consumer, build_index, build_publisher, topics

pytestmark = pytest.mark.integration


def run_inline(settings: WorkerSettings, max_messages: int, idle_timeout_s: float = 20.0) -> int:
    """The loop until ``max_messages`` records are committed (or nothing came for ``idle_timeout_s``)."""
    encoder = HashEncoder()
    with ExitStack() as stack:
        index = build_index(settings.index, stack)
        index.ensure(encoder.dim, encoder.version)
        source = build_consumer(settings)
        stack.callback(source.close, 2.0)
        publisher = build_publisher(settings)
        stack.callback(publisher.close, 2.0)
        return run(
            source,
            encoder,
            index,
            publisher,
            step_config(settings, encoder, threshold=0.8),
            threading.Event(),
            topics=topics(settings),
            max_messages=max_messages,
            idle_timeout_s=idle_timeout_s,
            commit_interval_s=settings.commit_interval_ms / 1000,
        )


def roots(posts: list[Post]) -> dict[str, str]:
    """Each post's original: a repost of a repost still belongs to the first post."""
    root: dict[str, str] = {}
    for post in posts:
        root[post.id] = post.id if post.duplicate_of is None else root[post.duplicate_of]
    return root


def test_stream_with_reposts_gives_the_expected_flags(broker: str, names: Names, tmp_path: Path) -> None:
    posts = make_stream(150, seed=11)
    # Keyed by id over three partitions: the backlog is merged back into time order by the consumer.
    create_topics(broker, names, partitions=3)
    produce_posts(broker, names.input, posts)

    assert run_inline(worker_settings(broker, names, tmp_path / "index"), max_messages=len(posts)) == len(
        posts
    )

    reposts = {p.id for p in posts if p.duplicate_of is not None}
    flags = [json.loads(value) for _, value in read_topic(broker, names.flags, expect=len(reposts))]
    root = roots(posts)
    assert {f["id"] for f in flags} == reposts
    for flag in flags:
        assert root[flag["duplicate_of"]] == root[flag["id"]], flag
        assert flag["score"] >= flag["threshold"] == 0.8
        assert flag["model"] == "hash-trigram-v1"
        assert flag["source"]["topic"] == names.input
    assert {f["stage"] for f in flags} >= {"exact", "batch"}
    decisions = read_topic(broker, names.decisions, expect=len(posts))
    assert len(decisions) == len(posts)
    assert sum(committed(broker, names.group, names.input).values()) == len(posts)


def test_bad_records_are_dead_lettered_and_committed_past(broker: str, names: Names, tmp_path: Path) -> None:
    create_topics(broker, names, partitions=1)
    good = json.dumps({"id": "ok-1", "text": "a perfectly good post about gardening"}).encode()
    later = json.dumps({"id": "ok-2", "text": "another fine post, this one about trains"}).encode()
    bad: list[tuple[bytes | None, bytes | None]] = [
        (b"k1", b"{not json"),
        (b"k2", b"\xff\xfe\x00 not utf-8"),
        (b"k3", json.dumps({"id": 5, "text": "numbers are not ids"}).encode()),
        (b"k4", json.dumps({"id": "no-text"}).encode()),
        (b"k5", json.dumps({"id": "blank", "text": " \u200b\t "}).encode()),
        # 50× the limit: the whole record in base64 would exceed the producer's request limit
        (b"k6", json.dumps({"id": "huge", "text": "x" * 200_000}).encode()),
        (b"k7", b"[1, 2, 3]"),
    ]
    records = [(b"ok-1", good), *bad, (b"gone", None), (b"ok-2", later)]  # a tombstone is no dead letter
    produce(broker, names.input, records)

    settings = worker_settings(broker, names, tmp_path / "index")
    settings = settings.model_copy(update={"max_message_bytes": 4_000})
    assert run_inline(settings, max_messages=len(records)) == len(records)

    letters = [json.loads(value) for _, value in read_topic(broker, names.dlq, expect=len(bad))]
    assert [(letter["code"], letter["source"]["offset"]) for letter in letters] == [
        ("invalid_json", 1),
        ("invalid_utf8", 2),
        ("wrong_type", 3),
        ("missing_field", 4),
        ("empty_text", 5),
        ("oversized", 6),
        ("not_object", 7),
    ]
    assert all(letter["reason"].startswith(letter["code"]) for letter in letters)
    huge = letters[5]
    assert (huge["truncated"], huge["value_bytes"]) == (True, len(bad[5][1] or b""))
    assert base64.b64decode(huge["value_b64"]) == (bad[5][1] or b"")[:4_000]
    assert not any(letter["truncated"] for letter in letters[:5])
    decided = [json.loads(value)["id"] for _, value in read_topic(broker, names.decisions, expect=2)]
    assert decided == ["ok-1", "ok-2"]  # the worker went on past the bad records
    assert committed(broker, names.group, names.input) == {0: len(records)}


@pytest.mark.parametrize("commit_interval_ms", [0, 60_000])  # a transaction per batch; one for both
def test_exactly_once_commits_flags_and_offsets_in_one_transaction(
    broker: str, names: Names, tmp_path: Path, commit_interval_ms: int
) -> None:
    posts = make_stream(60, seed=5)
    create_topics(broker, names, partitions=1)
    produce_posts(broker, names.input, posts)
    settings = worker_settings(
        broker, names, tmp_path / "index", delivery="exactly-once", transactional_id=f"tx-{names.group}"
    ).model_copy(update={"commit_interval_ms": commit_interval_ms})

    assert run_inline(settings, max_messages=len(posts)) == len(posts)

    reposts = {p.id for p in posts if p.duplicate_of is not None}
    flags = read_topic(broker, names.flags, expect=len(reposts), read_committed=True)
    assert {json.loads(value)["id"] for _, value in flags} == reposts
    assert len(read_topic(broker, names.decisions, expect=len(posts), read_committed=True)) == len(posts)
    assert sum(committed(broker, names.group, names.input).values()) == len(posts)


def test_restarted_worker_resumes_from_the_commit(broker: str, names: Names, tmp_path: Path) -> None:
    posts = make_stream(80, seed=3)
    create_topics(broker, names)
    produce_posts(broker, names.input, posts[:40])
    settings = worker_settings(broker, names, tmp_path / "index")
    assert run_inline(settings, max_messages=40) == 40
    produce_posts(broker, names.input, posts[40:])
    assert run_inline(settings, max_messages=40) == 40

    decisions = [
        json.loads(value)["id"] for _, value in read_topic(broker, names.decisions, expect=len(posts))
    ]
    assert Counter(decisions) == Counter(p.id for p in posts)  # each exactly once: nothing redone


class SlowEncoder(HashEncoder):
    """A model far slower than the poll interval allows for a full batch."""

    def __init__(self, seconds_per_text: float) -> None:
        super().__init__()
        self.seconds_per_text = seconds_per_text

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        time.sleep(self.seconds_per_text * len(texts))
        return super().embed(texts)


def test_a_batch_slower_than_the_poll_interval_shrinks_instead_of_looping(
    broker: str, names: Names, tmp_path: Path
) -> None:
    posts = list(make_stream(60, seed=9, repost_rate=0.0))[:40]
    create_topics(broker, names, partitions=1)
    produce_posts(broker, names.input, posts)
    settings = worker_settings(
        broker,
        names,
        tmp_path / "index",
        max_poll_records=40,
        max_poll_interval_ms=4_000,
        poll_timeout_ms=1_000,
    )
    encoder = SlowEncoder(seconds_per_text=0.15)  # 40 texts: 6 s, past the 4 s poll interval
    with ExitStack() as stack, capture_logs() as logged:
        index = build_index(settings.index, stack)
        index.ensure(encoder.dim, encoder.version)
        source = build_consumer(settings)
        stack.callback(source.close, 2.0)
        publisher = build_publisher(settings)
        stack.callback(publisher.close, 2.0)
        done = run(
            source, encoder, index, publisher, step_config(settings, encoder, 0.8), threading.Event(),
            topics=topics(settings), max_messages=len(posts), idle_timeout_s=30,
        )  # fmt: skip
    events = Counter(e["event"] for e in logged)
    assert done == len(posts)
    assert sum(committed(broker, names.group, names.input).values()) == len(posts)
    assert events["batch_dropped"] <= 2, events  # a refused commit or two, then smaller batches
    sizes = [e["records"] for e in logged if e["event"] == "batch"]
    assert max(sizes) <= 20, sizes  # after the refusal, batches that fit the interval
