"""Retention: a post past its tenant's window (in record time) no longer matches, in the index and in its
batch; expired points are removed from the newest committed record time, at most once a minute."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from tests.fakes import HashEncoder, ListPublisher, MemoryIndex, doc_record, run_and_send
from worker.core.emit import Topics
from worker.core.records import Record
from worker.core.retention import DAY_MS, EXPIRY_SLACK_MS, Retention
from worker.core.step import StepConfig
from worker.index.config import IndexSettings
from worker.service.decision import step_config, stream_config
from worker.service.expiry import Expirer
from worker.service.settings import ENV_PREFIX, WorkerSettings

T0 = 1_700_000_000_000  # the first post's record time
SPAM = "Buy cheap watches at our store today, best prices guaranteed!"
SPAM_TYPO = "Buy cheap wacthes at our store today, best prices guaranteed!"
WEEK = Retention(7 * DAY_MS)


def day(n: float) -> int:
    return T0 + round(n * DAY_MS)


def config(retention: Retention = WEEK) -> StepConfig:
    return StepConfig(0.8, "hash-trigram-v1", retention=retention)


def decide(
    batches: Sequence[Sequence[Record]], cfg: StepConfig, index: MemoryIndex | None = None
) -> dict[str, dict[str, Any]]:
    """Each batch through the step; the flags sent, by id."""
    index = index if index is not None else MemoryIndex()
    publisher = ListPublisher()
    for records in batches:
        run_and_send(records, HashEncoder(), index, publisher, cfg)
    return {str(f["id"]): f for f in publisher.json(Topics().flags)}


def post(doc_id: str, text: str, offset: int, at_day: float, tenant: str | None = None) -> Record:
    return doc_record(doc_id, text, offset, timestamp_ms=day(at_day), tenant=tenant)


# ------------------------------------------------------------------------------------- matching


@pytest.mark.parametrize(("text", "stage"), [(SPAM, "exact"), (SPAM_TYPO, "index")])
def test_a_repost_within_the_window_is_flagged_and_one_past_it_is_not(text: str, stage: str) -> None:
    within = decide([[post("a", SPAM, 0, 0)], [post("b", text, 1, 6.9)]], config())
    assert (within["b"]["duplicate_of"], within["b"]["stage"]) == ("a", stage)
    past = decide([[post("a", SPAM, 0, 0)], [post("b", text, 1, 7.1)]], config())
    assert past == {}


@pytest.mark.parametrize("text", [SPAM, SPAM_TYPO])
def test_the_window_holds_inside_one_batch_too(text: str) -> None:
    """A backfill's batch can span days: the in-batch matrix and the exact path keep the window."""
    within = decide([[post("a", SPAM, 0, 0), post("b", text, 1, 6.9)]], config())
    assert within["b"]["duplicate_of"] == "a"
    assert within["b"]["stage"] in ("exact", "batch")
    assert decide([[post("a", SPAM, 0, 0), post("b", text, 1, 7.1)]], config()) == {}


