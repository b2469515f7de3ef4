"""The default model recipe, and where it finds its pair files: what ``python -m trainer default`` runs.

``default_settings`` is the recipe that won in ``bench/train_quality.py``; ``find_pair_files`` splits a
data directory into training files and the dev file. Benchmarks import both to know which pairs a
default model trained on. Importing this module costs no torch: the command line reads
``DEFAULT_DATA_DIR`` before it loads anything heavy.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from trainer.settings import TrainSettings
from worker.core.logs import get_logger

log = get_logger("trainer")

DEFAULT_DATA_DIR = Path("../shared/data")
PAIR_SUFFIXES = (".tsv", ".csv", ".jsonl")

# the default recipe's share of the dev file to train on; benchmarks compare models on the rest
DEV_TRAIN_SPLIT = 0.5
# the share of every training file (by ``text_a`` hash) the default recipe never trains on
HOLDOUT = 0.1


def pair_files(data_dir: Path) -> list[Path]:
    """Every pair file (TSV, CSV, JSONL) under ``data_dir``, sorted."""
    return sorted(p for p in data_dir.rglob("*") if p.is_file() and p.suffix.lower() in PAIR_SUFFIXES)


def find_pair_files(data_dir: Path) -> tuple[list[Path], Path | None]:
    """(training files, dev file) under ``data_dir``: files named ``dev.*`` are dev sets, not training
    files (the default recipe trains on half of the chosen one, ``dev_train_split``; other dev files are
    left alone); ``qqp/dev.tsv`` is preferred as the dev set, else the first dev file found."""
    files = pair_files(data_dir)
    devs = [p for p in files if p.stem.lower() == "dev"]
    preferred = [p for p in devs if p.parent.name == "qqp"]
    dev = (preferred or devs)[0] if devs else None
    return [p for p in files if p.stem.lower() != "dev"], dev


def default_settings(data_dir: Path, out: Path, budget_s: float, **overrides: Any) -> TrainSettings:
    """The winning recipe (``bench/train_quality.py``), sized to finish within ``budget_s`` on 2 CPU cores.

    A tenth of every training file is held out (by text_a hash) so the figures in the benchmark are
    measured on pairs the model never saw. Half of the dev file (by the same hash) is trained on as
    labelled pairs, through the pair ranking term: Quora's non-duplicates come only with the dev file,
    and the base model already saw its duplicates, so they are the one QQP signal left to learn from. The
    other half stays the dev set (selection, threshold) and is where the benchmark compares models. The
    deadline covers the whole run: the trainer measures its own speed and stops training in time to
    calibrate the threshold and write the directory.
    """
    train_files, dev = find_pair_files(data_dir)
    recipe: dict[str, Any] = {
        "train": train_files,
        "dev": dev,
        "out": out,
        "holdout": HOLDOUT,
        "arch": "transformer",
        "deadline_s": budget_s,
        "lr": 5e-5,
        "epochs": 5,
        "examples_per_epoch": 6400,
        "select_split": 0.05,
        "dev_train_split": DEV_TRAIN_SPLIT,
        "dev_max_pairs": 1000,
        "calibrate_max_pairs": 4000,
        "threads": min(2, os.cpu_count() or 1),
    }
    recipe.update(overrides)
    return TrainSettings(**recipe)


def build_default(data_dir: Path, out: Path, budget_s: float, *, device: str, progress: bool) -> None:
    """Fine-tune the default model on ``data_dir``'s pair files; with none, export the zero-shot one."""
    from trainer.export import export_pretrained  # these import torch: not before a command runs
    from trainer.train import train
    from worker.model.pretrained import default_base_model

    tick = time.monotonic()
    train_files, dev = find_pair_files(data_dir) if data_dir.is_dir() else ([], None)
    if not train_files:
        log.warning("no_pair_files_zero_shot_export", data_dir=str(data_dir))
        export_pretrained(default_base_model(), out, dev, device=device)
    else:
        train(default_settings(data_dir, out, budget_s, device=device), progress=progress)
    log.info("default_model_built", out=str(out), minutes=round((time.monotonic() - tick) / 60, 1))


PairSet = tuple[str, list[str], list[str], list[int]]
"""``(name, text_a, text_b, labels)``: a labelled pair set, for checks that compare models."""


def held_out_sets(data_dir: Path, max_pairs: int | None) -> list[PairSet]:
    """Labelled pairs no default model trained on, from the files the recipe uses: the untrained half
    of the dev file and the held-out tenth of each training file (a fixed sample of ``max_pairs`` each;
    absent files and one-label sets left out)."""
    train_files, dev = find_pair_files(data_dir) if data_dir.is_dir() else ([], None)
    chosen = [(dev_half_name(dev), dev, 1.0 - DEV_TRAIN_SPLIT)] if dev else []
    chosen += [(f"{path.parent.name} (held-out tenth)", path, HOLDOUT) for path in train_files]
    return _sets(chosen, max_pairs)


def dev_half_name(dev: Path) -> str:
    """The name of the dev file's untrained half: where the default recipe chose its threshold."""
    return f"{dev.parent.name} dev (untrained half)"


def other_dev_sets(data_dir: Path, max_pairs: int | None) -> list[PairSet]:
    """The dev files the recipe does not use at all (``paws/dev.tsv`` beside ``qqp/dev.tsv``), whole."""
    _, dev = find_pair_files(data_dir) if data_dir.is_dir() else ([], None)
    others = [p for p in pair_files(data_dir) if p.stem.lower() == "dev" and p != dev] if dev else []
    return _sets([(f"{path.parent.name} dev", path, 1.0) for path in others], max_pairs)


def _sets(chosen: list[tuple[str, Path, float]], max_pairs: int | None) -> list[PairSet]:
    from trainer.data import read_pairs
    from trainer.splits import is_held_out, sample_pairs

    sets = []
    for name, path, fraction in chosen:
        pairs = sample_pairs([p for p in read_pairs(path)[0] if is_held_out(p, fraction)], max_pairs)
        if pairs and len({p.label for p in pairs}) == 2:  # average precision needs both labels
            sets.append(
                (name, [p.text_a for p in pairs], [p.text_b for p in pairs], [p.label for p in pairs])
            )
    return sets
