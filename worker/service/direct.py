"""Documents handed in directly, not read from Kafka: the HTTP API (``worker.service.http``) and the
Python API (``twinflag.Detector``) go through here, and from here through the stream's own batch step.

Each request becomes a ``Record`` of the ``DIRECT_TOPIC`` on ``DIRECT_PARTITION`` (the stream's
records come from Kafka, a bulk load uses partition 0 and ``scan`` partition 1), so ``parse_record``,
the limits, the decision and the stored form are the stream's. Order keys:

- an added document gets ``(now in ms, DIRECT_PARTITION << 40 | n)``, never below the last one given
  out: it comes after every document added before it (a stream document with a later Kafka timestamp
  may match it, as it would match a later stream post);
- a check gets the largest timestamp (``MAX_TIMESTAMP_MS``) and runs the step read-only
  (``StepConfig.read_only``): it sees every stored document of its tenant, writes nothing, and never
  matches another check of its batch.

Calls are serialised by one lock: the embedded index belongs to one process, and a batch must see the
index as the batch before left it. Many checks in one call are one step: one encoder call, one search.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

from worker.core.feedback import Feedback, TenantPoint
from worker.core.messages import Deletion
from worker.core.outcome import BatchOutcome, DeadLettered, Decided, Deleted
from worker.core.outgoing import DeadLetter, Decision
from worker.core.ports import Encoder, VectorIndex, Verifier
from worker.core.records import MAX_TIMESTAMP_MS, Record
from worker.core.step import StepConfig, run_batch
from worker.service.feedback import FeedbackFeed
from worker.service.settings import WorkerSettings

DIRECT_TOPIC = "api"
DIRECT_PARTITION = 2
VERDICTS_TOPIC = "api-verdicts"
CHECK_ID = "_check"
"""The id a check gets when the caller names none (a check never matches its own id)."""


@dataclass(frozen=True, slots=True)
class Post:
    """One document as a caller hands it in (the fields of ``worker.core.messages.Document``)."""

    text: str
    tenant: str = "default"
    id: str = CHECK_ID
    created_at: str | None = None

    def value(self) -> bytes:
        fields: dict[str, object] = {"id": self.id, "text": self.text, "tenant": self.tenant}
        if self.created_at is not None:
            fields["created_at"] = self.created_at
        return json.dumps(fields, ensure_ascii=False).encode()


Answer = Decision | DeadLetter
"""A decision, or the dead letter that says why the document could not be used (its ``code``)."""


class DirectStep:
    """The batch step over documents handed in by callers; thread-safe (one call at a time)."""

    def __init__(
        self,
        encoder: Encoder,
        index: VectorIndex,
        config: StepConfig,
        verifier: Verifier | None = None,
        *,
        flush: bool = True,
        feedback: FeedbackFeed | None = None,
    ) -> None:
        self._encoder, self._index, self._verifier, self._flush = encoder, index, verifier, flush
        self._feed = feedback
        if feedback is not None:  # the verdicts kept beside the index, in the order they were given
            kept = feedback.open()
            if kept:
                feedback.feedback.apply([item.verdict for item in kept], index, feedback.policy)
        self._write = replace(config, read_only=False)
        self._read = replace(config, read_only=True)
        self._lock = threading.Lock()
        self._offsets = itertools.count()
        self._last_ms = 0

    @property
    def model_version(self) -> str:
        return self._write.model_version

    def check(self, posts: Sequence[Post]) -> list[Answer]:
        """Would these posts be flagged, and against what? Nothing is written; each is judged alone."""
        with self._lock:
            records = [self._record(MAX_TIMESTAMP_MS, post.value()) for post in posts]
            outcome = run_batch(records, self._encoder, self._index, self._read, self._verifier, self._memory)
            return _answers(outcome)

    def write(self, items: Sequence[Post | Deletion]) -> list[Answer | None]:
        """Add posts and apply deletions in this order (a later post may match an earlier one), as one
        batch; the index is flushed before this returns. A deletion's answer is None."""
        with self._lock:
            now = max(int(time.time() * 1000), self._last_ms)
            self._last_ms = now
            records = [
                self._record(now, item.value() if isinstance(item, Post) else _deletion(item))
                for item in items
            ]
            outcome = run_batch(
                records, self._encoder, self._index, self._write, self._verifier, self._memory
            )
            self._index.maintain()
            if self._flush:
                self._index.flush()
        by_offset = {o.record.offset: o for o in outcome.outcomes}
        answers: list[Answer | None] = []
        for record in records:
            found = by_offset[record.offset]
            answers.append(
                found.decision
                if isinstance(found, Decided)
                else found.letter
                if isinstance(found, DeadLettered)
                else None
            )
        return answers

    @property
    def _memory(self) -> Feedback | None:
        return None if self._feed is None else self._feed.feedback

    def review(self, values: Sequence[bytes]) -> tuple[list[DeadLetter | None], list[TenantPoint]]:
        """Moderators' verdicts (JSON objects, ``worker.core.messages.ModeratorVerdict``): remembered at
        once and, when a store is open, kept in it. Per verdict, None or the dead letter that says why it
        was refused (not stored); and the tenants' decision points that changed."""
        if self._feed is None:
            raise RuntimeError("feedback is off for this step")
        with self._lock:
            records = [Record(VERDICTS_TOPIC, 0, i, 0, key=None, value=v) for i, v in enumerate(values)]
            applied = self._feed.apply(records)
            refused = {dead.record.offset: dead.letter for dead in applied.dead_letters}
        return [refused.get(i) for i in range(len(values))], applied.points

    def exists(self, tenant: str, doc_id: str) -> bool:
        with self._lock:
            return bool(self._index.fetch([(tenant, doc_id)]))

    def count(self) -> int:
        with self._lock:
            return self._index.count()

    def _record(self, timestamp_ms: int, value: bytes) -> Record:
        offset = next(self._offsets)
        return Record(DIRECT_TOPIC, DIRECT_PARTITION, offset, timestamp_ms, key=None, value=value)


