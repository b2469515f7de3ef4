"""The batch step over fakes: exact path, order, self-matches, thresholds, tenants, replays, deletions."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from tests.fakes import HashEncoder, ListPublisher, MemoryIndex, doc_record, raw_record, run_and_send
from worker.core.decide import Verdict, decode_verdict, encode_verdict
from worker.core.emit import Topics
from worker.core.normalize import normalize, text_hash
from worker.core.outcome import BatchOutcome
from worker.core.ports import Candidate, Query
from worker.core.records import Record, order_key
from worker.core.step import StepConfig

FLAGS, DECISIONS, DLQ = "duplicate-flags", "decisions", "documents.dlq"
TOPICS = Topics(decisions=DECISIONS)
SPAM = "Buy cheap watches at our store today, best prices guaranteed!"
SPAM_TYPO = "Buy cheap wacthes at our store today, best prices guaranteed!"
SPAM_SPACED = "  buy CHEAP watches\u200b at our store today,  best prices guaranteed! "
CAT = "My cat refuses to eat anything except tuna from one specific brand."
WEATHER = "The weather in Lisbon was lovely this weekend, we went to the beach."


def config(threshold: float = 0.8, **overrides: Any) -> StepConfig:
    return replace(StepConfig(threshold, "hash-trigram-v1"), **overrides)


def step(
    records: Sequence[Record],
    index: MemoryIndex,
    encoder: HashEncoder | None = None,
    cfg: StepConfig | None = None,
) -> tuple[BatchOutcome, ListPublisher]:
    publisher = ListPublisher()
    result = run_and_send(records, encoder or HashEncoder(), index, publisher, cfg or config(), TOPICS)
    return result, publisher


def flags(publisher: ListPublisher) -> dict[str, dict[str, Any]]:
    return {str(f["id"]): f for f in publisher.json(FLAGS)}


# ------------------------------------------------------------------------------------- exact path


def test_exact_repost_from_the_index_scores_one_without_embedding() -> None:
    index, encoder = MemoryIndex(), HashEncoder()
    step([doc_record("a", SPAM, 0)], index, encoder)
    index.calls.clear()
    result, publisher = step([doc_record("b", SPAM_SPACED, 1)], index, encoder)
    flag = flags(publisher)["b"]
    assert (flag["duplicate_of"], flag["score"], flag["stage"]) == ("a", 1.0, "exact")
    assert flag["matches"] == [{"id": "a", "score": 1.0}]
    assert (result.exact, result.flags) == (1, 1)
    assert encoder.embedded == [SPAM]  # b was never embedded
    assert index.calls["search"] == 0  # nor searched


def test_exact_repost_inside_one_batch() -> None:
    index, encoder = MemoryIndex(), HashEncoder()
    result, publisher = step([doc_record("a", SPAM, 0), doc_record("b", SPAM_SPACED, 1)], index, encoder)
    assert flags(publisher)["b"]["stage"] == "exact"
    assert "a" not in flags(publisher)
    assert encoder.embedded == [SPAM]
    assert result.exact == 1


def test_exact_hits_are_upserted_and_searchable() -> None:
    index = MemoryIndex()
    step([doc_record("a", SPAM, 0), doc_record("b", SPAM_SPACED, 1)], index)
    a, b = index.point("default", "a"), index.point("default", "b")
    assert a is not None
    assert b is not None
    assert np.array_equal(a.vector, b.vector)  # b reuses a's vector
    assert a.text_hash == b.text_hash == text_hash(normalize(SPAM))
    index.delete("default", ["a"])  # with a gone, b still catches the next repost
    _, publisher = step([doc_record("c", SPAM, 2)], index)
    assert flags(publisher)["c"]["duplicate_of"] == "b"


def test_exact_match_is_the_earliest_copy() -> None:
    index = MemoryIndex()
    step([doc_record("first", SPAM, 0, timestamp_ms=10)], index)
    _, publisher = step(
        [doc_record("second", SPAM, 1, timestamp_ms=20), doc_record("third", SPAM, 2, timestamp_ms=30)], index
    )
    assert flags(publisher)["second"]["duplicate_of"] == "first"
    assert flags(publisher)["third"]["duplicate_of"] == "first"


# ----------------------------------------------------------------------------- arrival and order


def test_in_batch_repost_only_duplicates_the_earlier_post() -> None:
    _, publisher = step([doc_record("a", SPAM, 0), doc_record("b", SPAM_TYPO, 1)], MemoryIndex())
    assert list(flags(publisher)) == ["b"]
    flag = flags(publisher)["b"]
    assert (flag["duplicate_of"], flag["stage"]) == ("a", "batch")
    assert 0.8 < flag["score"] < 1.0


def test_poll_order_does_not_matter_the_order_key_does() -> None:
    # b arrives first in the poll, from another partition, but its timestamp is later.
    a = doc_record("a", SPAM, 7, partition=1, timestamp_ms=1000)
    b = doc_record("b", SPAM_TYPO, 0, partition=0, timestamp_ms=2000)
    _, publisher = step([b, a], MemoryIndex())
    assert list(flags(publisher)) == ["b"]
    # Same timestamp: partition << 40 | offset decides (partition 0 is earlier than partition 1).
    a = doc_record("a", SPAM, 9, partition=0, timestamp_ms=1000)
    b = doc_record("b", SPAM_TYPO, 0, partition=1, timestamp_ms=1000)
    _, publisher = step([b, a], MemoryIndex())
    assert list(flags(publisher)) == ["b"]


def test_outputs_come_in_order_key_order() -> None:
    records = [doc_record(f"d{i}", f"{CAT} #{i}", i, partition=i % 3) for i in range(9)]
    random.Random(3).shuffle(records)
    result, publisher = step(records, MemoryIndex())
    expected = sorted(records, key=order_key)
    assert [d.id for d in result.decisions] == [json.loads(r.value or b"")["id"] for r in expected]
    assert [f["id"] for f in publisher.json(DECISIONS)] == [d.id for d in result.decisions]


def test_index_search_never_returns_later_posts() -> None:
    index = MemoryIndex()
    step([doc_record("later", SPAM, 50, timestamp_ms=5000)], index)
    # A replayed, earlier post must not match a post that came after it.
    _, publisher = step([doc_record("earlier", SPAM_TYPO, 10, timestamp_ms=1000)], index)
    assert flags(publisher) == {}


def test_out_of_range_timestamps_are_clamped_not_fatal() -> None:
    index = MemoryIndex()
    result, _ = step(
        [doc_record("a", SPAM, 0, timestamp_ms=-1), doc_record("b", CAT, 1, timestamp_ms=2**62)], index
    )
    assert len(result.decisions) == 2
    a, b = index.point("default", "a"), index.point("default", "b")
    assert a is not None
    assert b is not None
    assert (a.order, b.order) == ((0, 0), (2**53 - 1, 1))


class LatestFirstOnTies(MemoryIndex):
    """An index whose cut keeps the *latest* of equal scores: the step must not inherit that choice."""

    def search(self, queries: Sequence[Query], k: int) -> list[list[Candidate]]:
        full = super().search(queries, 1000)
        return [
            sorted(found, key=lambda n: (-round(n.score, 6), [-x for x in n.order]))[:k] for found in full
        ]


def test_ties_at_the_index_cut_are_ranked_by_order_key() -> None:
    index = LatestFirstOnTies()
    copies = [doc_record(f"copy{i}", SPAM, i) for i in range(4)]  # one text: one vector, equal scores
    step(copies, index)
    _, publisher = step([doc_record("q", SPAM_TYPO, 10)], index, cfg=config(top_k=2))
    flag = flags(publisher)["q"]
    assert flag["duplicate_of"] == "copy0"
    assert [m["id"] for m in flag["matches"]] == ["copy0", "copy1"]


# ----------------------------------------------------------------------------------- self-match


def test_the_same_id_replayed_never_matches_itself() -> None:
    index = MemoryIndex()
    step([doc_record("a", SPAM, 0)], index)
    result, publisher = step([doc_record("a", SPAM, 0)], index)
    assert flags(publisher) == {}
    assert result.decisions[0].score is None
    assert result.reused_vectors == 1


def test_same_id_with_different_texts_in_one_batch() -> None:
    index = MemoryIndex()
    result, publisher = step([doc_record("a", SPAM, 0), doc_record("a", SPAM_TYPO, 1)], index)
    assert flags(publisher) == {}  # neither version matches the other
    assert len(result.decisions) == 2
    point = index.point("default", "a")
    assert point is not None
    assert (point.text_hash, point.order) == (
        text_hash(normalize(SPAM_TYPO)),
        order_key(doc_record("a", "", 1)),
    )
    assert index.count() == 1


def test_a_later_version_of_an_id_supersedes_the_stored_one() -> None:
    index = MemoryIndex()
    step([doc_record("a", SPAM, 0)], index)
    # a is rewritten to CAT before b arrives: b (a SPAM repost) must not match the old a.
    _, publisher = step([doc_record("a", CAT, 1), doc_record("b", SPAM, 2)], index)
    assert flags(publisher) == {}


# ------------------------------------------------------------------------------------- threshold


class FixedEncoder:
    """Returns given vectors, so a score can sit exactly on the threshold."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self._vectors = vectors

    dim, version, max_tokens = 2, "fixed", 16

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([self._vectors[t] for t in texts], dtype=np.float32).reshape(len(texts), 2)

    def known(self, texts: Sequence[str]) -> list[bool]:
        return [True for _ in texts]

    def health(self) -> bool:
        return True


