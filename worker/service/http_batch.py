"""The HTTP API's queue: one thread answers what waits with one batch step per kind, not one per request."""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Literal

from worker.core.logs import get_logger
from worker.core.messages import Deletion
from worker.service.direct import Answer, DirectStep, Post
from worker.service.http_schema import ApiError

log = get_logger("http")


@dataclass(slots=True)
class _Job:
    kind: Literal["check", "write"]
    item: Post | Deletion
    future: Future[Answer | None] = field(default_factory=Future)


class Batcher:
    """One thread answering queued jobs in batches: consecutive checks as one read-only step, consecutive
    adds and deletions as one writing step (in arrival order)."""

    def __init__(self, direct: DirectStep, max_batch: int, max_pending: int) -> None:
        self._direct, self._max_batch = direct, max_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue(max_pending)
        self._thread = threading.Thread(target=self._run, name="http-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        self._queue.put(None)
        self._thread.join(timeout_s)

    def submit(self, kind: Literal["check", "write"], item: Post | Deletion) -> Future[Answer | None]:
        job = _Job(kind, item)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise ApiError(503, "busy", "too many requests waiting; retry later") from None
        return job.future

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = [first]
            while len(jobs) < self._max_batch:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)  # stop after this batch
                    break
                jobs.append(job)
            start = 0
            for end in range(1, len(jobs) + 1):  # runs of one kind, in arrival order
                if end == len(jobs) or jobs[end].kind != jobs[start].kind:
                    self._answer(jobs[start:end])
                    start = end

    def _answer(self, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        kind = jobs[0].kind
        try:
            answers: list[Answer | None]
            if kind == "check":
                answers = list(self._direct.check([j.item for j in jobs if isinstance(j.item, Post)]))
            else:
                answers = self._direct.write([j.item for j in jobs])
        except Exception as error:  # process-level (index, encoder): every waiting request gets a 500
            log.exception("http.batch_failed", kind=kind, requests=len(jobs))
            for job in jobs:
                job.future.set_exception(error)
            return
        for job, answer in zip(jobs, answers, strict=True):
            job.future.set_result(answer)
        log.info(
            "http.batch", kind=kind, requests=len(jobs), ms=round((time.perf_counter() - started) * 1000, 3)
        )
