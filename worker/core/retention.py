"""Retention: how far back, in record time, a post may find what it repeats. Pure.

A post with record time ``T`` of tenant ``t`` may match only points whose record time is at least
``T - window(t)`` (``Retention.floor``): the index filters by it (``ports.Query.after_ts``), the in-batch
matrix too (``decide.visibility``). The window is measured on the post's own record time, never the
wall clock, so a replay or a rerun of a backlog decides as the first run did.

Points that no post can match any more are removed in the background (``Retention.expiries``, run by
``worker.service.expiry``) from the newest record time the worker has committed, less the window, less
``EXPIRY_SLACK_MS``: a record up to that much older than the newest one (a lagging partition, a
producer's clock) still finds everything its own window holds. Removal never changes a decision that
the slack covers, since matching passes over those points already.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from worker.core.ports import Expiry

DAY_MS = 86_400_000
EXPIRY_SLACK_MS = 3_600_000
"""How far behind the newest committed record time a record may lag and still see all its window."""


def days_ms(days: float) -> int:
    """A retention in days (the settings' unit) as milliseconds of record time."""
    return round(days * DAY_MS)


@dataclass(frozen=True, slots=True)
class Retention:
    """The retention window, in milliseconds of record time: one for every tenant (None: keep
    forever) and overrides per tenant."""

    default_ms: int | None = None
    tenant_ms: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        windows = [self.default_ms, *self.tenant_ms.values()]
        if any(w is not None and w <= 0 for w in windows):
            raise ValueError(f"retention windows must be positive, got {windows}")

    @property
    def enabled(self) -> bool:
        return self.default_ms is not None or bool(self.tenant_ms)

    def window_ms(self, tenant: str) -> int | None:
        """The tenant's window (its own, else the default); None: its posts are kept forever."""
        return self.tenant_ms.get(tenant, self.default_ms)

    def floor(self, tenant: str, ts: int) -> int | None:
        """The earliest record time a post of ``tenant`` at record time ``ts`` may match; None: any."""
        window = self.window_ms(tenant)
        if window is None or ts - window <= 0:
            return None
        return ts - window

    def expiries(self, newest_ts: int, slack_ms: int = EXPIRY_SLACK_MS) -> list[Expiry]:
        """What to remove once records up to ``newest_ts`` are committed: per window, the points older
        than ``newest_ts - window - slack_ms`` (none where that is not after 0)."""
        out: list[Expiry] = []
        if self.default_ms is not None and newest_ts - self.default_ms - slack_ms > 0:
            out.append(Expiry(newest_ts - self.default_ms - slack_ms, spared=frozenset(self.tenant_ms)))
        for tenant, window in sorted(self.tenant_ms.items()):
            if newest_ts - window - slack_ms > 0:
                out.append(Expiry(newest_ts - window - slack_ms, tenant=tenant))
        return out


KEEP_ALL = Retention()
"""No retention: every post can be matched forever, and nothing expires."""
