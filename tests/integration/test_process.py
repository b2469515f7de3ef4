"""Worker processes, killed and stopped: ``python -m tests.integration.driver`` is ``python -m worker
run`` with the hash encoder (same wiring, settings from the environment, real broker, real index)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

from devkit.kafka import Names, committed, create_topics, read_topic
from tests.integration.conftest import REPO, make_stream, produce_posts, worker_env

pytestmark = pytest.mark.integration


def start_worker(env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.driver"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not within {timeout_s} s")


def total_committed(broker: str, names: Names) -> int:
    return sum(committed(broker, names.group, names.input).values())


def http_get(port: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def decisions_by_position(broker: str, names: Names, expect: int) -> dict[tuple[int, int], list[bytes]]:
    out: dict[tuple[int, int], list[bytes]] = defaultdict(list)
    for _, value in read_topic(broker, names.decisions, expect=expect):
        source = json.loads(value)["source"]
        out[(source["partition"], source["offset"])].append(value)
    return out


def test_sigkill_mid_stream_then_restart_skips_nothing_and_republishes_identical_flags(
    broker: str, names: Names, tmp_path: Path
) -> None:
    posts = make_stream(1200, seed=21)
    create_topics(broker, names, partitions=2)
    produce_posts(broker, names.input, posts)
    # several batches of 20 per commit, and commits often enough to kill the worker between two
    env = worker_env(broker, names, tmp_path / "index", TWINFLAG_COMMIT_INTERVAL_MS="100")

    with (tmp_path / "worker-1.log").open("wb") as log:
        first = start_worker(env, log)
        try:  # kill it just after a commit, when the next batch is likely published but not yet committed
            wait_until(lambda: total_committed(broker, names) >= 200, 60, "the worker streaming")
            seen = total_committed(broker, names)
            wait_until(lambda: total_committed(broker, names) > seen, 10, "the next commit", interval_s=0.005)
            time.sleep(0.05)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(10)
    # the process is dead: what it published and what it committed are final now
    at_kill = total_committed(broker, names)
    published = len(read_topic(broker, names.decisions, idle_s=1.0))
    assert at_kill < len(posts), "the worker finished before it was killed: make the stream longer"

    with (tmp_path / "worker-2.log").open("wb") as log:
        second = start_worker(env, log)
        try:
            wait_until(lambda: total_committed(broker, names) == len(posts), 90, "all records committed")
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(15) == 0

    decided = decisions_by_position(broker, names, expect=len(posts))
    assert len(decided) == len(posts)  # every record got a decision: nothing skipped
    replays = sum(len(copies) - 1 for copies in decided.values())
    assert replays >= published - at_kill  # whatever was published but not committed was redone
    flags: dict[bytes | None, list[bytes]] = defaultdict(list)
    for key, value in read_topic(broker, names.flags):
        flags[key].append(value)
    assert flags, "the stream has reposts"
    for key, copies in flags.items():
        assert all(copy == copies[0] for copy in copies), f"flag {key!r} changed on replay"
    print(f"killed at {at_kill}/{len(posts)} committed, {published} published; {replays} replayed")


def test_sigterm_finishes_the_batch_commits_and_exits_zero_in_time(
    broker: str, names: Names, tmp_path: Path
) -> None:
    posts = make_stream(1500, seed=22)
    create_topics(broker, names, partitions=2)
    produce_posts(broker, names.input, posts)
    env = worker_env(broker, names, tmp_path / "index", TWINFLAG_COMMIT_INTERVAL_MS="100")  # mid-stream
    port = env["TWINFLAG_METRICS_PORT"]

    with (tmp_path / "worker.log").open("wb") as log:
        worker = start_worker(env, log)
        try:
            wait_until(lambda: total_committed(broker, names) >= 100, 60, "first commits")
            assert http_get(port, "/healthz")[0] == 200
            assert http_get(port, "/readyz") == (200, "ready\n")
            status, metrics = http_get(port, "/metrics")
            assert status == 200
            assert "twinflag_records_total" in metrics
            worker.send_signal(signal.SIGTERM)
            asked = time.monotonic()
            code = worker.wait(15)
            took = time.monotonic() - asked
        finally:
            if worker.poll() is None:
                worker.kill()
    lines = [
        json.loads(line)
        for line in (tmp_path / "worker.log").read_text().splitlines()
        if line.startswith("{")
    ]
    assert code == 0, lines[-5:]
    assert took < 10, f"shutdown took {took:.1f} s"
    events = [line["event"] for line in lines]
    assert events[-1] == "worker_stopped"
    assert "batch_failed" not in events

    offsets = committed(broker, names.group, names.input)
    assert 0 < sum(offsets.values()) < len(posts), "stopped mid-stream"
    decided = decisions_by_position(broker, names, expect=sum(offsets.values()))
    for partition, offset in offsets.items():  # everything below the commit was decided and published
        assert all((partition, o) in decided for o in range(offset))