def _deletion(deletion: Deletion) -> bytes:
    return json.dumps({"id": deletion.id, "tenant": deletion.tenant, "deleted": True}).encode()


def _answers(outcome: BatchOutcome) -> list[Answer]:
    """One answer per record, in the order they were handed in (the outcome is in order-key order,
    which for checks, all at one timestamp, is the offset order)."""
    ordered = sorted(outcome.outcomes, key=lambda o: o.record.offset)
    return [o.decision if isinstance(o, Decided) else o.letter for o in ordered if not isinstance(o, Deleted)]


def open_direct(
    model: Path,
    index: Path | None,
    settings: WorkerSettings,
    stack: ExitStack,
    threshold: float | None = None,
) -> DirectStep:
    """The model and the index (embedded at ``index``, else the configured one), checked against each
    other, as a ``DirectStep``; their closes go on ``stack``. Writes are flushed before they return."""
    from worker.service.decision import decision_of, load_model, step_config
    from worker.service.feedback import review_file
    from worker.service.wiring import build_index

    encoder, manifest_threshold = load_model(settings, model)
    decision = decision_of(settings, encoder, threshold)
    chosen = threshold if threshold is not None else settings.model.threshold
    index_settings = settings.index
    if index is not None:
        index_settings = index_settings.model_copy(update={"backend": "embedded", "path": index})
    vectors = build_index(index_settings, stack)
    vectors.ensure(encoder.dim, encoder.version)  # refuses another model's index
    config = step_config(
        settings, encoder, chosen if chosen is not None else manifest_threshold, decision=decision
    )
    feedback = Feedback(settings.feedback.rules())
    feed = FeedbackFeed.for_step(config, vectors, feedback, review_file(settings, index_settings))
    return DirectStep(encoder, vectors, config, decision.verifier, feedback=feed)