@pytest.mark.parametrize(("threshold", "flagged"), [(0.8, True), (0.800001, False), (0.799999, True)])
@pytest.mark.parametrize("split", [False, True])
def test_threshold_edge(threshold: float, flagged: bool, split: bool) -> None:
    encoder = FixedEncoder({"one": [1.0, 0.0], "two": [0.8, 0.6]})
    cfg = StepConfig(threshold=threshold, model_version="fixed")
    index, publisher = MemoryIndex(), ListPublisher()
    first, second = doc_record("a", "one", 0), doc_record("b", "two", 1)
    batches = [[first], [second]] if split else [[first, second]]
    for batch in batches:
        run_and_send(batch, encoder, index, publisher, cfg)
    assert (len(publisher.messages(FLAGS)) == 1) is flagged
    if flagged:
        flag = json.loads(publisher.messages(FLAGS)[0][1])
        assert (flag["score"], flag["threshold"]) == (0.8, threshold)
        assert flag["stage"] == ("index" if split else "batch")


# ---------------------------------------------------------------------------------------- tenants


@pytest.mark.parametrize("text", [SPAM, SPAM_TYPO])
def test_tenants_never_match_each_other(text: str) -> None:
    index = MemoryIndex()
    step([doc_record("a", SPAM, 0, tenant="t1")], index)
    _, publisher = step([doc_record("b", text, 1, tenant="t2"), doc_record("c", text, 2, tenant="t3")], index)
    assert flags(publisher) == {}
    _, publisher = step([doc_record("d", text, 3, tenant="t1")], index)
    assert flags(publisher)["d"]["duplicate_of"] == "a"
    assert flags(publisher)["d"]["tenant"] == "t1"


