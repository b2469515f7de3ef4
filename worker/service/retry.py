"""Clients built while their servers may be down: backing off, and saying in each retry's log line
which address is unreachable and which setting names it, so an operator knows what to fix.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import TypeVar

from worker.core.errors import Action, Backoff, policy
from worker.core.logs import get_logger
from worker.index.config import mask_credentials
from worker.service.settings import WorkerSettings

log = get_logger("main")
T = TypeVar("T")


def server_of(what: str, settings: WorkerSettings) -> dict[str, str]:
    """Where a client connects and the setting that says so: what an operator fixes when it is down."""
    if what == "index":
        if settings.index.url is None:
            return {"address": str(settings.index.path), "setting": "TWINFLAG_INDEX__PATH"}
        return {"address": mask_credentials(settings.index.url), "setting": "TWINFLAG_INDEX__URL"}
    return {"address": settings.kafka.bootstrap_servers, "setting": "TWINFLAG_KAFKA__BOOTSTRAP_SERVERS"}


def retrying(what: str, build: Callable[[], T], settings: WorkerSettings, stop: threading.Event) -> T | None:
    """Build a client, backing off while its server is unavailable; None if stopped meanwhile. Each
    retry's log line names the address and the setting that holds it."""
    backoff, failures = backoff_of(settings), 0
    rng = random.Random()  # noqa: S311 -- jitter for retries, not secrets
    while not stop.is_set():
        try:
            return build()
        except Exception as error:
            if policy(error) is not Action.BACK_OFF:
                raise
            failures += 1
            delay = backoff.wait_s(failures, rng)
            log.warning(
                "unavailable",
                what=what,
                **server_of(what, settings),
                error=type(error).__name__,
                retry_in_s=round(delay, 3),
            )
            stop.wait(delay)
    return None


def backoff_of(settings: WorkerSettings) -> Backoff:
    return Backoff(settings.backoff_initial_s, settings.backoff_max_s)
