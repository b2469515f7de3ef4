"""Flags, decisions and dead letters → Kafka.

CONTRACT (owned by the Kafka helper; the protocol is fixed).
"""

from __future__ import annotations

from typing import Protocol


class FlagPublisher(Protocol):
    """Where the batch step sends its output. ``send`` may buffer; ``flush`` makes it durable."""

    def send(self, topic: str, key: bytes | None, value: bytes) -> None: ...

    def flush(self, timeout_s: float) -> None:
        """Block until every send so far is acknowledged; raise if that cannot happen in time."""
