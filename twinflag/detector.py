"""``Detector``: a model and an index, opened once, asked through the worker's batch step."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from worker.core.messages import DeadLetter, Decision, Deletion, Match
from worker.service.direct import CHECK_ID, Answer, DirectStep, Post, open_direct
from worker.service.settings import WorkerSettings, load_from_environment

__all__ = ["Decision", "Detector", "InvalidDocumentError", "Match"]


class InvalidDocumentError(ValueError):
    """A document the worker would dead-letter (an empty text, an over-long id, ...): ``code`` says why."""

    def __init__(self, letter: DeadLetter) -> None:
        super().__init__(letter.reason)
        self.code = letter.code


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
