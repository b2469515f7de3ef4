"""Which pairs train, which select the model and which calibrate its threshold: fixed by hashes, not luck.

Every split is by a hash of ``text_a``, so all pairs of one anchor text fall on one side and a run, a
resumed run and a benchmark agree on the sides without sharing any state. From low to high hash
bucket: the held-out fraction (``holdout``), then each training file's selection slice
(``select_split``); the dev file's low buckets stay the dev set and its top ``dev_train_split`` trains.
``plan_data`` applies them all to the files a run names; ``sample_pairs`` takes the fixed random
samples that evaluation on a budget scores.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from trainer.data import Columns, FileReport, Pair, read_pairs
from trainer.settings import TrainSettings
from worker.core.logs import get_logger

log = get_logger("trainer")


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


def sample_pairs(pairs: Sequence[Pair], limit: int | None, seed: int = 0) -> list[Pair]:
    """At most ``limit`` pairs, a fixed random subset in original order (evaluation on a budget)."""
    if limit is None or len(pairs) <= limit:
        return list(pairs)
    keep = sorted(random.Random(seed).sample(range(len(pairs)), limit))  # noqa: S311 - sampling, not secrets
    return [pairs[i] for i in keep]


# ---------------------------------------------------------------------------------------------
# A run's data plan


@dataclass
class DataPlan:
    """What one run trains on, selects the model on and calibrates the threshold on.

    ``pairs`` are every training file minus its held-out and selection slices, then the trained part
    of the dev file; ``sources[i]`` is the index in ``reports`` of the file ``pairs[i]`` came from.
    ``select_sets`` are samples of the dev set and of each file's selection slice, by name;
    ``calibrate_on`` is the dev set, or without one the selection slices (never trained on either),
    of which ``calibrate_pairs`` calibrate the threshold.
    """

    pairs: list[Pair]
    sources: list[int]
    reports: list[FileReport]
    dev_report: FileReport | None
    select_sets: dict[str, list[Pair]]
    calibrate_on: list[Pair]
    calibrate_name: str
    calibrate_pairs: int


def read_training_files(
    settings: TrainSettings,
) -> tuple[list[Pair], list[FileReport], list[int], dict[str, list[Pair]]]:
    """Training pairs of every file minus its held-out fraction and selection slice, the file index of
    each pair, reports that say how many were used, and the selection slices (labelled ones only)."""
    pairs: list[Pair] = []
    reports: list[FileReport] = []
    sources: list[int] = []
    selection: dict[str, list[Pair]] = {}
    columns = Columns.parse(settings.columns) if settings.columns else None
    for number, path in enumerate(settings.train):
        more, report = read_pairs(path, columns)
        kept, _ = split_holdout(more, settings.holdout)
        if settings.select_split > 0:
            kept, chosen = split_selection(kept, settings.holdout, settings.select_split)
            if {p.label for p in chosen} == {0, 1}:  # AP needs both kinds
                selection[f"{path.parent.name}/{path.name} selection slice"] = chosen
        report.used = len(kept)
        pairs += kept
        sources += [number] * len(kept)
        reports.append(report)
        log.info("pairs_read", **report.summary(), used=len(kept))
    return pairs, reports, sources, selection


def plan_data(settings: TrainSettings) -> DataPlan:
    """Read the run's files and split them: see the module docstring."""
    if not settings.train:
        raise ValueError("no training files given")
    pairs, reports, sources, selection = read_training_files(settings)
    dev_pairs: list[Pair] = []
    dev_report: FileReport | None = None
    if settings.dev is not None:
        dev_pairs, dev_report = read_pairs(
            settings.dev, Columns.parse(settings.columns) if settings.columns else None
        )
        if settings.dev_train_split > 0:
            trained, dev_pairs = split_dev(dev_pairs, settings.dev_train_split)
            pairs += trained
            sources += [len(reports)] * len(trained)
            reports.append(dataclasses.replace(dev_report, used=len(trained)))
            dev_report.used = len(dev_pairs)
            log.info("dev_pairs_trained_on", file=dev_report.name, trained=len(trained), kept=len(dev_pairs))
    dev_name = Path(dev_report.name).name if dev_report is not None and dev_pairs else None
    # model selection: the dev set and each training file's selection slice, best mean AP wins
    select_sets = {dev_name: dev_pairs} if dev_name is not None else {}
    select_sets.update(selection)
    select_sets = {k: sample_pairs(v, settings.dev_max_pairs, settings.seed) for k, v in select_sets.items()}
    if dev_name is not None:
        calibrate_on, calibrate_name = dev_pairs, dev_name
    else:
        calibrate_on = [p for pairs_of_set in selection.values() for p in pairs_of_set]
        calibrate_name = " + ".join(selection)
    calibrate_pairs = min(len(calibrate_on), settings.calibrate_max_pairs or len(calibrate_on))
    return DataPlan(
        pairs, sources, reports, dev_report, select_sets, calibrate_on, calibrate_name, calibrate_pairs
    )
