"""Pair files → pairs → a training set of duplicate clusters → batches laid out for in-batch negatives.

Files: TSV (``.tsv``), CSV (``.csv``) or JSON lines (``.jsonl``/``.json``) with ``text_a``, ``text_b`` and
an optional ``label`` (1 duplicate, 0 not; absent means 1). One record per line: a quoted field may
not span lines (use JSONL for multi-line posts). Bad rows — empty text, a missing column, a label that
is not 0/1, broken quoting, invalid JSON — are counted by reason and skipped, never fatal; a file
whose header lacks ``text_a``/``text_b`` is an error (training on nothing is worse than stopping).

Batch layout (the twin-network one): row i holds an anchor and its positive; every other row's
positive is a negative for it, and so are the labelled non-duplicates of its cluster (hard negatives).
Duplicate clusters are the connected components of the positive pairs (A~B, B~C puts A, B, C in one
cluster), and nothing in an anchor's cluster is ever its negative (``losses.negative_mask``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from worker.model.manifest import DataFingerprint


class DataError(ValueError):
    """A pair file that cannot be read at all (missing, wrong header, unknown format)."""


@dataclass(frozen=True)
class Pair:
    text_a: str
    text_b: str
    label: int  # 1 duplicate, 0 not


@dataclass
class FileReport:
    """What reading one file found: kept rows and bad rows by reason."""

    name: str
    sha256: str = ""
    rows: int = 0
    bad: Counter[str] = field(default_factory=Counter)
    used: int | None = None

    @property
    def bad_rows(self) -> int:
        return sum(self.bad.values())

    def fingerprint(self) -> DataFingerprint:
        return DataFingerprint(
            name=self.name, sha256=self.sha256, rows=self.rows, bad_rows=self.bad_rows, used_rows=self.used
        )


_LABELS = {"1": 1, "0": 0, "1.0": 1, "0.0": 0, "true": 1, "false": 0}


def _label(raw: object) -> int | None:
    if raw is None or raw == "":
        return 1
    if isinstance(raw, bool):
        return int(raw)
    if isinstance(raw, int | float) and raw in (0, 1):
        return int(raw)
    return _LABELS.get(str(raw).strip().lower())


def _pair(record: dict[str, object], report: FileReport, allow_empty: bool) -> Pair | None:
    a, b = record.get("text_a"), record.get("text_b")
    if a is None or b is None:
        report.bad["missing_column"] += 1
        return None
    if not isinstance(a, str) or not isinstance(b, str):
        report.bad["not_text"] += 1
        return None
    if not allow_empty and (not a.strip() or not b.strip()):
        report.bad["empty_text"] += 1
        return None
    label = _label(record.get("label"))
    if label is None:
        report.bad["bad_label"] += 1
        return None
    return Pair(a.strip(), b.strip(), label)


def _delimited(
    lines: Iterator[str], delimiter: str, report: FileReport, allow_empty: bool
) -> Iterator[Pair | None]:
    try:
        header = next(csv.reader([next(lines)], delimiter=delimiter, strict=True))
    except (StopIteration, csv.Error) as error:
        raise DataError(f"{report.name}: no readable header") from error
    columns = [c.strip().lstrip("\ufeff") for c in header]
    if "text_a" not in columns or "text_b" not in columns:
        raise DataError(f"{report.name}: header needs text_a and text_b, has {columns}")
    for line in lines:
        if not line.strip():
            continue
        report.rows += 1
        try:
            fields = next(csv.reader([line], delimiter=delimiter, strict=True))
        except csv.Error:
            report.bad["broken_quoting"] += 1
            yield None
            continue
        if len(fields) != len(columns):
            report.bad["missing_column" if len(fields) < len(columns) else "extra_column"] += 1
            yield None
            continue
        yield _pair(dict(zip(columns, fields, strict=True)), report, allow_empty)


def _json_lines(lines: Iterator[str], report: FileReport, allow_empty: bool) -> Iterator[Pair | None]:
    for line in lines:
        if not line.strip():
            continue
        report.rows += 1
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            report.bad["invalid_json"] += 1
            yield None
            continue
        if not isinstance(record, dict):
            report.bad["invalid_json"] += 1
            yield None
            continue
        yield _pair(record, report, allow_empty)


def read_rows(path: Path, *, allow_empty: bool = False) -> tuple[list[Pair | None], FileReport]:
    """Every data row of one file in order: a ``Pair``, or ``None`` where the row is bad.

    ``allow_empty`` keeps rows with an empty text (scoring answers every row; training skips them).
    """
    path = Path(path)
    report = FileReport(name=str(path))
    if not path.is_file():
        raise DataError(f"no pair file at {path}")
    raw = path.read_bytes()
    report.sha256 = hashlib.sha256(raw).hexdigest()
    lines = iter(raw.decode("utf-8", errors="replace").splitlines())
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        rows = list(_delimited(lines, "\t", report, allow_empty))
    elif suffix == ".csv":
        rows = list(_delimited(lines, ",", report, allow_empty))
    elif suffix in (".jsonl", ".json"):
        rows = list(_json_lines(lines, report, allow_empty))
    else:
        raise DataError(f"{path}: unknown pair format {suffix!r} (tsv, csv or jsonl)")
    return rows, report


def read_pairs(path: Path) -> tuple[list[Pair], FileReport]:
    """All good pairs of one file, and the report of what was skipped."""
    rows, report = read_rows(path)
    pairs = [row for row in rows if row is not None]
    report.used = len(pairs)
    return pairs, report


def load_pairs(paths: Iterable[Path]) -> tuple[list[Pair], list[FileReport]]:
    """Pairs of several files, concatenated in order, with one report per file."""
    pairs: list[Pair] = []
    reports: list[FileReport] = []
    for path in paths:
        more, report = read_pairs(path)
        pairs += more
        reports.append(report)
    return pairs, reports


def _bucket(pair: Pair) -> int:
    return int.from_bytes(hashlib.sha256(pair.text_a.encode("utf-8")).digest()[:4], "big") % 10_000


def is_held_out(pair: Pair, fraction: float) -> bool:
    """Deterministic hold-out by a hash of ``text_a``: all pairs of one anchor text fall on one side,
    so held-out anchors are never seen in training (stricter than splitting pairs)."""
    return fraction > 0 and _bucket(pair) < fraction * 10_000


def split_selection(pairs: Sequence[Pair], holdout: float, fraction: float) -> tuple[list[Pair], list[Pair]]:
    """(kept for training, selection slice): the ``fraction`` of pairs whose hash bucket lies just
    above the held-out one, so the slice is disjoint from both the training pairs and the hold-out."""
    low, high = holdout * 10_000, (holdout + fraction) * 10_000
    kept: list[Pair] = []
    chosen: list[Pair] = []
    for pair in pairs:
        (chosen if low <= _bucket(pair) < high else kept).append(pair)
    return kept, chosen


def split_holdout(pairs: Sequence[Pair], fraction: float) -> tuple[list[Pair], list[Pair]]:
    """(kept for training, held out): about ``fraction`` of the pairs, the same ones on every run."""
    kept: list[Pair] = []
    held: list[Pair] = []
    for pair in pairs:
        (held if is_held_out(pair, fraction) else kept).append(pair)
    return kept, held


def split_dev(pairs: Sequence[Pair], train_fraction: float) -> tuple[list[Pair], list[Pair]]:
    """(trained on, kept as dev): the top ``train_fraction`` of hash buckets trains, by ``text_a``.

    The dev part is the low buckets, ``split_holdout(pairs, 1 - train_fraction)``'s held-out side: a
    benchmark finds the pairs a model never trained on with the hold-out rule alone.
    """
    return split_holdout(pairs, 1.0 - train_fraction)


def labelled_pools(pairs: Sequence[Pair], sources: Sequence[int]) -> list[list[Pair]]:
    """Each source's labelled pairs, for the pair ranking term: only sources with both labels."""
    by_source: dict[int, list[Pair]] = {}
    for pair, source in zip(pairs, sources, strict=True):
        by_source.setdefault(source, []).append(pair)
    return [pool for _, pool in sorted(by_source.items()) if {p.label for p in pool} == {0, 1}]


def sample_pairs(pairs: Sequence[Pair], limit: int | None, seed: int = 0) -> list[Pair]:
    """At most ``limit`` pairs, a fixed random subset in original order (evaluation on a budget)."""
    if limit is None or len(pairs) <= limit:
        return list(pairs)
    keep = sorted(random.Random(seed).sample(range(len(pairs)), limit))  # noqa: S311 - sampling, not secrets
    return [pairs[i] for i in keep]


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


def epoch_order(n_examples: int, seed: int, epoch: int) -> list[int]:
    """A permutation of the examples for one epoch, fixed by (seed, epoch) so a resumed run replays it."""
    order = list(range(n_examples))
    random.Random(f"{seed}:{epoch}").shuffle(order)  # noqa: S311 - shuffling, not secrets
    return order


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
