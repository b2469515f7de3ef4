"""Retention's background half: remove the points no post can match any more (``worker.core.retention``).

The loop hands over every commit's records (``Expirer.after_commit``); at most once per ``every_s`` the
index removes, per retention window, the points older than the newest committed record time less the
window and ``EXPIRY_SLACK_MS``. The clock is the records', never the wall clock: a worker replaying a
month-old backlog removes what that backlog's posts can no longer match, not what today's could.
Matching already passes over expired points, so removal only frees disk and memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from worker.core.logs import get_logger
from worker.core.ports import VectorIndex
from worker.core.records import Record, order_key
from worker.core.retention import Retention

EXPIRE_EVERY_S = 60.0

log = get_logger("expiry")


class Expirer:
    """Removes expired points after commits, at most once per ``every_s`` (a monotonic clock paces
    it; the record times decide what goes)."""

    def __init__(
        self,
        index: VectorIndex,
        retention: Retention,
        every_s: float = EXPIRE_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._index, self._retention, self._every_s, self._clock = index, retention, every_s, clock
        self._newest = 0  # the newest record time committed
        self._last: float | None = None  # when the last expiry ran

    def after_commit(self, records: Sequence[Record]) -> int:
        """Note the committed records' times; expire when due. Returns how many points were removed."""
        if not self._retention.enabled or not records:
            return 0
        self._newest = max(self._newest, *(order_key(r)[0] for r in records))
        now = self._clock()
        if self._last is not None and now - self._last < self._every_s:
            return 0
        self._last = now
        expiries = self._retention.expiries(self._newest)
        if not expiries:
            return 0
        removed = self._index.expire(expiries)
        log.info(
            "index.expired",
            removed=removed,
            newest_ts=self._newest,
            cutoffs={e.tenant or "*": e.before_ts for e in expiries},
            ms=round((self._clock() - now) * 1000, 3),
        )
        return removed
