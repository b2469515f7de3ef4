"""Process-level failures and what the loop does about each. Per-record problems are data, not these.

A bad record becomes a dead letter inside the batch step and is committed like any other. What is
left are problems of the process: a dependency that is away for now (back off, commit nothing, retry
from the last commit), a group that moved on while a batch ran (drop the batch uncommitted), and
everything else (no commit, log with traceback, exit non-zero). ``policy`` is the one place that
decides which is which; adapters at the edges (``consume``, ``publish``, the index backends) raise
``TransientError`` subclasses for outages so the loop never needs to know a client library.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass


class TwinflagError(Exception):
    """Base of twinflag's own errors. Messages name settings and sizes, never secrets or text."""


class TransientError(TwinflagError):
    """A dependency is unavailable for now: back off, commit nothing, redo the batch when it is back."""


class BrokerUnavailableError(TransientError):
    """Kafka did not answer or acknowledge in time."""


class IndexUnavailableError(TransientError):
    """The vector index (a Qdrant server) did not answer in time."""


class RebalancedError(TwinflagError):
    """The group reassigned partitions while a batch ran: its commit is refused; the new owner redoes it."""


class FatalError(TwinflagError):
    """Configuration, model or index do not fit together: exit non-zero with this message."""


class Action(enum.Enum):
    BACK_OFF = "back_off"  # rewind to the last commit, wait (bounded exponential), retry; not ready
    DROP_BATCH = "drop_batch"  # rewind, no wait: the batch is uncommitted and redone by its owner
    EXIT = "exit"  # no commit, log with traceback, exit non-zero


def policy(exc: BaseException) -> Action:
    """What the loop does after ``exc`` escaped a batch. Unknown exceptions exit: never guess."""
    if isinstance(exc, RebalancedError):
        return Action.DROP_BATCH
    if isinstance(exc, TransientError | ConnectionError | TimeoutError):
        return Action.BACK_OFF
    # kafka-python marks the errors worth retrying (timeouts, leader moves) with ``retriable``.
    if getattr(type(exc), "retriable", False) is True:
        return Action.BACK_OFF
    return Action.EXIT


class IndexMismatchError(RuntimeError):
    """The collection holds another vector space than the model: refuse to mix them."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Waits between retries while a dependency is away: doubled per failure from ``initial_s``, capped
    at ``max_s``, each drawn from ``[(1 - jitter) × delay, delay]`` so that replicas cut off by one
    outage do not all retry in the same instant."""

    initial_s: float = 0.5
    max_s: float = 30.0
    jitter: float = 0.5

    def wait_s(self, failures: int, rng: random.Random) -> float:
        """The wait after the ``failures``-th consecutive failure (1 for the first)."""
        delay = min(self.initial_s * 2.0 ** max(failures - 1, 0), self.max_s)
        return delay * (1.0 - self.jitter * rng.random())
