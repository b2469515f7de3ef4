"""Fakes for the worker's protocols: fast, deterministic, and faithful to the contracts they stand in for.

The in-memory index is a real backend (``worker.index.memory.MemoryIndex``), the reference of the
``VectorIndex`` contract suite; what lives here exists only for tests: a list publisher, a hash
encoder, record builders, and ``run_and_send`` (the loop's step → emit → send, without the loop).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from worker.core.emit import Topics, emit
from worker.core.outcome import BatchOutcome
from worker.core.ports import Encoder, Publisher, VectorIndex, Verifier
from worker.core.records import Record
from worker.core.step import StepConfig, run_batch
from worker.index.memory import MemoryIndex

__all__ = ["HashEncoder", "ListPublisher", "MemoryIndex", "doc_record", "raw_record", "run_and_send"]


class ListPublisher:
    """Records every send; ``flush`` only counts. ``FlagPublisher`` for tests."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []
        self.flushes = 0

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.sent.append((topic, key, value))

    def flush(self, timeout_s: float) -> None:
        self.flushes += 1

    def messages(self, topic: str) -> list[tuple[bytes | None, bytes]]:
        return [(key, value) for t, key, value in self.sent if t == topic]

    def json(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(value) for _, value in self.messages(topic)]


class HashEncoder:
    """Deterministic stand-in for a model: signed hashing of character trigrams, L2-normalised.

    Lower-cased trigrams, so a typo'd or re-cased repost scores well above 0.8, while unrelated texts
    land near 0 (signed buckets cancel out; dim 256 keeps the noise around ±0.06).
    """

    def __init__(self, dim: int = 256, version: str = "hash-trigram-v1", max_tokens: int = 512) -> None:
        self._dim = dim
        self._version = version
        self._max_tokens = max_tokens
        self.calls = 0
        self.embedded: list[str] = []

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def version(self) -> str:
        return self._version

    @property
    def max_tokens(self) -> int:
        return self._max_tokens

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        self.embedded.extend(texts)
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row] = self._one(text)
        return out

    def known(self, texts: Sequence[str]) -> list[bool]:
        """A text with a letter or digit has trigrams worth comparing; one of symbols only does not."""
        return [any(ch.isalnum() for ch in text) for text in texts]

    def health(self) -> bool:
        return True

    def _one(self, text: str) -> np.ndarray:
        padded = f"  {text.lower()}  "
        vector = np.zeros(self._dim, dtype=np.float64)
        for start in range(len(padded) - 2):
            code = zlib.crc32(padded[start : start + 3].encode("utf-8", "surrogatepass"))
            vector[code % self._dim] += 1.0 if (code >> 16) & 1 else -1.0
        norm = float(np.linalg.norm(vector))
        if norm == 0.0:  # nothing to hash: a fixed unit vector keeps the output normalised
            vector[0], norm = 1.0, 1.0
        return (vector / norm).astype(np.float32)


def doc_record(
    doc_id: str,
    text: str,
    offset: int,
    *,
    partition: int = 0,
    timestamp_ms: int = 1_700_000_000_000,
    tenant: str | None = None,
    topic: str = "documents",
) -> Record:
    """A record carrying one document, keyed by its id like a well-behaved producer would."""
    body: dict[str, object] = {"id": doc_id, "text": text}
    if tenant is not None:
        body["tenant"] = tenant
    return raw_record(
        json.dumps(body).encode(),
        offset,
        key=doc_id.encode(),
        partition=partition,
        timestamp_ms=timestamp_ms,
        topic=topic,
    )


def raw_record(
    value: bytes | None,
    offset: int,
    *,
    key: bytes | None = None,
    partition: int = 0,
    timestamp_ms: int = 1_700_000_000_000,
    topic: str = "documents",
) -> Record:
    return Record(topic, partition, offset, timestamp_ms, key, value)


def run_and_send(
    records: Sequence[Record],
    encoder: Encoder,
    index: VectorIndex,
    publisher: Publisher,
    config: StepConfig,
    topics: Topics | None = None,
    verifier: Verifier | None = None,
) -> BatchOutcome:
    """One batch as the loop runs it, minus flush and commit: the step, then every message sent."""
    outcome = run_batch(records, encoder, index, config, verifier)
    for message in emit(outcome, topics or Topics()):
        publisher.send(message.topic, message.key, message.value)
    return outcome
