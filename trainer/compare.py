"""Two model directories side by side on the same pairs (``python -m trainer compare``), and the gate
``trainer retrain`` passes a candidate through.

Each model is scored as the worker decides with it (``commands.final_scores``: the cosine, or the
calibrated probability of a model that ships a decision) and judged at its own decision point (its
threshold, or its calibrated point): average precision, then precision, recall and F1 of the flags that
point raises. The pairs: the held-back fifth of the verdicts (``trainer.verdicts``) and the dev sets
no default model trained on (``recipes.held_out_sets``; ``other_dev_sets`` reported too).

The gate: the candidate must rank the held-back verdicts better than the live model (average
precision, strictly: equal does not beat) and lose at most ``max_ap_drop`` average precision on each
held-out dev set, the same limit ``trainer quantize`` holds an int8 copy to.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from trainer.evaluate import average_precision
from trainer.recipes import PairSet
from trainer.verdicts import VerdictPair
from worker.core.logs import get_logger
from worker.model.manifest import Manifest

log = get_logger("trainer.compare")

VERDICT_SET = "held-back verdicts"


class GateRefused(Exception):  # noqa: N818 - named for what the user sees: the gate refused the model
    """The candidate is not better than the live model: nothing was written (exit status 3)."""


@dataclass(frozen=True)
class SetScore:
    """One model on one pair set: average precision (nan with one label only) and its flags' quality at
    its own decision point."""

    name: str
    pairs: int
    duplicates: int
    average_precision: float
    precision: float
    recall: float
    f1: float


@dataclass(frozen=True)
class ModelScores:
    """One model on every set; ``raw`` keeps each set's scores and labels, to judge it at another point."""

    model: str
    version: str
    threshold: float
    sets: list[SetScore]
    raw: dict[str, tuple[NDArray[np.float64], list[int]]] = field(default_factory=dict, repr=False)

    def get(self, name: str) -> SetScore:
        return next(s for s in self.sets if s.name == name)

    def at(self, threshold: float) -> ModelScores:
        """The same scores judged at another decision point."""
        sets = [set_score(name, *self.raw[name], threshold) for name in self.raw]
        return ModelScores(self.model, self.version, threshold, sets, self.raw)


def verdict_set(pairs: Sequence[VerdictPair]) -> PairSet:
    """Verdict pairs as a labelled pair set: (earlier post, later post), 1 when confirmed."""
    return (
        VERDICT_SET,
        [p.earlier for p in pairs],
        [p.later for p in pairs],
        [p.label for p in pairs],
    )


def decision_point(manifest: Manifest) -> float:
    """What the worker flags at: the calibrated point of a model that ships a decision, else the
    threshold on the cosine."""
    return manifest.stream.point if manifest.stream is not None else manifest.thresholds.decision


def set_score(name: str, scores: NDArray[np.float64], labels: Sequence[int], threshold: float) -> SetScore:
    """Average precision, and precision / recall / F1 of ``score >= threshold`` (the worker's rule)."""
    y = np.asarray(labels, dtype=np.int64)
    flagged = scores >= threshold
    hits = int((flagged & (y == 1)).sum())
    precision = hits / int(flagged.sum()) if flagged.any() else 0.0
    recall = hits / int(y.sum()) if y.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    both = 0 < int(y.sum()) < y.size
    ap = average_precision(scores, y) if both else math.nan
    return SetScore(name, int(y.size), int(y.sum()), ap, precision, recall, f1)


def score_model(model: Path, sets: Sequence[PairSet], device: str = "cpu") -> ModelScores:
    """The model directory on every set, at its own decision point."""
    from trainer.commands import final_scores
    from worker.model.encode import load_encoder

    encoder = load_encoder(model, device)
    raw = {
        name: (final_scores(encoder, text_a, text_b, device), labels) for name, text_a, text_b, labels in sets
    }
    return ModelScores(str(model), encoder.version, 0.0, [], raw).at(decision_point(encoder.manifest))


