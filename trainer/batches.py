"""Pairs → a training set of duplicate clusters → batches laid out for in-batch negatives.

Batch layout (the twin-network one): row i holds an anchor and its positive; every other row's
positive is a negative for it, and so are the labelled non-duplicates of its cluster (hard negatives).
Duplicate clusters are the connected components of the positive pairs (A~B, B~C puts A, B, C in one
cluster), and nothing in an anchor's cluster is ever its negative (``losses.negative_mask``). The
labelled pairs themselves feed the pair ranking term, a pool per file (``labelled_pools``,
``pair_batch_for``).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from trainer.data import Pair

# ---------------------------------------------------------------------------------------------
# Clusters and the training set


def text_key(text: str) -> str:
    """Identity of a text for clustering: whitespace runs and case do not make a different post."""
    return " ".join(text.split()).casefold()


def clusters_of(edges: Iterable[tuple[int, int]], size: int) -> list[int]:
    """Union-find: a cluster id (the smallest member) for each of ``size`` items, given duplicate edges."""
    parent = list(range(size))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [find(x) for x in range(size)]


@dataclass(frozen=True)
class TrainingSet:
    """Unique texts, their duplicate cluster, the positive examples and labelled hard negatives.

    ``examples[k] = (anchor_id, positive_id)``; ``hard_negatives[cluster]`` lists text ids labelled
    non-duplicate of some member of that cluster (never a member itself).
    """

    texts: list[str]
    clusters: list[int]
    examples: list[tuple[int, int]]
    hard_negatives: dict[int, list[int]]
    conflicts: int  # labelled non-duplicate pairs that the positives put in one cluster (dropped)
    sources: list[int] = field(default_factory=list)  # per example: the index of the file it came from


def build_training_set(pairs: Sequence[Pair], sources: Sequence[int] | None = None) -> TrainingSet:
    """``sources[i]``: which file ``pairs[i]`` came from (unset: all from one), for same-source batches."""
    ids: dict[str, int] = {}
    texts: list[str] = []

    def text_id(text: str) -> int:
        key = text_key(text)
        if key not in ids:
            ids[key] = len(texts)
            texts.append(text)
        return ids[key]

    positives: dict[tuple[int, int], int] = {}  # example → source of its first occurrence
    negatives: list[tuple[int, int]] = []
    for i, pair in enumerate(pairs):
        a, b = text_id(pair.text_a), text_id(pair.text_b)
        if a == b:
            continue  # a text paired with itself teaches nothing
        if pair.label == 1:
            positives.setdefault((a, b), 0 if sources is None else sources[i])
        else:
            negatives.append((a, b))
    clusters = clusters_of(list(positives), len(texts))
    hard: dict[int, set[int]] = {}
    conflicts = 0
    for a, b in negatives:
        if clusters[a] == clusters[b]:
            conflicts += 1
            continue
        hard.setdefault(clusters[a], set()).add(b)
        hard.setdefault(clusters[b], set()).add(a)
    examples = list(positives)
    hard_lists = {c: sorted(v) for c, v in hard.items()}
    return TrainingSet(texts, clusters, examples, hard_lists, conflicts, list(positives.values()))


def group_by_source(order: Sequence[int], sources: Sequence[int], batch_size: int, seed: str) -> list[int]:
    """``order`` regrouped so each run of ``batch_size`` examples comes from one file, runs shuffled.

    In-batch negatives from another corpus (a tweet against a Quora question) are told apart by topic
    and style alone and teach nothing; negatives from the same corpus are the hard ones. Each file's
    last, short run is left out (fewer than ``batch_size`` examples; a later epoch's permutation
    brings them back) so it does not fill a batch with another file's examples.
    """
    runs: list[list[int]] = []
    by_source: dict[int, list[int]] = {}
    for k in order:
        by_source.setdefault(sources[k], []).append(k)
    for items in by_source.values():
        whole = len(items) - len(items) % batch_size if len(items) >= batch_size else len(items)
        runs += [items[i : i + batch_size] for i in range(0, whole, batch_size)]
    random.Random(seed).shuffle(runs)  # noqa: S311 - shuffling, not secrets
    return [k for run in runs for k in run]


# ---------------------------------------------------------------------------------------------
# Batches


@dataclass(frozen=True)
class Batch:
    """Texts of one step. Row i: ``anchors[i]`` ~ ``candidates[i]``; candidates after the first B rows
    are hard negatives. Cluster ids let ``negative_mask`` keep duplicates apart."""

    anchors: list[str]
    candidates: list[str]
    anchor_clusters: list[int]
    candidate_clusters: list[int]


def make_batches(
    data: TrainingSet,
    order: Sequence[int],
    batch_size: int,
    rng: random.Random,
    hard_per_example: int = 1,
    mined: dict[int, list[int]] | None = None,
) -> list[Batch]:
    """Batches of the examples in ``order``.

    An example whose cluster is already in the batch moves to the front of the next one (in this
    batch it would only be masked out of every other row's negatives). Each example brings up to
    ``hard_per_example`` hard negatives, drawn from its cluster's labelled non-duplicates and the
    ones ``mined`` for its cluster.
    """
    queue = deque(order)
    batches: list[Batch] = []
    while queue:
        rows: list[int] = []
        seen: set[int] = set()
        deferred: list[int] = []
        while queue and len(rows) < batch_size:
            k = queue.popleft()
            cluster = data.clusters[data.examples[k][0]]
            if cluster in seen:
                deferred.append(k)
            else:
                seen.add(cluster)
                rows.append(k)
        queue.extendleft(reversed(deferred))
        batches.append(_batch(data, rows, rng, hard_per_example, mined or {}))
    return batches


def _batch(
    data: TrainingSet,
    rows: Sequence[int],
    rng: random.Random,
    hard_per_example: int,
    mined: dict[int, list[int]],
) -> Batch:
    anchors: list[str] = []
    positives: list[str] = []
    anchor_clusters: list[int] = []
    hard: list[int] = []
    for k in rows:
        a, p = data.examples[k]
        if rng.random() < 0.5:
            a, p = p, a  # both directions of a pair serve as examples
        cluster = data.clusters[a]
        anchors.append(data.texts[a])
        positives.append(data.texts[p])
        anchor_clusters.append(cluster)
        pool = data.hard_negatives.get(cluster, []) + mined.get(cluster, [])
        if pool and hard_per_example > 0:
            hard += rng.sample(pool, min(hard_per_example, len(pool)))
    return Batch(
        anchors=anchors,
        candidates=positives + [data.texts[h] for h in hard],
        anchor_clusters=anchor_clusters,
        candidate_clusters=anchor_clusters + [data.clusters[h] for h in hard],
    )


# ---------------------------------------------------------------------------------------------
# Labelled pairs for the pair ranking term


def labelled_pools(pairs: Sequence[Pair], sources: Sequence[int]) -> list[list[Pair]]:
    """Each source's labelled pairs, for the pair ranking term: only sources with both labels."""
    by_source: dict[int, list[Pair]] = {}
    for pair, source in zip(pairs, sources, strict=True):
        by_source.setdefault(source, []).append(pair)
    return [pool for _, pool in sorted(by_source.items()) if {p.label for p in pool} == {0, 1}]


def pair_batch_for(pools: Sequence[Sequence[Pair]], size: int, seed: str) -> list[Pair]:
    """``size`` labelled pairs from one pool, the pool chosen uniformly: a small labelled file (the
    trained part of the dev set) weighs as much as a large one (odds ∝ √size did worse on every
    evaluation set: bench/TRAINING.md). Fixed by ``seed``, so a resumed run replays it."""
    if not pools:
        return []
    rng = random.Random(f"{seed}:pairs")  # noqa: S311 - sampling, not secrets
    pool = pools[rng.randrange(len(pools))]
    return rng.sample(pool, min(size, len(pool)))