def test_the_same_id_in_two_tenants_is_two_documents() -> None:
    index = MemoryIndex()
    _, publisher = step([doc_record("a", SPAM, 0, tenant="t1"), doc_record("a", SPAM, 1, tenant="t2")], index)
    assert flags(publisher) == {}
    assert index.count() == 2


# ----------------------------------------------------------------------------------- dead letters


def test_dead_letters_carry_reason_original_bytes_and_position() -> None:
    bad = [
        raw_record(b"\xff\xfe", 1, key=b"k1"),
        raw_record(b"{oops", 2, key=b"k2"),
        raw_record(b'{"id": 1, "text": "t"}', 3, key=None),
        raw_record(b'{"text": "t"}', 4),
        raw_record(json.dumps({"id": "x", "text": "\u200b \n"}).encode(), 5),
        raw_record(json.dumps({"id": "y" * 300, "text": "t"}).encode(), 6),
        raw_record(b'{"id": "z", "text": "' + b"x" * 2000 + b'"}', 7),
    ]
    good = doc_record("ok", SPAM, 8)
    result, publisher = step([*bad, good], MemoryIndex(), cfg=config(max_message_bytes=1000))
    letters = publisher.json(DLQ)
    assert [letter["code"] for letter in letters] == [
        "invalid_utf8",
        "invalid_json",
        "wrong_type",
        "missing_field",
        "empty_text",
        "id_too_long",
        "oversized",
    ]
    for record, letter, (key, _) in zip(bad, letters, publisher.messages(DLQ), strict=True):
        stored = base64.b64decode(str(letter["value_b64"]))
        assert record.value is not None
        assert letter["value_bytes"] == len(record.value)
        if letter["code"] == "oversized":  # a prefix of the limit's size, flagged as such
            assert (stored, letter["truncated"]) == (record.value[:1000], True)
        else:
            assert (stored, letter["truncated"]) == (record.value, False)
        assert key == record.key
        assert letter["key_b64"] == (None if record.key is None else base64.b64encode(record.key).decode())
        assert letter["source"] == {"topic": "documents", "partition": 0, "offset": record.offset}
        assert letter["model"] == "hash-trigram-v1"
        assert letter["detected_at"] == "2023-11-14T22:13:20.000Z"
        assert str(letter["reason"]).startswith(f"{letter['code']}: ")
    assert (result.records, result.documents, result.dead_letters) == (8, 1, 7)
    assert [d.id for d in result.decisions] == ["ok"]


