"""Verdicts in, between batches: parsed, remembered (``worker.core.feedback``), their dead letters and
the learned decision points sent out.

Two sources feed the same ``Feedback``: the worker reads the verdicts topic (``build_feedback``),
``serve`` and ``twinflag.Detector`` keep a file of JSON lines (``ReviewFile``). Either way a verdict
is parsed like a document (``worker.core.parse.parse_verdict``): a bad one becomes a dead letter with
its reason, never a silent drop.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from worker.core.feedback import Feedback, Reviewed, TenantPoint, learned_point
from worker.core.logs import get_logger
from worker.core.messages import MAX_KEY_BYTES, DeadLetterReason, ModeratorVerdict, clip, dead_letter_message
from worker.core.outcome import DeadLettered
from worker.core.outgoing import dumps
from worker.core.parse import parse_verdict
from worker.core.policy import Policy
from worker.core.ports import VectorIndex
from worker.core.records import OrderKey, Record
from worker.core.step import StepConfig
from worker.kafka.config import consumer_options, producer_options
from worker.service.retry import retrying

if TYPE_CHECKING:
    from worker.index.config import IndexSettings
    from worker.service.settings import WorkerSettings

log = get_logger("feedback")

Send = Callable[[str, bytes | None, bytes], None]


@dataclass(slots=True)
class Applied:
    """What one read of verdicts did."""

    verdicts: list[ModeratorVerdict] = field(default_factory=list)
    dead_letters: list[DeadLettered] = field(default_factory=list)
    points: list[TenantPoint] = field(default_factory=list)
    resolved: list[Reviewed] = field(default_factory=list)


@dataclass(slots=True)
class FeedbackFeed:
    """Records of verdicts → the ``Feedback`` the batch step decides with, and the messages it derives.

    ``send`` (None: nothing is sent) takes (topic, key, value); dead letters go to ``dlq_topic``, learned
    points to ``points_topic`` (None: logged only)."""

    feedback: Feedback
    index: VectorIndex
    policy: Policy
    model: str
    max_message_bytes: int
    max_id_chars: int
    max_dead_letter_bytes: int
    send: Send | None = None
    dlq_topic: str = "documents.dlq"
    points_topic: str | None = None
    store: ReviewFile | None = None

    @classmethod
    def for_step(
        cls,
        config: StepConfig,
        index: VectorIndex,
        feedback: Feedback,
        store: ReviewFile | None,
        *,
        send: Send | None = None,
        dlq_topic: str = "documents.dlq",
        points_topic: str | None = None,
    ) -> FeedbackFeed:
        """The feed of a batch step: its policy, model and input limits."""
        return cls(
            feedback,
            index,
            config.decision,
            config.model_version,
            config.max_message_bytes,
            config.max_id_chars,
            config.max_dead_letter_bytes,
            send,
            dlq_topic,
            points_topic,
            store,
        )

    def open(self) -> list[Reviewed]:
        """What the store kept, restored into the feedback; returned for a caller that replays it."""
        kept = [] if self.store is None else self.store.read()
        self.feedback.restore(kept)
        return kept

    def apply(self, records: Sequence[Record]) -> Applied:
        applied = Applied()
        for record in records:
            parsed = parse_verdict(record, self.max_message_bytes, self.max_id_chars)
            if isinstance(parsed, DeadLetterReason):
                letter = dead_letter_message(
                    record, parsed, self.model, self.max_message_bytes, self.max_dead_letter_bytes
                )
                applied.dead_letters.append(DeadLettered(record, letter))
            else:
                applied.verdicts.append(parsed)
        if applied.verdicts:
            applied.points, applied.resolved = self.feedback.apply(applied.verdicts, self.index, self.policy)
            if self.store is not None:
                self.store.append(applied.resolved)
        if self.send is not None:
            for dead in applied.dead_letters:  # keyed as the documents' dead letters are (core.emit)
                self.send(self.dlq_topic, clip(dead.record.key, MAX_KEY_BYTES), dumps(dead.letter))
            if self.points_topic is not None:
                for point in applied.points:
                    event = learned_point(point, self.policy, self.model)
                    self.send(self.points_topic, f"{point.tenant}/{self.model}".encode(), dumps(event))
        if records:
            log.info(
                "verdicts",
                read=len(records),
                remembered=len(applied.verdicts),
                dead_letters=len(applied.dead_letters),
                pairs=len(self.feedback),
                points={p.tenant: p.point for p in applied.points},
            )
        return applied


class ReviewFile:
    """Verdicts and what their pairs resolved to (text hashes, cosine), as JSON lines beside the index:
    read whole at start, appended and fsynced as new pairs resolve. The worker keeps it so a verdict read
    again after a restart still knows a pair whose post was deleted since; ``serve`` and
    ``twinflag.Detector``, which have no topic, keep their verdicts in it too."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._written: set[str] = set()

    def read(self) -> list[Reviewed]:
        if not self.path.exists():
            return []
        out = []
        with self.path.open("rb") as handle:
            for line in handle:
                if line.strip():
                    row = json.loads(line)
                    hashes, orders = row.get("hashes"), row.get("orders") or [None, None]
                    item = Reviewed(
                        ModeratorVerdict.model_validate(row["verdict"]),
                        None if hashes is None else (str(hashes[0]), str(hashes[1])),
                        row.get("cosine"),
                        (_order(orders[0]), _order(orders[1])),
                    )
                    out.append(item)
                    self._written.add(_line(item))
        return out

    def append(self, items: Sequence[Reviewed]) -> None:
        """Store the items not stored yet, durably."""
        with self._lock:
            lines = [line for line in dict.fromkeys(map(_line, items)) if line not in self._written]
            if not lines:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.writelines(line + "\n" for line in lines)
                handle.flush()
                os.fsync(handle.fileno())
            self._written.update(lines)


