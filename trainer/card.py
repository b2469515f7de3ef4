"""The model card: the one place that writes a ``Manifest``, for trained and exported models alike.

A model directory describes itself: architecture and sizes, the pad id and pooling the worker must
use, the threshold and what it was calibrated on, fingerprints of the data, dev metrics, the recipe
(``training``) and the code that made it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import JsonValue
from tokenizers import Tokenizer

from trainer.checkpoint import RunState
from trainer.data import Pair
from trainer.settings import TrainSettings
from worker import __version__
from worker.model.manifest import (
    Architecture,
    BiLSTMParams,
    DataFingerprint,
    Manifest,
    Thresholds,
    TransformerParams,
)
from worker.model.tokenizer import pad_token_id

POOLING: dict[Architecture, Literal["mean", "mean_max"]] = {"transformer": "mean", "bilstm": "mean_max"}
ZERO_SHOT: dict[str, JsonValue] = {"recipe": "zero-shot export, no training"}  # an export's ``training``


def code_version() -> str:
    """twinflag's version and, inside a git checkout, the commit (``-dirty`` with local changes)."""
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty"],  # noqa: S607 - git from PATH, read-only
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+{described}" if described else __version__


def model_card(
    *,
    architecture: Architecture,
    params: TransformerParams | BiLSTMParams,
    dim: int,
    max_tokens: int,
    tokenizer: Tokenizer,
    thresholds: Thresholds,
    base_model: str | None,
    training: dict[str, JsonValue],
    training_data: Sequence[DataFingerprint] = (),
    dev_data: DataFingerprint | None = None,
    dev_metrics: dict[str, float] | None = None,
) -> Manifest:
    """The manifest of a model about to be written (``save_model_dir`` stamps the version)."""
    return Manifest(
        architecture=architecture,
        hyperparameters=params,
        dim=dim,
        max_tokens=max_tokens,
        pooling=POOLING[architecture],
        pad_token_id=pad_token_id(tokenizer),
        thresholds=thresholds,
        base_model=base_model,
        training_data=list(training_data),
        dev_data=dev_data,
        dev_metrics=dev_metrics or {},
        training=training,
        code_version=code_version(),
    )


def training_record(
    settings: TrainSettings,
    margin: float,
    state: RunState,
    select_sets: dict[str, list[Pair]],
    wall_s: float,
) -> dict[str, JsonValue]:
    """The manifest's ``training``: the recipe as run, how far it went and how the weights were chosen."""
    return {
        "loss": settings.loss,
        "margin": margin,
        "lr": settings.effective_lr,
        "batch_size": settings.batch_size,
        "batch_by_source": settings.batch_by_source,
        "hard_negatives": settings.hard_negatives,
        "mine": settings.mine,
        "augment": settings.augment,
        "pair_loss_weight": settings.effective_pair_loss_weight,
        "pair_batch_size": settings.pair_batch_size,
        "pair_scale": settings.pair_scale,
        "dev_train_split": settings.dev_train_split,
        "epochs": settings.epochs,
        "steps": state.step,
        "examples_seen": state.examples_seen,
        "best_step": state.best_step,
        "holdout": settings.holdout,
        "seed": settings.seed,
        "train_max_tokens": settings.train_max_tokens,
        "freeze_layers": settings.freeze_layers,
        "selection": "mean average precision over "
        + ", ".join(f"{name} ({len(v)} pairs)" for name, v in select_sets.items()),
        "select_split": settings.select_split,
        "history": [dict(h) for h in state.history],
        "wall_s": round(wall_s, 1),
    }
