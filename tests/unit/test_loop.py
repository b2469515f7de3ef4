"""The loop with fakes: the order flush → index flush → commit, no commit on failure, stop, back-off."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import pytest
from structlog.testing import capture_logs

from tests.fakes import HashEncoder, ListPublisher, MemoryIndex, doc_record, raw_record
from worker.core.errors import Backoff, IndexUnavailableError, RebalancedError
from worker.core.records import Record, first_offsets, next_offsets
from worker.core.retention import DAY_MS, Retention
from worker.core.step import StepConfig
from worker.service.loop import run
from worker.service.status import Metrics, Readiness

CONFIG = StepConfig(threshold=0.8, model_version="hash-trigram-v1")
FAST = Backoff(initial_s=0.001, max_s=0.004, jitter=0.0)


class ListSource:
    """A ``Source`` over a list: polls ``batch`` records at a time from the position, like a partition."""

    def __init__(self, records: Sequence[Record], events: list[str], batch: int = 3) -> None:
        self.records, self.events, self.batch = list(records), events, batch
        self.position = 0
        self.committed: dict[tuple[str, int], int] = {}
        self.polls = 0
        self.refuse_commits = 0
        self.joined = True

    def poll(self, max_records: int | None = None) -> list[Record]:
        self.polls += 1
        size = self.batch if max_records is None else min(self.batch, max_records)
        out = self.records[self.position : self.position + size]
        self.position += len(out)
        return out

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        if self.refuse_commits:
            self.refuse_commits -= 1
            raise RebalancedError("commit refused (test)")
        self.events.append(f"commit:{dict(offsets)}")
        self.committed.update(offsets)

    def rewind(self, offsets: Mapping[tuple[str, int], int]) -> None:
        self.events.append("rewind")
        self.position = min(offsets.values())

    def group_metadata(self) -> object:
        return None

    def lag(self) -> int | None:
        return len(self.records) - self.position

    def close(self, timeout_s: float) -> None:
        self.events.append("close")


class RecordingPublisher(ListPublisher):
    """``BatchPublisher`` at-least-once style: commit goes through the source, after flush."""

    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events
        self.aborts = 0

    def begin(self) -> None:
        self.events.append("begin")

    def flush(self, timeout_s: float) -> None:
        super().flush(timeout_s)
        self.events.append("flush")

    def commit(self, offsets: Mapping[tuple[str, int], int], source: ListSource) -> None:
        source.commit(offsets)

    def abort(self) -> None:
        self.aborts += 1
        self.events.append("abort")

    def close(self, timeout_s: float) -> None:
        self.events.append("publisher_close")


class RecordingIndex(MemoryIndex):
    def __init__(self, events: list[str], fail_searches: int = 0) -> None:
        super().__init__()
        self.events, self.fail_searches = events, fail_searches

    def search(self, queries, k):  # type: ignore[no-untyped-def]
        if self.fail_searches:
            self.fail_searches -= 1
            raise IndexUnavailableError("index down (test)")
        return super().search(queries, k)

    def flush(self) -> None:
        super().flush()
        self.events.append("index_flush")


def stream(n: int = 7) -> list[Record]:
    texts = ["the quick brown fox jumps over the lazy dog", "an entirely different post about cooking"]
    return [doc_record(f"d{i}", texts[i % 2] + ("!" * (i // 2)), i) for i in range(n)]


def test_commits_last_offset_plus_one_only_after_both_flushes() -> None:
    events: list[str] = []
    source, publisher, index = (
        ListSource(stream(7), events),
        RecordingPublisher(events),
        RecordingIndex(events),
    )
    index.ensure(256, "hash-trigram-v1")
    done = run(source, HashEncoder(), index, publisher, CONFIG, threading.Event(), idle_timeout_s=0)
    assert done == 7
    assert source.committed == {("documents", 0): 7}
    batches = [e for e in events if e not in ("begin",)]
    assert batches == [
        "flush", "index_flush", "commit:{('documents', 0): 3}",
        "flush", "index_flush", "commit:{('documents', 0): 6}",
        "flush", "index_flush", "commit:{('documents', 0): 7}",
    ]  # fmt: skip
    assert index.calls["maintain"] == 3
    assert publisher.json("duplicate-flags")  # the reposts were flagged


def test_unexpected_exception_commits_nothing_and_is_logged_with_traceback() -> None:
    events: list[str] = []
    source, publisher = ListSource(stream(3), events), RecordingPublisher(events)

    class Broken(HashEncoder):
        def embed(self, texts: Sequence[str]) -> np.ndarray:
            raise RuntimeError("model exploded")

    with capture_logs() as logged, pytest.raises(RuntimeError, match="model exploded"):
        run(source, Broken(), MemoryIndex(), publisher, CONFIG, threading.Event(), idle_timeout_s=0)
    assert source.committed == {}
    assert not any(e.startswith("commit") for e in events)
    assert publisher.aborts == 1
    failed = [e for e in logged if e["event"] == "batch_failed"]
    assert failed
    assert failed[0]["log_level"] == "error"
    assert failed[0]["exc_info"] is True


def test_stop_during_a_batch_finishes_and_commits_it_then_returns() -> None:
    events: list[str] = []
    stop = threading.Event()
    source, publisher = ListSource(stream(9), events), RecordingPublisher(events)

    class StopsMidBatch(HashEncoder):
        def embed(self, texts: Sequence[str]) -> np.ndarray:
            stop.set()  # a SIGTERM arriving while the batch is embedded
            return super().embed(texts)

    done = run(source, StopsMidBatch(), MemoryIndex(), publisher, CONFIG, stop)
    assert done == 3
    assert source.polls == 1
    assert source.committed == {("documents", 0): 3}
    assert events[-1] == "commit:{('documents', 0): 3}"


def test_index_outage_backs_off_rewinds_and_resumes_without_committing_meanwhile() -> None:
    events: list[str] = []
    source, publisher = ListSource(stream(6), events), RecordingPublisher(events)
    index = RecordingIndex(events, fail_searches=3)
    readiness = Readiness(model_loaded=True, index_ready=True)
    metrics = Metrics()
    with capture_logs() as logged:
        done = run(
            source, HashEncoder(), index, publisher, CONFIG, threading.Event(),
            idle_timeout_s=0, readiness=readiness, metrics=metrics, backoff=FAST,
        )  # fmt: skip
    assert done == 6
    assert source.committed == {("documents", 0): 6}
    first_commit = next(i for i, e in enumerate(events) if e.startswith("commit"))
    assert events[:first_commit].count("rewind") == 3  # each failure went back to the batch start
    assert [e["seconds"] for e in logged if e["event"] == "backing_off"] == [0.001, 0.002, 0.004]
    assert readiness.ready
    assert metrics.backoffs.labels(error="IndexUnavailableError")._value.get() == 3


def test_readiness_reports_backing_off_while_the_index_is_away() -> None:
    events: list[str] = []
    readiness = Readiness(model_loaded=True, index_ready=True)
    seen: list[list[str]] = []

    class Watching(RecordingIndex):
        def search(self, queries, k):  # type: ignore[no-untyped-def]
            seen.append(readiness.missing())
            return super().search(queries, k)

    index = Watching(events, fail_searches=2)
    run(
        ListSource(stream(3), events), HashEncoder(), index, RecordingPublisher(events), CONFIG,
        threading.Event(), idle_timeout_s=0, readiness=readiness, backoff=FAST,
    )  # fmt: skip
    assert seen[0] == []
    assert seen[1] == ["backing off after an outage"]
    assert readiness.ready


def test_not_ready_until_the_group_has_assigned_partitions() -> None:
    events: list[str] = []
    source = ListSource(stream(3), events)
    source.joined = False  # polling, but the group join has not finished
    readiness = Readiness(model_loaded=True, index_ready=True)
    run(
        source, HashEncoder(), MemoryIndex(), RecordingPublisher(events), CONFIG, threading.Event(),
        max_messages=1, readiness=readiness,
    )  # fmt: skip
    assert readiness.missing() == ["no partitions assigned yet (group join)"]
    source.joined = True
    run(
        source, HashEncoder(), MemoryIndex(), RecordingPublisher(events), CONFIG, threading.Event(),
        max_messages=1, readiness=readiness,
    )  # fmt: skip
    assert readiness.ready


def test_refused_commit_drops_the_batch_and_redoes_it() -> None:
    events: list[str] = []
    source, publisher = ListSource(stream(3), events), RecordingPublisher(events)
    source.refuse_commits = 1
    with capture_logs() as logged:
        done = run(
            source, HashEncoder(), MemoryIndex(), publisher, CONFIG, threading.Event(), idle_timeout_s=0
        )
    assert done == 3
    assert source.committed == {("documents", 0): 3}
    assert [e["event"] for e in logged].count("batch_dropped") == 1
    # the redo republished byte-identical flags under the same keys
    flags = publisher.messages("duplicate-flags")
    assert len(flags) == 2
    assert flags[0] == flags[1]


def test_max_messages_stops_after_that_many_records() -> None:
    events: list[str] = []
    source = ListSource(stream(9), events)
    done = run(source, HashEncoder(), MemoryIndex(), RecordingPublisher(events), CONFIG, threading.Event(),
               max_messages=4)  # fmt: skip
    assert done == 4
    assert source.committed == {("documents", 0): 4}


def test_dead_letters_are_committed_and_counted_by_reason() -> None:
    events: list[str] = []
    records = [raw_record(b"not json", 0), raw_record(b"\xff\xfe", 1), doc_record("a", "hello there", 2)]
    source, publisher, metrics = ListSource(records, events), RecordingPublisher(events), Metrics()
    run(source, HashEncoder(), MemoryIndex(), publisher, CONFIG, threading.Event(), idle_timeout_s=0,
        metrics=metrics)  # fmt: skip
    assert source.committed == {("documents", 0): 3}
    assert metrics.dead_letters.labels(reason="invalid_json")._value.get() == 1
    assert metrics.dead_letters.labels(reason="invalid_utf8")._value.get() == 1
    assert metrics.documents._value.get() == 1


def test_one_summary_event_per_batch_without_document_text() -> None:
    events: list[str] = []
    secret_text = "zebra-marker-4711 unique words nobody logs"
    records = [doc_record("a", secret_text, 0), doc_record("b", secret_text + "!", 1)]
    with capture_logs() as logged:
        run(ListSource(records, events), HashEncoder(), MemoryIndex(), RecordingPublisher(events), CONFIG,
            threading.Event(), idle_timeout_s=0)  # fmt: skip
    summaries = [e for e in logged if e["event"] == "batch"]
    assert len(summaries) == 1
    summary = summaries[0]
    assert (summary["records"], summary["documents"], summary["flags"]) == (2, 2, 1)
    assert {"embed_ms", "search_ms", "publish_ms", "flush_ms", "commit_ms"} <= summary.keys()
    assert "zebra-marker" not in json.dumps(logged, default=str)


def test_offsets_helpers_per_partition() -> None:
    records = [doc_record("a", "x", 5, partition=1), doc_record("b", "y", 3, partition=0),
               doc_record("c", "z", 9, partition=1)]  # fmt: skip
    assert next_offsets(records) == {("documents", 1): 10, ("documents", 0): 4}
    assert first_offsets(records) == {("documents", 1): 5, ("documents", 0): 3}


def test_the_batch_log_line_times_every_stage_publish_included() -> None:
    events: list[str] = []
    source, publisher = ListSource(stream(3), events), RecordingPublisher(events)
    with capture_logs() as logged:
        run(source, HashEncoder(), MemoryIndex(), publisher, CONFIG, threading.Event(), idle_timeout_s=0)
    (line,) = [e for e in logged if e["event"] == "batch"]
    stages = {
        "parse",
        "exact",
        "embed",
        "search",
        "decide",
        "upsert",
        "messages",
        "publish",
        "flush",
        "commit",
    }
    assert {f"{stage}_ms" for stage in stages} <= set(line)
    assert line["total_ms"] >= line["publish_ms"] >= 0


def test_back_off_waits_double_up_to_the_cap_and_are_jittered_below_it() -> None:
    import random

    backoff, rng = Backoff(initial_s=1.0, max_s=4.0, jitter=0.5), random.Random(3)
    waits = [[backoff.wait_s(failures, rng) for failures in range(1, 6)] for _ in range(50)]
    for row in waits:
        for wait, ceiling in zip(row, [1.0, 2.0, 4.0, 4.0, 4.0], strict=True):
            assert ceiling / 2 <= wait <= ceiling
    assert len({row[0] for row in waits}) > 40  # replicas retry at different moments
    assert Backoff(1.0, 4.0, jitter=0.0).wait_s(3, rng) == 4.0


def test_a_commit_interval_commits_several_batches_at_once_after_both_flushes() -> None:
    events: list[str] = []
    source, publisher, index = (
        ListSource(stream(7), events),
        RecordingPublisher(events),
        RecordingIndex(events),
    )
    index.ensure(256, "hash-trigram-v1")
    done = run(
        source, HashEncoder(), index, publisher, CONFIG, threading.Event(), idle_timeout_s=0,
        commit_interval_s=3600,
    )  # fmt: skip
    assert done == 7
    # one transaction (begin) and one commit for the three batches, after both flushes
    assert events == ["begin", "flush", "index_flush", "commit:{('documents', 0): 7}"]
    assert source.committed == {("documents", 0): 7}


def test_a_failure_rewinds_every_batch_not_yet_committed() -> None:
    events: list[str] = []
    source, publisher = ListSource(stream(9), events), RecordingPublisher(events)
    index = RecordingIndex(events)
    searches = 0

    class FailsThirdSearch(RecordingIndex):
        def search(self, queries, k):  # type: ignore[no-untyped-def]
            nonlocal searches
            searches += 1
            if searches == 3:
                raise IndexUnavailableError("index down (test)")
            return super().search(queries, k)

    index = FailsThirdSearch(events)
    done = run(
        source, HashEncoder(), index, publisher, CONFIG, threading.Event(), idle_timeout_s=0,
        backoff=FAST, commit_interval_s=3600,
    )  # fmt: skip
    assert done == 9
    assert events.index("rewind") < events.index("commit:{('documents', 0): 9}")
    assert not [e for e in events[: events.index("rewind")] if e.startswith("commit")]
    assert source.committed == {("documents", 0): 9}
    assert publisher.aborts == 1


def test_the_encoder_runs_in_its_own_thread_beside_the_previous_batch_commit() -> None:
    events: list[str] = []
    source, index = ListSource(stream(6), events), RecordingIndex(events)
    index.ensure(256, "hash-trigram-v1")
    second_embedding = threading.Event()
    calls = 0

    class Marking(HashEncoder):
        def embed(self, texts: Sequence[str]) -> np.ndarray:
            nonlocal calls
            calls += 1
            if calls == 2:
                second_embedding.set()
            events.append(f"embed_in_main_thread:{threading.current_thread() is threading.main_thread()}")
            return super().embed(texts)

    class WaitsForTheEncoder(RecordingPublisher):
        def flush(self, timeout_s: float) -> None:
            if self.flushes == 0:  # batch 1's flush: batch 2 is being embedded meanwhile
                events.append(f"overlapped:{second_embedding.wait(5)}")
            super().flush(timeout_s)

    run(source, Marking(), index, WaitsForTheEncoder(events), CONFIG, threading.Event(), idle_timeout_s=0)
    assert "overlapped:True" in events
    assert "embed_in_main_thread:True" not in events
    first_commit = events.index("commit:{('documents', 0): 3}")
    assert events.index("begin", first_commit) > first_commit  # batch 2 began after batch 1 committed


def test_the_loop_expires_points_past_their_retention_once_committed() -> None:
    """Record times decide what goes (here a backfill from 1970); a monotonic clock paces it."""
    events: list[str] = []
    days = [0, 1, 10, 10, 11, 11, 12]
    posts = [doc_record(f"d{i}", f"post {i} " * 5, i, timestamp_ms=d * DAY_MS) for i, d in enumerate(days)]
    source, publisher, index = ListSource(posts, events), RecordingPublisher(events), RecordingIndex(events)
    config = replace(CONFIG, retention=Retention(7 * DAY_MS))
    assert run(source, HashEncoder(), index, publisher, config, threading.Event(), idle_timeout_s=0) == 7
    assert index.calls["expire"] == 1  # after the first commit; the next ones fall within its minute
    assert sorted(d for d in ("d0", "d1", "d2") if index.point("default", d)) == ["d2"]
    assert index.count() == 5
