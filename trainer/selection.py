"""The model on pairs it never trained on: which weights to keep, and the threshold they ship with.

Model selection scores the dev set and each training file's selection slice; the mean average
precision over them decides, and the best weights so far are kept (a fine-tune that never beats the
starting point is not kept). At the end the kept weights are calibrated on the dev set (without one:
on the selection slices); with neither, the default threshold ships and the manifest says so.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import NDArray
from tokenizers import Tokenizer
from torch import nn

from trainer.checkpoint import RunState
from trainer.data import Pair
from trainer.evaluate import DEFAULT_THRESHOLD, Metrics, calibrate, evaluate_scores, score_pairs
from trainer.splits import sample_pairs
from worker.core.logs import get_logger
from worker.model.encode import embed_texts
from worker.model.manifest import Thresholds
from worker.model.tokenizer import pad_token_id

log = get_logger("trainer")


def dev_metrics(
    module: nn.Module,
    tokenizer: Tokenizer,
    pairs: Sequence[Pair],
    device: str,
    autocast_dtype: torch.dtype | None,
) -> tuple[Metrics, NDArray[np.float64]]:
    """Metrics (and the scores) of the module on labelled pairs; the module is left in train mode."""
    module.eval()
    scores = score_pairs(
        lambda texts: embed_texts(
            module,
            tokenizer,
            texts,
            pad_token_id=pad_token_id(tokenizer),
            device=device,
            autocast_dtype=autocast_dtype,
        ),
        [p.text_a for p in pairs],
        [p.text_b for p in pairs],
    )
    module.train()
    return evaluate_scores(scores, [p.label for p in pairs]), scores


@dataclass
class Selection:
    """Model selection over named pair sets; ``speed`` (texts/s) is measured at every evaluation and
    sizes the run's time budgets."""

    sets: dict[str, list[Pair]]
    speed: float = 100.0
    texts: int = field(init=False)  # distinct texts over all sets: what one evaluation embeds

    def __post_init__(self) -> None:
        self.texts = len({t for pairs in self.sets.values() for p in pairs for t in (p.text_a, p.text_b)})

    def evaluate(
        self,
        module: nn.Module,
        tokenizer: Tokenizer,
        device: str,
        autocast_dtype: torch.dtype | None,
        state: RunState,
        label: str,
    ) -> bool:
        """Score the module, record it in ``state`` (history, best score and step); True when it is the
        best so far, so the caller keeps these weights. Without any set there is nothing to select on."""
        if not self.sets:
            return False
        tick = time.monotonic()
        per_set = {
            name: dev_metrics(module, tokenizer, pairs, device, autocast_dtype)[0]
            for name, pairs in self.sets.items()
        }
        self.speed = self.texts / max(time.monotonic() - tick, 1e-3)
        score = float(np.mean([m.primary for m in per_set.values()]))
        first = next(iter(per_set.values()))
        entry: dict[str, float] = {"step": state.step, "epoch": state.epoch, **first.as_dict()}
        if len(per_set) > 1:
            entry["selection_score"] = score
            entry.update({f"ap {name}": m.average_precision for name, m in per_set.items()})
        state.history.append(entry)
        improved = score > state.best_score
        if improved:
            state.best_score, state.best_step = score, state.step
        log.info(
            "dev",
            at=label,
            step=state.step,
            selection_score=round(score, 4),
            average_precision={name: round(m.average_precision, 4) for name, m in per_set.items()},
            kept=improved,
        )
        return improved


def final_thresholds(
    module: nn.Module,
    tokenizer: Tokenizer,
    calibrate_on: Sequence[Pair],
    name: str,
    max_pairs: int,
    target_precision: float,
    seed: int,
    device: str,
    autocast_dtype: torch.dtype | None,
) -> tuple[Thresholds, Metrics | None]:
    """The threshold to ship, from a sample of ``calibrate_on``; the module is left in eval mode."""
    if not calibrate_on:
        log.warning(
            "uncalibrated_default_threshold",
            reason="no dev set or selection slice",
            threshold=DEFAULT_THRESHOLD,
        )
        return Thresholds(decision=DEFAULT_THRESHOLD), None
    pairs = sample_pairs(calibrate_on, max_pairs, seed + 1)
    metrics, scores = dev_metrics(module, tokenizer, pairs, device, autocast_dtype)
    module.eval()
    labels = [p.label for p in pairs]
    return calibrate(scores, labels, target_precision, name)[0], metrics
