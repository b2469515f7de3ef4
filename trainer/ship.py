"""``python -m trainer verifier``: give a trained model directory the decision it ships with.

Reads the model directory, trains a verifier (``trainer.verifier``) on the pair files of a data
directory, simulates a repost stream from labelled pairs kept out of all training (the untrained half of
each dev file, the selection slices of the training files), calibrates the encoder and the verifier on
it, chooses the band and the decision point (``trainer.stream``), and writes the directory again with a
``stream`` and a ``verifier`` section in its manifest. The encoder's weights, and so its version and the
index it fills, do not change.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from trainer.card import code_version, model_readme
from trainer.data import Pair, read_pairs
from trainer.facts import proper_names
from trainer.recipes import pair_files
from trainer.splits import split_dev, split_holdout, split_selection
from trainer.stream import Calibrated, calibrate, compare, knots, simulate
from trainer.verifier import VerifierRecipe, train_verifier, training_pairs
from worker.core.logs import get_logger
from worker.model.directory import load_model_dir, save_model_dir
from worker.model.encode import embed_texts, pick_device
from worker.model.manifest import CONFIG_FILE, Manifest, PairLogistic, StreamDecision, VerifierSection
from worker.model.modules import TransformerEncoder
from worker.model.tokenizer import pad_token_id
from worker.model.verify import (
    VERIFIER_CONFIG,
    VERIFIER_WEIGHTS,
    PairClassifier,
    pair_tokenizer,
    verifier_scores,
    verifier_version,
)

log = get_logger("trainer.verifier")


@dataclass(frozen=True)
class ShipRecipe:
    """The stream the decision is chosen on, and the verifier's recipe."""

    verifier: VerifierRecipe = field(default_factory=VerifierRecipe)
    with_verifier: bool = True
    target_precision: float = 0.90
    max_share: float = 0.3
    stream_pairs: int = 1500
    seed: int = 0


def calibration_pairs(data_dir: Path, recipe: VerifierRecipe) -> tuple[list[Pair], str]:
    """Labelled pairs no model trained on: the untrained half of each dev file but PAWS's (kept for
    evaluation), the selection slice of each training file."""
    pairs: list[Pair] = []
    names: list[str] = []
    for path in pair_files(data_dir):
        read, _ = read_pairs(path)
        if path.stem.lower() == "dev":
            if path.parent.name == "paws":
                continue
            _, kept = split_dev(read, recipe.dev_train_split)
            names.append(f"{path.parent.name}/{path.name} (untrained half)")
        else:
            rest, _ = split_holdout(read, recipe.holdout)
            _, kept = split_selection(rest, recipe.holdout, recipe.select_split)
            names.append(f"{path.parent.name}/{path.name} (selection slice)")
        pairs += [p for p in kept if {p.label} <= {0, 1}]
    return pairs, " + ".join(names)


