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
    pooling: Literal["mean", "cls"] | None = None,
) -> Manifest:
    """The manifest of a model about to be written (``save_model_dir`` stamps the version); ``pooling``
    overrides the architecture's usual one (a transformer from a CLS-pooled base)."""
    return Manifest(
        architecture=architecture,
        hyperparameters=params,
        dim=dim,
        max_tokens=max_tokens,
        pooling=pooling or POOLING[architecture],
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


# The terms of the public pair sets the default recipe trains on (../shared/data/README.md), by folder.
DATA_TERMS = {
    "qqp": "Quora Question Pairs: non-commercial use only, under Quora's terms",
    "mrpc": "Microsoft Research Paraphrase Corpus: Microsoft Research Shared Source licence (research use)",
    "twitter": "Twitter paraphrase corpus (Lan et al., 2017): tweet text, research use",
    "paws": "PAWS-Wiki: any purpose, with acknowledgement (Zhang, Baldridge and He, 2019)",
}
UNKNOWN_TERMS = "your own pairs: their terms apply"


def data_terms(name: str) -> str:
    """The terms a pair file's data comes under, from the folder it sits in."""
    return DATA_TERMS.get(Path(name).parent.name.lower(), UNKNOWN_TERMS)


def loads_in_sentence_transformers(manifest: Manifest) -> bool:
    """Whether the directory is also a sentence-transformers one: a float32 BERT (the layout is written
    for BERT only, ``worker.model.directory.save_model_dir``; other stacks keep BERT's weight names)."""
    if manifest.architecture != "transformer" or manifest.precision != "float32":
        return False
    model_type = getattr(manifest.hyperparameters, "model_type", None)
    return model_type in (None, "bert")


def model_readme(manifest: Manifest) -> str:
    """``README.md`` of a model directory (a model card): what it is for, what it inherits from its data,
    how well it does and at which threshold, how to use it and how to make it again. From the manifest
    alone, so the card never disagrees with what the worker loads."""
    terms = sorted(
        {data_terms(f.name) for f in [*manifest.training_data, *filter(None, [manifest.dev_data])]}
    )
    restricted = any("non-commercial" in t or "research use" in t for t in terms)
    thresholds = manifest.thresholds
    lines = [
        "---",
        f"license: {'other' if restricted or not terms else 'apache-2.0'}",
        "library_name: sentence-transformers"
        if loads_in_sentence_transformers(manifest)
        else "library_name: twinflag",
        "pipeline_tag: sentence-similarity",
        "tags: [twinflag, near-duplicate-detection, sentence-similarity]",
        *([f"base_model: {manifest.base_model}"] if manifest.base_model else []),
        "---",
        "",
        f"# twinflag model `{manifest.version}`",
        "",
        f"A twin (Siamese) {manifest.architecture} encoder for near-duplicate detection of short posts,",
        "written by twinflag's trainer. One set of weights embeds both posts of a pair; the cosine of two",
        "embeddings says how likely the later post repeats the earlier one.",
        "",
        "## Intended use",
        "",
        "Flagging reposts (exact copies and copies with spam-style edits: typos, casing, emoji, links,",
        "homoglyphs, zero-width characters, dropped words) for human moderators, with",
        "`python -m worker run` (a Kafka stream) or `python -m worker scan` (a file). It is not a judge of",
        "meaning: rewrites in other words are often missed, and look-alikes that change one fact can score",
        "like edits. Keep a person in the loop for anything a flag removes.",
        "",
        "## Licence and data",
        "",
    ]
    if restricted:
        lines += [
            "**The training data restrict use of this model**: it inherits the most restrictive terms below",
            "(the code is Apache-2.0; the weights are not). Train on your own pairs for other uses.",
            "",
        ]
    lines += ["| file | rows used | sha256 | terms |", "|---|---|---|---|"]
    for data in manifest.training_data:
        used = data.used_rows if data.used_rows is not None else data.rows
        lines.append(
            f"| `{data.name}` | {used} of {data.rows} | `{data.sha256[:12]}` | {data_terms(data.name)} |"
        )
    if manifest.dev_data is not None:
        dev = manifest.dev_data
        lines.append(f"| `{dev.name}` (dev) | {dev.rows} | `{dev.sha256[:12]}` | {data_terms(dev.name)} |")
    if not manifest.training_data:
        lines.append(f"| (none: {manifest.training.get('recipe', 'no training')}) | | | |")
    lines += [
        "",
        f"Base model: {manifest.base_model or 'none (trained from scratch)'}"
        + (" (Apache-2.0)." if manifest.base_model and "all-MiniLM" in manifest.base_model else "."),
        "",
        "## Decision",
        "",
        f"The worker flags a post when its cosine to an earlier post is at least {thresholds.decision:.4f}"
        + (f", chosen for precision {thresholds.target_precision}" if thresholds.target_precision else "")
        + (f" on {thresholds.calibrated_on}" if thresholds.calibrated_on else " (uncalibrated)")
        + ".",
    ]
    if thresholds.precision is not None and thresholds.recall is not None:
        lines.append(f"There: precision {thresholds.precision:.3f}, recall {thresholds.recall:.3f}.")
    if thresholds.best_f1 is not None and thresholds.best_f1_threshold is not None:
        lines.append(f"Best F1 {thresholds.best_f1:.3f} at {thresholds.best_f1_threshold:.4f}.")
    if manifest.stream is not None:
        lines.append(
            f"A calibrated decision is shipped too (decision point {manifest.stream.point} on"
            f" {manifest.stream.calibrated_on}): flags carry a probability."
        )
    if manifest.dev_metrics:
        lines += ["", "## Metrics (dev)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {value:.4f} |" for name, value in sorted(manifest.dev_metrics.items())]
    lines += [
        "",
        "## Use",
        "",
        "```",
        "TWINFLAG_MODEL__PATH=<this directory> python -m worker run",
        "python -m worker scan --model <this directory> --input posts.jsonl --output flags.jsonl",
        "```",
    ]
    if loads_in_sentence_transformers(manifest):
        lines += [
            "",
            "It is also a sentence-transformers directory: `SentenceTransformer('<dir>').encode(texts)`",
            f"gives the worker's vectors (mean pooling, L2-normalised, {manifest.max_tokens} tokens). The",
            "text folds (NFKC, homoglyphs, zero-width characters) are in `tokenizer.json`'s normaliser,",
            "so any caller that loads it with `tokenizers` or sentence-transformers applies them.",
        ]
    retrained = manifest.training.get("retrained_from")
    verdicts = manifest.training.get("verdicts")
    if retrained is not None and isinstance(verdicts, dict):
        lines += [
            "",
            "## Retrained from verdicts",
            "",
            f"Continued from `{retrained}` on {verdicts.get('trained_on')} moderators' verdicts"
            f" (`python -m trainer retrain`), {verdicts.get('held_back')} more held back: it ranks those",
            "better than the model it came from and loses no more than the allowed average precision on",
            "the held-out pairs (the manifest's `training.gate`).",
        ]
    lines += [
        "",
        "## Reproduce",
        "",
        f"Made by twinflag {manifest.code_version or '(unknown version)'} on {manifest.created_at:%Y-%m-%d}.",
        "The default model: `make model` (then `make verifier`, `make int8`, `make fast` for its other",
        "forms); the recipe as run is the manifest's `training` section"
        + (
            f" (loss {manifest.training['loss']}, {manifest.training.get('steps')} steps)."
            if "loss" in manifest.training
            else "."
        ),
        "",
    ]
    return "\n".join(lines)