def gate(live: ModelScores, candidate: ModelScores, max_ap_drop: float) -> list[str]:
    """Why the candidate may not replace the live model (empty: it may): see the module docstring."""
    failures = []
    before, after = live.get(VERDICT_SET), candidate.get(VERDICT_SET)
    if not after.average_precision > before.average_precision:
        failures.append(
            f"held-back verdicts ({before.pairs} pairs): average precision {after.average_precision:.4f}"
            f" does not beat the live model's {before.average_precision:.4f}"
        )
    for mine in candidate.sets:
        if mine.name == VERDICT_SET or math.isnan(mine.average_precision):
            continue
        theirs = live.get(mine.name)
        if theirs.average_precision - mine.average_precision > max_ap_drop:
            failures.append(
                f"{mine.name}: average precision {mine.average_precision:.4f} against the live model's"
                f" {theirs.average_precision:.4f}, a loss of"
                f" {theirs.average_precision - mine.average_precision:.4f} (limit {max_ap_drop})"
            )
    return failures


def table(live: ModelScores, candidate: ModelScores) -> str:
    """Both models, set by set: AP, its change, and P / R / F1 at each model's own decision point."""
    lines = [
        f"live       {live.version}  decides at {live.threshold:.4f}  ({live.model})",
        f"candidate  {candidate.version}  decides at {candidate.threshold:.4f}  ({candidate.model})",
        "",
        f"{'set':<30} {'pairs (dup)':>12} {'AP live':>8} {'AP cand':>8} {'ΔAP':>8}"
        f"   {'P / R / F1 live':<18} {'P / R / F1 candidate':<18}",
    ]
    for theirs in live.sets:
        mine = candidate.get(theirs.name)
        delta = mine.average_precision - theirs.average_precision
        lines.append(
            f"{theirs.name:<30} {f'{theirs.pairs} ({theirs.duplicates})':>12}"
            f" {_f(theirs.average_precision):>8} {_f(mine.average_precision):>8}"
            f" {'n/a' if math.isnan(delta) else f'{delta:+.4f}':>8}"
            f"   {_prf(theirs):<18} {_prf(mine):<18}"
        )
    return "\n".join(lines)


def _f(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def _prf(score: SetScore) -> str:
    return f"{score.precision:.2f} / {score.recall:.2f} / {score.f1:.2f}"


def as_json(live: ModelScores, candidate: ModelScores) -> str:
    """The comparison as one JSON object (nan written as null)."""

    def clean(value: object) -> object:
        return None if isinstance(value, float) and math.isnan(value) else value

    def model(scores: ModelScores) -> dict[str, object]:
        return {
            "model": scores.model,
            "version": scores.version,
            "threshold": scores.threshold,
            "sets": [{k: clean(v) for k, v in asdict(s).items()} for s in scores.sets],
        }

    return json.dumps({"live": model(live), "candidate": model(candidate)}, indent=2)


def compare(
    live: Path,
    candidate: Path,
    verdicts: Sequence[Path],
    documents: Path | None,
    data_dir: Path,
    *,
    max_pairs: int,
    json_out: Path | None,
    device: str = "cpu",
) -> tuple[ModelScores, ModelScores]:
    """``trainer compare``: both models on the held-back verdicts and the dev sets; a table on stdout,
    the same as JSON at ``json_out``."""
    from trainer.recipes import held_out_sets, other_dev_sets
    from trainer.verdicts import read_verdicts, split_held_back

    _, pairs, report = read_verdicts(verdicts, documents)
    log.info("verdicts_read", **report.summary())
    held = split_held_back(pairs)[1]
    sets = ([verdict_set(held)] if held else []) + held_out_sets(data_dir, max_pairs)
    sets += other_dev_sets(data_dir, max_pairs)
    if not sets:
        raise ValueError(f"nothing to compare: no held-back verdict with both texts, no pairs in {data_dir}")
    scores = score_model(live, sets, device), score_model(candidate, sets, device)
    print(table(*scores))
    if json_out is not None:
        json_out.write_text(as_json(*scores) + "\n", encoding="utf-8")
    return scores
