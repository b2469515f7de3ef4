"""``Detector``: a model and an index, opened once, asked through the worker's batch step."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from worker.core.messages import Deletion
from worker.core.outgoing import DeadLetter, Decision, Match
from worker.service.direct import CHECK_ID, Answer, DirectStep, Post, open_direct
from worker.service.settings import WorkerSettings, load_from_environment

__all__ = ["Decision", "Detector", "InvalidDocumentError", "InvalidVerdictError", "Match"]


class InvalidDocumentError(ValueError):
    """A document the worker would dead-letter (an empty text, an over-long id, ...): ``code`` says why."""

    def __init__(self, letter: DeadLetter) -> None:
        super().__init__(letter.reason)
        self.code = letter.code


class InvalidVerdictError(InvalidDocumentError):
    """A verdict the worker would dead-letter (a missing field, an unknown answer, ...)."""


class Detector:
    """Near-duplicate checks against one index with one model; not shared between processes (the
    embedded index belongs to the process that opened it). Calls are serialised; close it, or use it as
    a context manager."""

    def __init__(self, direct: DirectStep, stack: ExitStack) -> None:
        self._direct, self._stack = direct, stack

    @classmethod
    def open(
        cls,
        model: str | Path,
        index: str | Path,
        *,
        threshold: float | None = None,
        settings: WorkerSettings | None = None,
    ) -> Detector:
        """The model directory and the embedded index at ``index`` (created if new; an index built with
        another model is refused). ``threshold`` forces a cosine threshold instead of the model's
        decision. ``settings``: the worker's (``top_k``, limits, the model's device); by default read
        from the ``TWINFLAG_*`` environment like the worker's."""
        stack = ExitStack()
        try:
            chosen = settings if settings is not None else load_from_environment()
            direct = open_direct(Path(model), Path(index), chosen, stack, threshold)
        except BaseException:
            stack.close()
            raise
        return cls(direct, stack)

    def check(self, text: str, tenant: str = "default", *, id: str | None = None) -> Decision:
        """Would this post be flagged, and against what? Read-only: nothing is added. ``id``: the post's
        own id if it is an edit of a stored one (a post never matches itself)."""
        return _decision(self._direct.check([Post(text, tenant, id or CHECK_ID)])[0])

    def add(
        self,
        id: str,
        text: str,
        tenant: str = "default",
        *,
        created_at: datetime | None = None,
    ) -> Decision:
        """Check the post against everything stored before it, then store it (durably) with that decision.
        Adding the same id and text again returns the first decision (a replay)."""
        stamp = None if created_at is None else created_at.isoformat()
        answer = self._direct.write([Post(text, tenant, id, stamp)])[0]
        assert answer is not None
        return _decision(answer)

    def delete(self, id: str, tenant: str = "default") -> bool:
        """Remove the post; False when the tenant had no document with that id."""
        if not self._direct.exists(tenant, id):
            return False
        self._direct.write([Deletion(id=id, tenant=tenant)])
        return True

    def scan(
        self, documents: Iterable[Mapping[str, Any]], *, batch_size: int = 256, read_only: bool = False
    ) -> Iterator[Decision | InvalidDocumentError]:
        """Decide many documents (``{"id", "text", "tenant"?, "created_at"?}``) in batches of the batch
        step, in order: each against the index and the documents before it, then added; with
        ``read_only`` each is checked against the index alone and nothing is added. A document the worker
        would dead-letter yields an ``InvalidDocumentError`` in its place."""
        rows = iter(documents)
        while batch := list(itertools.islice(rows, batch_size)):
            posts = [_post(row) for row in batch]
            answers = self._direct.check(posts) if read_only else self._direct.write(posts)
            for answer in answers:
                assert answer is not None
                yield answer if isinstance(answer, Decision) else InvalidDocumentError(answer)

    def review(
        self,
        id: str,
        duplicate_of: str,
        verdict: Literal["duplicate", "not_duplicate"],
        tenant: str = "default",
        *,
        at: datetime | None = None,
        reviewer: str | None = None,
        text: str | None = None,
        duplicate_text: str | None = None,
    ) -> dict[str, float]:
        """A moderator's verdict on a pair: ``not_duplicate`` and the pair (or the next copy of the same two
        texts) is never flagged again; ``duplicate`` and it always is. Kept beside the index. Returns the
        tenants' decision points the verdicts moved (after enough of them; README, "Feedback")."""
        row: dict[str, Any] = {"id": id, "duplicate_of": duplicate_of, "verdict": verdict, "tenant": tenant}
        row |= {"at": at, "reviewer": reviewer, "text": text, "duplicate_text": duplicate_text}
        return self.review_many([row])

    def review_many(self, verdicts: Iterable[Mapping[str, Any]]) -> dict[str, float]:
        """Many verdicts (``{"id", "duplicate_of", "verdict", "tenant"?, "at"?, ...}``) in one go; a
        missing ``at`` is now. Raises ``InvalidVerdictError`` at the first bad one; the rest are kept."""
        now = datetime.now(UTC).isoformat()
        values = []
        for row in verdicts:
            fields = {
                k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items() if v is not None
            }
            values.append(json.dumps({"at": now, **fields}, ensure_ascii=False).encode())
        refused, points = self._direct.review(values)
        for letter in refused:
            if letter is not None:
                raise InvalidVerdictError(letter)
        return {p.tenant: p.point for p in points}

    def count(self) -> int:
        """Documents stored in the index, every tenant."""
        return self._direct.count()

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def _post(row: Mapping[str, Any]) -> Post:
    created = row.get("created_at")
    return Post(
        text=row["text"],
        tenant=row.get("tenant", "default"),
        id=row["id"],
        created_at=created.isoformat() if isinstance(created, datetime) else created,
    )


def _decision(answer: Answer) -> Decision:
    if isinstance(answer, DeadLetter):
        raise InvalidDocumentError(answer)
    return answer