def _order(value: object) -> OrderKey | None:
    if not isinstance(value, list) or len(value) != 2:
        return None
    return (int(value[0]), int(value[1]))


def _line(item: Reviewed) -> str:
    row: dict[str, object] = {"verdict": item.verdict.model_dump(mode="json", exclude_none=True)}
    row |= {"cosine": item.cosine, "hashes": None if item.hashes is None else list(item.hashes)}
    if item.orders != (None, None):
        row["orders"] = [None if o is None else list(o) for o in item.orders]
    return json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class StreamFeedback:
    """The worker's feedback: the verdicts topic read whole at start (``catch_up``), then whatever
    arrived before each poll of documents; the loop decides with ``memory``."""

    def __init__(
        self,
        feed: FeedbackFeed,
        read: Callable[[int], list[Record]],
        flush: Callable[[], None] | None = None,
    ) -> None:
        self._feed, self._read, self._flush = feed, read, flush

    @property
    def memory(self) -> Feedback:
        return self._feed.feedback

    def catch_up(self, records: Sequence[Record]) -> None:
        self._apply(records)

    def poll(self) -> None:
        self._apply(self._read(0))

    def _apply(self, records: Sequence[Record]) -> None:
        if not records:
            return
        applied = self._feed.apply(records)
        if self._flush is not None and (applied.dead_letters or applied.points):
            self._flush()


def build_feedback(
    settings: WorkerSettings, index: VectorIndex, config: StepConfig, stack: ExitStack, stop: threading.Event
) -> StreamFeedback | None:
    """The verdicts topic read to its end, as the loop's feedback (None: ``verdicts_topic`` unset, or
    stopped while the broker was away). Closes on ``stack``."""
    from worker.kafka.verdicts import EventProducer, VerdictReader

    kafka = settings.kafka
    if kafka.verdicts_topic is None:
        return None
    topic = kafka.verdicts_topic
    options = consumer_options(kafka, settings.max_message_bytes, settings.backoff_max_s)
    reader = retrying("verdicts", lambda: VerdictReader(options, topic), settings, stop)
    producer_settings = producer_options(kafka, settings.max_message_bytes, settings.backoff_max_s)
    producer = retrying("producer", lambda: EventProducer(producer_settings), settings, stop)
    if reader is None or producer is None:
        return None
    close_s = settings.shutdown_timeout_s / 2
    stack.callback(reader.close)
    stack.callback(producer.close, close_s)
    feed = FeedbackFeed.for_step(
        config,
        index,
        Feedback(settings.feedback.rules()),
        review_file(settings),
        send=producer.send,
        dlq_topic=kafka.dlq_topic,
        points_topic=kafka.thresholds_topic,
    )
    feed.open()
    flush_s = kafka.flush_timeout_s
    source = StreamFeedback(feed, lambda timeout_ms: reader.read(timeout_ms), lambda: producer.flush(flush_s))
    source.catch_up(reader.read_to_end(settings.feedback.catch_up_s))
    return source


def review_file(settings: WorkerSettings, index: IndexSettings | None = None) -> ReviewFile | None:
    """Where verdicts and their resolved pairs are kept: the setting, else inside an embedded index."""
    chosen = index if index is not None else settings.index
    path = settings.feedback.store
    if path is None and chosen.backend == "embedded":
        path = chosen.path / "verdicts.jsonl"
    return None if path is None else ReviewFile(path)