def test_a_10_mb_record_dead_letters_within_the_producers_request_limit() -> None:
    from worker.kafka.config import dlq_max_bytes
    from worker.service.settings import WorkerSettings

    settings = WorkerSettings()
    huge = raw_record(b'{"id": "big", "text": "' + b"x" * 10_000_000 + b'"}', 1, key=b"k" * 100_000)
    _, publisher = step([huge], MemoryIndex(), cfg=config(max_message_bytes=settings.max_message_bytes))
    ((key, value),) = publisher.messages(DLQ)
    letter = json.loads(value)
    assert (letter["code"], letter["truncated"], letter["value_bytes"]) == ("oversized", True, 10_000_025)
    assert len(value) + len(key or b"") < dlq_max_bytes(settings.max_message_bytes)


# ---------------------------------------------------------------------------------------- replays


def stream() -> list[Record]:
    """Posts with reposts across two partitions and two tenants, in a shuffled poll order."""
    texts = [
        SPAM,
        CAT,
        WEATHER,
        SPAM_TYPO,
        SPAM_SPACED,
        CAT + " !!",
        "Unrelated note about gardening tools.",
        WEATHER.upper(),
        "Completely different: quarterly tax forms are due.",
        SPAM_TYPO + " http://x.co",
    ]
    records = []
    for i in range(30):
        text = texts[i % len(texts)] + ("" if i < 10 else f" v{i // 10}")
        records.append(
            doc_record(
                f"p{i}",
                text,
                i // 2,
                partition=i % 2,
                timestamp_ms=1000 + 10 * (i // 3),
                tenant="t1" if i % 5 else "t2",
            )
        )
    random.Random(7).shuffle(records)
    return records


def run_stream(records: list[Record], size: int, index: MemoryIndex) -> list[tuple[bytes | None, bytes]]:
    publisher = ListPublisher()
    for start in range(0, len(records), size):
        run_and_send(records[start : start + size], HashEncoder(), index, publisher, config(), TOPICS)
    return publisher.messages(FLAGS)


def test_replaying_a_batch_republishes_byte_identical_messages() -> None:
    records = stream()
    index, encoder = MemoryIndex(), HashEncoder()
    step(records[:12], index, encoder)
    _, first = step(records[12:], index, encoder)
    calls = encoder.calls
    replay_result, replay = step(records[12:], index, encoder)  # crash after upsert, before commit
    assert replay.sent == first.sent
    assert len(first.messages(FLAGS)) > 3
    assert replay_result.reused_vectors == replay_result.documents
    assert encoder.calls == calls  # nothing re-embedded


def test_replay_with_other_batch_boundaries_gives_the_same_flags() -> None:
    def essence(messages: list[tuple[bytes | None, bytes]]) -> dict[bytes | None, object]:
        out = {}
        for key, value in messages:
            flag = json.loads(value)
            flag.pop("stage")  # where the match was found ("batch"/"index") follows the boundaries
            out[key] = flag
        return out

    records = sorted(stream(), key=order_key)
    reference = run_stream(records, 30, MemoryIndex())
    assert len(reference) >= 8
    for size in (1, 4, 7):
        assert essence(run_stream(records, size, MemoryIndex())) == essence(reference)
    index = MemoryIndex()  # a crash after the first run: everything replayed, other boundaries
    run_stream(records, 7, index)
    assert essence(run_stream(records, 5, index)) == essence(reference)


@pytest.mark.parametrize(("first_size", "replay_size"), [(30, 1), (1, 30), (7, 4)])
def test_a_replay_with_other_boundaries_republishes_byte_identical_flags(
    first_size: int, replay_size: int
) -> None:
    records = sorted(stream(), key=order_key)
    index = MemoryIndex()
    first = run_stream(records, first_size, index)
    stages = {json.loads(value)["stage"] for _, value in first}
    assert {"batch", "index"} & stages  # the boundaries decide these: the replay must keep them
    replay = run_stream(records, replay_size, index)  # crashed after the upserts, before the commit
    assert sorted(replay, key=lambda m: m[0] or b"") == sorted(first, key=lambda m: m[0] or b"")


def test_the_decision_is_stored_before_the_flag_is_sent() -> None:
    class FailingPublisher(ListPublisher):
        def send(self, topic: str, key: bytes | None, value: bytes) -> None:
            raise ConnectionError("broker gone")

    records = sorted(stream(), key=order_key)
    index = MemoryIndex()
    with pytest.raises(ConnectionError):
        run_and_send(records[:30], HashEncoder(), index, FailingPublisher(), config(), TOPICS)
    assert index.count() > 0  # upserted first: a replay finds each first decision
    assert run_stream(records[:30], 1, index) == run_stream(records[:30], 30, MemoryIndex())


# -------------------------------------------------------------------------------------- deletions


@pytest.mark.parametrize(
    "deletion",
    [
        raw_record(None, 1, key=b"a"),  # tombstone: every tenant
        raw_record(json.dumps({"id": "a", "deleted": True}).encode(), 1),
    ],
)
def test_deletion_removes_the_document_and_its_hash(deletion: Record) -> None:
    index = MemoryIndex()
    step([doc_record("a", SPAM, 0)], index)
    result, _ = step([deletion], index)
    assert result.deletions == 1
    assert index.count() == 0
    _, publisher = step([doc_record("b", SPAM, 2), doc_record("c", CAT, 3)], index)
    assert flags(publisher) == {}


def test_tenant_deletion_only_touches_its_tenant() -> None:
    index = MemoryIndex()
    step([doc_record("a", SPAM, 0, tenant="t1"), doc_record("a", SPAM, 1, tenant="t2")], index)
    step([raw_record(json.dumps({"id": "a", "tenant": "t1", "deleted": True}).encode(), 2)], index)
    assert index.point("t1", "a") is None
    assert index.point("t2", "a") is not None


def test_a_deletion_in_the_batch_removes_an_earlier_document_of_the_batch() -> None:
    index = MemoryIndex()
    records = [
        doc_record("a", SPAM, 0),
        raw_record(None, 1, key=b"a"),
        doc_record("b", SPAM_TYPO, 2),
        doc_record("c", SPAM, 3),
    ]
    result, publisher = step(records, index)
    assert list(flags(publisher)) == ["c"]  # c repeats a's text exactly, but a is gone: only b is left
    assert flags(publisher)["c"]["duplicate_of"] == "b"
    assert flags(publisher)["c"]["stage"] == "batch"
    assert index.point("default", "a") is None  # not upserted back
    assert index.count() == 2
    assert [d.id for d in result.decisions] == ["a", "b", "c"]


def test_a_document_after_its_deletion_is_a_new_post() -> None:
    index = MemoryIndex()
    step([doc_record("a", CAT, 0)], index)
    step([raw_record(None, 1, key=b"a"), doc_record("a", SPAM, 2)], index)
    point = index.point("default", "a")
    assert point is not None
    assert point.text_hash == text_hash(normalize(SPAM))


# ------------------------------------------------------------------------------------ bookkeeping


def test_result_counts_timings_and_payload() -> None:
    index = MemoryIndex()
    created = json.dumps({"id": "m", "text": WEATHER, "created_at": "2024-05-01T12:00:00+00:00"}).encode()
    records = [
        doc_record("a", SPAM, 0),
        doc_record("b", SPAM, 1),
        raw_record(created, 2, partition=3),
        raw_record(b"x", 3),
        raw_record(None, 4, key=b"zzz"),
    ]
    result, publisher = step(records, index)
    assert (result.records, result.documents, result.flags, result.dead_letters, result.deletions) == (
        5,
        3,
        1,
        1,
        1,
    )
    assert set(result.timings_ms) >= {
        "parse",
        "exact",
        "embed",
        "search",
        "verify",
        "decide",
        "upsert",
        "messages",
    }
    assert len(publisher.messages(DECISIONS)) == 3
    point = index.point("default", "m")
    assert point is not None
    assert point.order == (1_700_000_000_000, 3 << 40 | 2)
    assert point.created_at == "2024-05-01T12:00:00+00:00"
    assert point.model == "hash-trigram-v1"
    decision = result.decisions[0]
    assert decision.model_dump(mode="json") == {
        "id": "a",
        "tenant": "default",
        "flagged": False,
        "duplicate_of": None,
        "score": None,
        "probability": None,
        "matches": [],
        "stage": None,
        "decided_by": None,
        "verifier_score": None,
        "model": "hash-trigram-v1",
        "source": {"topic": "documents", "partition": 0, "offset": 0},
        "meta": None,
    }


def test_decisions_topic_is_off_by_default() -> None:
    publisher = ListPublisher()
    run_and_send([doc_record("a", SPAM, 0)], HashEncoder(), MemoryIndex(), publisher, StepConfig(0.8, "m"))
    assert publisher.sent == []


def test_unflagged_decision_reports_best_match_and_top_k() -> None:
    index = MemoryIndex()
    step([doc_record(f"c{i}", f"{CAT} {i}", i) for i in range(8)], index)
    result, publisher = step([doc_record("q", CAT, 20)], index, cfg=config(threshold=0.999, top_k=3))
    decision = result.decisions[0]
    assert decision.flagged is False
    assert len(decision.matches) == 3
    assert decision.score == decision.matches[0].score
    assert flags(publisher) == {}


def test_empty_batch() -> None:
    result, publisher = step([], MemoryIndex())
    assert (result.records, result.decisions, publisher.sent) == (0, [], [])


def test_a_replay_republishes_the_first_decision_even_when_a_better_match_arrived_since() -> None:
    """A record of another partition, earlier by timestamp but read only after the crash, would match
    the replayed post better; the replay must still republish the first flag byte for byte."""
    index, cfg = MemoryIndex(), config()
    original = "cheap flights to lisbon this weekend only, message me for the booking link"
    repost = original.replace("weekend", "weekned") + " !!"
    a = doc_record("A", original, 0, partition=0, timestamp_ms=1000)
    r = doc_record("R", repost, 1, partition=0, timestamp_ms=3000)
    b = doc_record("B", repost, 0, partition=1, timestamp_ms=2000)  # the late one
    first = ListPublisher()
    run_and_send([a, r], HashEncoder(), index, first, cfg, TOPICS)  # published, then killed before the commit
    again = ListPublisher()
    run_and_send([b], HashEncoder(), index, again, cfg, TOPICS)  # after the restart, partition 1 comes first
    run_and_send([a, r], HashEncoder(), index, again, cfg, TOPICS)
    flagged = dict(first.messages(FLAGS))
    assert json.loads(flagged[b"R"])["duplicate_of"] == "A"
    assert dict(again.messages(FLAGS))[b"R"] == flagged[b"R"]
    assert json.loads(dict(again.messages(FLAGS))[b"B"])["duplicate_of"] == "A"  # B is decided afresh


def test_an_unreadable_stored_decision_is_decided_afresh() -> None:
    assert decode_verdict("not json") is None
    assert decode_verdict('{"flagged": true, "matches": [["a", 0.9, 1, 2, "sideways"]]}') is None
    verdict = Verdict([Candidate("a", 0.9, (1, 2), "index")], True)
    assert decode_verdict(encode_verdict(verdict)) == verdict


class LimitedPublisher(ListPublisher):
    """A producer in front of a topic with ``max.message.bytes``: Kafka refuses larger messages with an
    error no retry fixes, so the worker would crash-loop on the batch (Tansu does not enforce it)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        if len(value) + len(key or b"") > self.limit:
            raise RuntimeError(f"MessageSizeTooLargeError: {len(value)} bytes to {topic}")
        super().send(topic, key, value)


@pytest.mark.parametrize(
    ("value", "key"),
    [
        (b"x" * 2_000_000, b"k"),  # oversized: its first max_message_bytes in base64 were 1.33 MB
        (b"{" + b"x" * 900_000, b"k"),  # under the input limit, still 1.2 MB once in base64
        (b"{" + b"x" * 900_000, b"k" * 100_000),  # and a large key
    ],
)
def test_a_dead_letter_fits_the_dead_letter_topic(value: bytes, key: bytes) -> None:
    limit = 1_000_000
    publisher = LimitedPublisher(limit)
    cfg = config(max_message_bytes=1_000_000, max_dead_letter_bytes=limit)
    run_and_send([raw_record(value, 0, key=key)], HashEncoder(), MemoryIndex(), publisher, cfg, TOPICS)
    ((sent_key, letter),) = publisher.messages(DLQ)
    assert len(letter) + len(sent_key or b"") <= limit
    body = json.loads(letter)
    kept = base64.b64decode(body["value_b64"])
    assert body["truncated"] is True
    assert body["value_bytes"] == len(value)
    assert value.startswith(kept)
    assert len(kept) > limit // 2  # as much of the original as fits


@pytest.mark.parametrize(
    ("scope", "left"), [("all_tenants", set()), ("default_tenant", {"acme"}), ("refuse", {"acme", "default"})]
)
def test_what_a_tombstone_deletes_is_a_setting(scope: str, left: set[str]) -> None:
    """A tombstone names no tenant: by default it deletes the id everywhere, so in a multi-tenant
    deployment one tenant's tombstone erased another tenant's post that reused the id."""
    index = MemoryIndex()
    step([doc_record("x", SPAM, 0), doc_record("x", CAT, 1, tenant="acme")], index)
    _, publisher = step([raw_record(None, 2, key=b"x")], index, cfg=config(tombstones=scope))
    assert {t for t in ("default", "acme") if index.point(t, "x") is not None} == left
    letters = publisher.json(DLQ)
    assert [letter["code"] for letter in letters] == (["invalid_tombstone"] if scope == "refuse" else [])


class ThumbsEncoder(FixedEncoder):
    """Like a real model on posts it cannot read: every emoji-only post gets the same vector."""

    def known(self, texts: Sequence[str]) -> list[bool]:
        return [any(ch.isalpha() for ch in text) for text in texts]


@pytest.mark.parametrize("split", [False, True])
def test_a_post_the_model_cannot_read_matches_by_its_exact_text_only(split: bool) -> None:
    """ "👎" embedded to the same unknown-token vector as "👍" and was flagged its duplicate at 1.0."""
    same = [1.0, 0.0]
    encoder = ThumbsEncoder({"👍": same, "👎": same, "thumbs": same})
    index, publisher = MemoryIndex(), ListPublisher()
    records = [
        doc_record("up", "👍", 0),
        doc_record("down", "👎", 1),  # another unreadable post: not a duplicate
        doc_record("word", "thumbs", 2),  # a readable post with the same vector: not a duplicate either
        doc_record("again", "👍", 3),  # the same text: an exact repost
    ]
    batches = [[r] for r in records] if split else [records]
    for batch in batches:
        run_and_send(batch, encoder, index, publisher, config(), TOPICS)
    flagged = flags(publisher)
    assert set(flagged) == {"again"}
    assert (flagged["again"]["duplicate_of"], flagged["again"]["stage"]) == ("up", "exact")
    decisions = {d["id"]: d for d in publisher.json(DECISIONS)}
    assert decisions["down"]["matches"] == decisions["word"]["matches"] == []


def test_a_posts_meta_comes_back_on_its_flag_and_decision_when_small() -> None:
    thread = {"thread": "t-42", "author": "u-7", "url": "https://forum.example/t/42"}
    big = {"blob": "x" * 5000}  # over MAX_META_BYTES: stays in the input record only
    records = [
        raw_record(json.dumps({"id": "a", "text": SPAM, "meta": {"thread": "t-1"}}).encode(), 0),
        raw_record(json.dumps({"id": "b", "text": SPAM_TYPO, "meta": thread}).encode(), 1),
        raw_record(json.dumps({"id": "c", "text": SPAM_SPACED, "meta": big}).encode(), 2),
    ]
    _, publisher = step(records, MemoryIndex())
    flagged = flags(publisher)
    assert flagged["b"]["meta"] == thread  # as sent, for the moderator's tools
    assert flagged["c"]["meta"] is None
    decisions = {d["id"]: d for d in publisher.json(DECISIONS)}
    assert decisions["a"]["meta"] == {"thread": "t-1"}
    assert decisions["c"]["meta"] is None


def test_a_flag_says_when_the_earlier_post_arrived() -> None:
    index = MemoryIndex()
    step([doc_record("a", SPAM, 0, timestamp_ms=1_700_000_000_000)], index)  # from the index, later on
    _, publisher = step(
        [
            doc_record("c", CAT, 1, timestamp_ms=1_700_000_500_000),
            doc_record("b", SPAM_TYPO, 2, timestamp_ms=1_700_003_600_000),
            doc_record("d", CAT, 3, timestamp_ms=1_700_003_600_500),  # an exact copy, in the same batch
        ],
        index,
    )
    flagged = flags(publisher)
    assert flagged["b"]["duplicate_of_at"] == "2023-11-14T22:13:20.000Z"  # a's record time
    assert flagged["d"]["duplicate_of_at"] == "2023-11-14T22:21:40.000Z"  # c's