def ship(model_dir: Path, data_dir: Path, out: Path, recipe: ShipRecipe, *, device: str = "auto") -> Manifest:
    """See the module docstring; returns the manifest written to ``out``."""
    started = time.monotonic()
    manifest, module, tokenizer = load_model_dir(model_dir)
    if not isinstance(module, TransformerEncoder):
        raise ValueError("a verifier needs a transformer model: it reuses the encoder's layers")
    target = pick_device(device)
    positions = int(module.bert.config.max_position_embeddings)
    if recipe.verifier.max_tokens > positions:  # a pair cannot be longer than the model's positions
        recipe = replace(recipe, verifier=replace(recipe.verifier, max_tokens=positions))
    files = pair_files(data_dir)
    train_files = [p for p in files if p.stem.lower() != "dev"]
    dev_files = [p for p in files if p.stem.lower() == "dev"]
    if not train_files:
        raise ValueError(f"no training pair files under {data_dir}")
    verifier: PairClassifier | None = None
    figures: dict[str, float] = {}
    counts: dict[str, int] = {}
    if recipe.with_verifier:
        data = training_pairs(train_files, dev_files, recipe.verifier)
        counts = data.counts
        log.info("verifier_data", pairs=len(data.pairs), **counts)
        verifier, figures = train_verifier(module, tokenizer, data, recipe.verifier, device=target)
    pairs, source = calibration_pairs(data_dir, recipe.verifier)
    names = proper_names([p.text_a for p in pairs])
    posts = simulate(pairs, recipe.stream_pairs, recipe.seed, names)
    vectors = embed_texts(
        module.to(target).eval(),
        tokenizer,
        [p.text for p in posts],
        pad_token_id=pad_token_id(tokenizer),
        device=target,
    )
    module.cpu()
    stream = compare(posts, vectors)
    scorer = None
    if verifier is not None:
        pairs_tok = pair_tokenizer(tokenizer, recipe.verifier.max_tokens)
        model = verifier.to(target)

        def scorer(keys: list[tuple[int, int]]) -> np.ndarray:
            texts = [(posts[i].text, posts[j].text) for i, j in keys]
            return verifier_scores(
                model, pairs_tok, texts, pad_token_id=pad_token_id(tokenizer), device=target
            )

    chosen = calibrate(stream, recipe.target_precision, scorer, recipe.max_share)
    if verifier is not None:
        verifier.cpu()
    log.info(
        "decision_chosen",
        point=round(chosen.point, 4),
        band=chosen.band,
        precision=round(chosen.outcome.precision, 4),
        recall=round(chosen.outcome.recall, 4),
        verifier_share=round(chosen.outcome.verified_share, 4),
        posts=len(posts),
    )
    final = write(
        model_dir,
        out,
        manifest,
        module,
        tokenizer,
        verifier,
        chosen,
        recipe,
        source,
        len(posts),
        figures,
        counts,
    )
    log.info("decision_shipped", out=str(out), minutes=round((time.monotonic() - started) / 60, 1))
    return final


def write(
    model_dir: Path,
    out: Path,
    manifest: Manifest,
    module: TransformerEncoder,
    tokenizer: Tokenizer,
    verifier: PairClassifier | None,
    chosen: Calibrated,
    recipe: ShipRecipe,
    source: str,
    posts: int,
    figures: dict[str, float],
    counts: dict[str, int],
) -> Manifest:
    """The model directory again, with its decision and verifier (``out`` may be ``model_dir``)."""
    from safetensors.torch import save

    from worker.model.directory import state_tensors

    extra: dict[str, str | bytes] = {CONFIG_FILE: (model_dir / CONFIG_FILE).read_text(encoding="utf-8")}
    section = None
    if verifier is not None and chosen.band is not None and chosen.verifier is not None:
        weights = save(state_tensors(verifier), metadata={"format": "pt"})
        extra[VERIFIER_WEIGHTS] = weights
        extra[VERIFIER_CONFIG] = verifier.bert.config.to_json()
        section = VerifierSection(
            version=verifier_version(weights),
            layers=int(verifier.bert.config.num_hidden_layers),
            max_tokens=recipe.verifier.max_tokens,
            band=chosen.band,
            calibration=PairLogistic(
                cosine=chosen.verifier.cosine, score=chosen.verifier.score, bias=chosen.verifier.bias
            ),
            base_model=manifest.base_model,
            training={**{k: v for k, v in asdict(recipe.verifier).items() if v is not None}, **counts},
            metrics=figures,
        )
    stream = StreamDecision(
        point=round(chosen.point, 6),
        encoder=knots(chosen.encoder),
        target_precision=recipe.target_precision,
        precision=round(chosen.outcome.precision, 4),
        recall=round(chosen.outcome.recall, 4),
        verifier_share=round(chosen.outcome.verified_share, 4) if section is not None else None,
        calibrated_on=f"a simulated repost stream from {source}",
        posts=posts,
    )
    updated = manifest.model_copy(
        update={"stream": stream, "verifier": section, "code_version": code_version()}
    )
    return save_model_dir(out, updated, module, tokenizer, extra, readme=model_readme)


def describe(manifest: Manifest) -> str:
    return json.dumps(manifest.model_dump(mode="json", include={"stream", "verifier"}), indent=2)
