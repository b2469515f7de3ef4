"""A simulated moderator for a stream: verdicts answered from the truth, and scores of one half.

What the reviewer sees and answers (``review``): each verdict names a pair of posts of one half, with
both texts and the tenant, and answers ``duplicate`` when the truth puts the two posts in the same
cluster (an original with its copies, edits and rewrites), else ``not_duplicate``. The pairs are

- every flag (the post and the ``duplicate_of`` it was flagged against);
- the ``near`` unflagged posts with the highest best-match score, against that best match: the
  "possible duplicates" a moderation queue shows just below the decision point;
- ``missed`` reposts left unflagged and not reviewed above, a seeded random sample, against their true
  original (a user's report: "this is a repost of ...").

Each verdict is a message of the worker's ``verdicts`` topic (``ModeratorVerdict``); its ``at`` is the
later post's ``created_at`` and its ``reviewer`` is ``REVIEWER``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from devkit.posts.score import precision_recall
from devkit.posts.stream import DUPLICATE_KINDS

REVIEWER = "simulated-from-truth"
T = TypeVar("T")


@dataclass(frozen=True)
class Review:
    """The verdicts, in the order reviewed, and how many pairs came from each source (``flag``, ``near``,
    ``missed``)."""

    verdicts: list[dict[str, Any]]
    sources: dict[str, int]


def halves(rows: Sequence[T]) -> tuple[list[T], list[T]]:
    """The first and second half of a stream, by arrival (the second one longer when odd)."""
    middle = len(rows) // 2
    return list(rows[:middle]), list(rows[middle:])


def clusters(truth: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Each post's cluster: the original it repeats, or itself."""
    return {str(row["id"]): str(row["duplicate_of"] or row["id"]) for row in truth}


def review(
    posts: Sequence[Mapping[str, Any]],
    decisions: Sequence[Mapping[str, Any]],
    truth: Sequence[Mapping[str, Any]],
    *,
    near: int,
    missed: int,
    seed: int,
) -> Review:
    """The reviewer's verdicts on ``posts`` (one half) from their ``decisions`` (as ``Decision`` JSON:
    ``id``, ``flagged``, ``duplicate_of``, ``score``, ``matches``) and the stream's truth."""
    by_id = {str(p["id"]): p for p in posts}
    cluster, kind = clusters(truth), {str(row["id"]): row["kind"] for row in truth}
    pairs: dict[tuple[str, str], str] = {}  # (id, duplicate_of) → where the pair came from
    for d in decisions:
        if d["flagged"]:
            pairs.setdefault((d["id"], d["duplicate_of"]), "flag")
    unflagged = sorted(
        (d for d in decisions if not d["flagged"] and d["matches"]), key=lambda d: (-d["score"], d["id"])
    )
    for d in unflagged[:near]:
        pairs.setdefault((d["id"], d["matches"][0]["id"]), "near")
    reviewed = {later for later, _ in pairs}
    left = [
        d["id"]
        for d in decisions
        if not d["flagged"] and kind[d["id"]] in DUPLICATE_KINDS and d["id"] not in reviewed
    ]
    rng = random.Random(seed)  # noqa: S311 -- a reproducible sample, not cryptography
    for later in sorted(rng.sample(left, min(missed, len(left)))):
        pairs.setdefault((later, cluster[later]), "missed")
    verdicts = [verdict(by_id[later], by_id[earlier], cluster) for later, earlier in pairs]
    return Review(verdicts, dict(Counter(pairs.values())))


def verdict(post: Mapping[str, Any], other: Mapping[str, Any], cluster: Mapping[str, str]) -> dict[str, Any]:
    """The verdict on ``post`` as a duplicate of the earlier ``other``, with both texts."""
    same = cluster[str(post["id"])] == cluster[str(other["id"])]
    return {
        "id": post["id"],
        "duplicate_of": other["id"],
        "tenant": post["tenant"],
        "verdict": "duplicate" if same else "not_duplicate",
        "at": post["created_at"],
        "reviewer": REVIEWER,
        "text": post["text"],
        "duplicate_text": other["text"],
    }


def half_score(
    decisions: Iterable[Mapping[str, Any]], truth: Sequence[Mapping[str, Any]], ids: set[str]
) -> dict[str, Any]:
    """Precision, recall and F1 of the decisions of the posts ``ids`` (one half) against the whole
    stream's truth: a flag naming a post of the other half counts; recall is over the reposts among
    ``ids``. Also the flags, and those a moderator's verdict decided (``decided_by: moderator``)."""
    mine = [d for d in decisions if d["id"] in ids]
    score = precision_recall(mine, truth)
    duplicates = sum(1 for row in truth if row["id"] in ids and row["kind"] in DUPLICATE_KINDS)
    precision = score.correct / score.flags if score.flags else 1.0
    recall = score.correct / duplicates if duplicates else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "flags": score.flags,
        "correct": score.correct,
        "duplicates": duplicates,
        "decided_by_moderator": sum(1 for d in mine if d.get("decided_by") == "moderator"),
    }
