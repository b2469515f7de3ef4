"""What a demo stream is: the kinds of post, their shares, and the records written for each post."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal, TypedDict

Kind = Literal["original", "exact", "edit", "rewrite", "near_miss", "cross_tenant"]
KINDS: Final[tuple[Kind, ...]] = ("original", "exact", "edit", "rewrite", "near_miss", "cross_tenant")
DUPLICATE_KINDS: Final[frozenset[str]] = frozenset({"exact", "edit", "rewrite"})
"""Kinds a detector should flag: each names an earlier member of its cluster."""

DEFAULT_TENANT: Final = "default"
OTHER_TENANT: Final = "acme"
DEFAULT_N: Final = 500
DEFAULT_SEED: Final = 4
MIN_N: Final = 20
SHARES: Final[Mapping[Kind, float]] = {
    "exact": 0.07,
    "edit": 0.20,
    "rewrite": 0.09,
    "near_miss": 0.08,
    "cross_tenant": 0.04,
}
"""Share of each derived kind in a stream; originals make up the rest (52 %)."""
OTHER_TENANT_SHARE: Final = 0.15
START: Final = datetime(2025, 6, 2, 7, 0, tzinfo=UTC)
MEAN_GAP_S: Final = 150.0
"""Mean time between posts; reposts follow their source after about a tenth of the stream's span."""

POSTS_FILE: Final = "posts.jsonl"
TRUTH_FILE: Final = "truth.jsonl"


class PostRecord(TypedDict):
    """One line of ``posts.jsonl``: a document as the worker reads it."""

    id: str
    text: str
    tenant: str
    created_at: str


class TruthRecord(TypedDict):
    """One line of ``truth.jsonl``: what the post really is."""

    id: str
    duplicate_of: str | None
    kind: Kind


@dataclass(frozen=True)
class Stream:
    """Posts and their truth, both in arrival order, one truth record per post."""

    posts: list[PostRecord]
    truth: list[TruthRecord]


def composition(n: int) -> dict[Kind, int]:
    """How many posts of each kind a stream of ``n`` posts has (every kind at least once)."""
    if n < MIN_N:
        raise ValueError(f"a stream needs at least {MIN_N} posts, got {n}")
    derived = {kind: max(1, round(n * share)) for kind, share in SHARES.items()}
    return {"original": n - sum(derived.values()), **derived}