def test_the_window_is_the_posts_own_record_time_not_the_wall_clock() -> None:
    """Posts from years ago, decided today, still match each other within their window."""
    a = doc_record("a", SPAM, 0, timestamp_ms=10 * DAY_MS)  # January 1970
    b = doc_record("b", SPAM_TYPO, 1, timestamp_ms=10 * DAY_MS + DAY_MS // 2)
    flags = decide([[a], [b]], config(Retention(DAY_MS)))
    assert flags["b"]["duplicate_of"] == "a"


def test_a_tenants_own_window_overrides_the_default() -> None:
    retention = Retention(30 * DAY_MS, {"chat": DAY_MS})
    batches = [
        [post("a", SPAM, 0, 0, "chat"), post("a", SPAM, 1, 0, "forum")],
        [post("b", SPAM_TYPO, 2, 2, "chat"), post("b", SPAM_TYPO, 3, 2, "forum")],
    ]
    flags = decide(batches, config(retention))
    assert [(f["tenant"], f["duplicate_of"]) for f in flags.values()] == [("forum", "a")]


def test_without_a_retention_posts_match_forever() -> None:
    flags = decide([[post("a", SPAM, 0, 0)], [post("b", SPAM_TYPO, 1, 3650)]], StepConfig(0.8, "m"))
    assert flags["b"]["duplicate_of"] == "a"


def test_a_replay_republishes_its_flag_after_the_original_expired() -> None:
    """The first decision is stored with the post: removing the post it repeats changes nothing."""
    index = MemoryIndex()
    first = decide([[post("a", SPAM, 0, 0)], [post("b", SPAM_TYPO, 1, 6)]], config(), index)
    assert index.expire(WEEK.expiries(day(8) + EXPIRY_SLACK_MS)) == 1  # a is gone, b stays
    assert index.point("default", "a") is None
    replayed = decide([[post("b", SPAM_TYPO, 1, 6)]], config(), index)
    assert replayed["b"] == first["b"]


# --------------------------------------------------------------------------------------- expiry


def test_expiry_removes_what_no_post_can_match_from_the_newest_record_time() -> None:
    index = MemoryIndex()
    decide([[post(f"d{n}", f"post number {n} " * 3, n, n) for n in range(10)]], config(), index)
    clock = [100.0]
    expirer = Expirer(index, WEEK, every_s=60, clock=lambda: clock[0])
    with capture_logs() as logged:
        assert expirer.after_commit([post("x", "later", 20, 9)]) == 2  # days 0, 1: before 9 - 7 - 1 h
    assert sorted(p for p in ("d0", "d1", "d2") if index.point("default", p)) == ["d2"]
    assert [e["removed"] for e in logged if e["event"] == "index.expired"] == [2]
    clock[0] += 59  # at most once a minute, however new the records
    assert expirer.after_commit([post("y", "later", 21, 12)]) == 0
    clock[0] += 1
    assert expirer.after_commit([post("z", "older", 22, 3)]) == 3  # the newest time seen still counts
    assert index.count() == 5


def test_expiry_keeps_an_hour_of_slack_behind_the_newest_record() -> None:
    index = MemoryIndex()
    decide([[post("a", SPAM, 0, 0)]], config(), index)
    newest = post("n", "x", 1, 7)
    late_cut = newest.timestamp_ms + EXPIRY_SLACK_MS - 1
    assert Expirer(index, WEEK).after_commit([newest]) == 0  # a is exactly one window old: kept
    assert Expirer(index, WEEK).after_commit([doc_record("n", "x", 1, timestamp_ms=late_cut)]) == 0
    assert Expirer(index, WEEK).after_commit([doc_record("n", "x", 1, timestamp_ms=late_cut + 2)]) == 1


def test_without_a_retention_nothing_expires() -> None:
    index = MemoryIndex()
    decide([[post("a", SPAM, 0, 0)]], StepConfig(0.8, "m"), index)
    assert Expirer(index, Retention()).after_commit([post("n", "x", 1, 10_000)]) == 0
    assert index.calls["expire"] == 0
    assert index.count() == 1


# ------------------------------------------------------------------------------------- settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("clean_env")
def test_retention_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert WorkerSettings().index.retention() == Retention()  # keep forever by default
    monkeypatch.setenv("TWINFLAG_INDEX__RETENTION_DAYS", "30")
    monkeypatch.setenv("TWINFLAG_INDEX__TENANT_RETENTION_DAYS", '{"chat": 0.5}')
    settings = WorkerSettings()
    assert settings.index.retention() == Retention(30 * DAY_MS, {"chat": DAY_MS // 2})
    assert (
        stream_config(settings, step_config(settings, HashEncoder(), 0.8)).retention
        == settings.index.retention()
    )
    assert step_config(settings, HashEncoder(), 0.8).retention == Retention()  # checks see everything


@pytest.mark.parametrize(
    "wrong", [{"retention_days": 0}, {"retention_days": -1}, {"tenant_retention_days": {"chat": 0}}]
)
def test_a_retention_must_be_positive(wrong: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="retention_days"):
        IndexSettings(**wrong)
