"""``python -m trainer distill``: a fast static encoder (``worker.model.static``) taught by a transformer.

1. The data plan of the default recipe (``trainer.recipes.default_settings``, ``trainer.splits``): the
   same training pairs, selection slices and dev half, so the fast model is judged on what neither
   model trained on.
2. The teacher embeds a sample of the training texts and every WordPiece token of its vocabulary, within
   a time budget, into a cache under ``runs/`` (reused by the next run with the same teacher;
   ``trainer.distill_teacher``).
3. Targets live in the teacher's top principal directions (uncentred SVD to ``dim``), where cosines
   keep the teacher's ranking; the WordPiece rows start from the teacher's vector of each token alone
   (model2vec's distillation) weighted by SIF (a/(a + p(token))), the n-gram rows near zero.
4. Training (``trainer.distill_student``: ``nn.EmbeddingBag`` over the same features the worker computes,
   SparseAdam): per step a distillation batch (cosine to the teacher's vector and the batch's teacher
   similarity matrix, the text or a spam edit of it: an edit must land where its original does), a
   CoSENT batch of labelled pairs and an in-batch ranking batch of duplicates. The table with the best
   mean AP on the selection sets is kept.
5. The lexical part's weight: the best F1 on a repost stream simulated from pairs no model trained on
   (``trainer.stream.simulate``), among the weights within ``ap_slack`` of the best selection AP.
   The threshold: the cosine with the best F1 on that stream (the worker's question: "is this post's
   best earlier neighbour a repost?"); the dev half's metrics are recorded beside it
   (``trainer.evaluate.calibrate``).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from trainer.card import code_version
from trainer.data import Pair
from trainer.distill_student import Bags, full_table, initial_tables, train_tables
from trainer.distill_teacher import cache_key, principal_axes, projection_fidelity, teacher_vectors, unit
from trainer.evaluate import average_precision, calibrate, score_pairs
from trainer.recipes import default_settings
from trainer.splits import plan_data
from trainer.static_model import (
    labelled_stream_cut,
    simulated_stream,
    static_manifest,
    stream_cut,
    write_static_dir,
)
from trainer.stream import Post
from worker.core.logs import get_logger
from worker.model.manifest import Manifest, StaticParams
from worker.model.static import StaticEncoder, plain_normalizer

if TYPE_CHECKING:
    from tokenizers import Tokenizer

log = get_logger("trainer.distill")


@dataclass(frozen=True)
class DistillRecipe:
    """Sizes, budgets and loss weights of ``distill`` (defaults: ~12 min on 2 CPU cores)."""

    semantic_dim: int = 192  # the WordPiece rows' columns: the teacher's top principal directions
    lexical_dim: int = 128  # the n-gram rows' columns
    lexical_weights: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6)  # chosen after training (step 5)
    train_lexical_weight: float = 0.3
    buckets: int = 1 << 16
    ngrams: tuple[int, ...] = (3, 5)
    max_tokens: int = 256
    teacher_texts: int = 16_000
    budget_s: float = 720.0
    teacher_budget_s: float = 240.0
    reserve_s: float = 100.0  # kept for calibration and writing the directory after training
    batch_size: int = 128
    pair_batch_size: int = 64
    lr: float = 1e-3
    distill_weight: float = 1.0
    relation_weight: float = 1.0
    pair_weight: float = 1.0
    mnr_weight: float = 0.5
    edit_share: float = 0.5
    scale: float = 20.0
    eval_every: int = 200
    select_pairs: int = 1000
    target_precision: float = 0.95
    ap_slack: float = 0.005  # selection AP a lexical weight may give up for stream F1
    stream_pairs: int = 1500
    seed: int = 0
    cache: Path = Path("runs/distill-cache")
    calibration_posts: Path | None = None  # a labelled stream of your own posts (JSONL: id, text, tenant)
    calibration_truth: Path | None = None  # its truth (JSONL: id, duplicate_of, kind), in arrival order


def recipe_for_budget(budget_s: float, **overrides: object) -> DistillRecipe:
    """The default recipe within ``budget_s`` of wall clock: a third at most for the teacher's vectors
    (a cached run spends almost none of it), the rest training, less the calibration's reserve."""
    fields: dict[str, object] = {"budget_s": budget_s, "teacher_budget_s": budget_s / 3, **overrides}
    return DistillRecipe(**fields)  # type: ignore[arg-type]


def _select_score(
    embed: Callable[[Sequence[str]], np.ndarray], sets: dict[str, list[Pair]]
) -> dict[str, float]:
    return {
        name: average_precision(
            score_pairs(embed, [p.text_a for p in pairs], [p.text_b for p in pairs]), [p.label for p in pairs]
        )
        for name, pairs in sets.items()
    }


# ---------------------------------------------------------------------------------------------
# The command


def distill(
    teacher_dir: Path, data_dir: Path, out: Path, recipe: DistillRecipe, *, progress: bool = True
) -> Manifest:
    """Write a static model directory at ``out`` taught by ``teacher_dir`` (see the module docstring)."""
    import torch

    from worker.model.encode import TorchEncoder

    started = time.monotonic()
    torch.set_num_threads(2)
    settings = default_settings(data_dir, out, recipe.budget_s)
    plan = plan_data(settings)
    teacher = TorchEncoder(teacher_dir, device="cpu")
    tokenizer = plain_normalizer(teacher.tokenizer)  # fold() applies the spam folds itself
    params = StaticParams(
        vocab_size=teacher.manifest.hyperparameters.vocab_size,
        buckets=recipe.buckets,
        ngrams=recipe.ngrams,
        embedding_dim=recipe.semantic_dim + recipe.lexical_dim,
        lexical_dim=recipe.lexical_dim,
        lexical_weight=recipe.train_lexical_weight,
    )

    # 2. the teacher's vectors: a sample of the training texts, and every token alone
    rng = random.Random(recipe.seed)  # noqa: S311 - sampling, not secrets
    every_text = list(dict.fromkeys(t for p in plan.pairs for t in (p.text_a, p.text_b)))
    sample = rng.sample(every_text, min(recipe.teacher_texts, len(every_text)))
    vocab = tokenizer.get_vocab()
    tokens = sorted((i, t.removeprefix("##")) for t, i in vocab.items() if not t.startswith("[unused"))
    token_texts, token_vectors = teacher_vectors(
        teacher.embed,
        [t for _, t in tokens],
        recipe.cache,
        cache_key(teacher.version, "tokens"),
        recipe.teacher_budget_s / 4,
        progress=progress,
        chunk=1024,
    )
    taught_texts, taught_vectors = teacher_vectors(
        teacher.embed,
        sample,
        recipe.cache,
        cache_key(teacher.version, "texts"),
        recipe.teacher_budget_s,
        progress=progress,
    )
    del teacher
    axes = principal_axes(taught_vectors, recipe.semantic_dim)
    targets = unit(taught_vectors @ axes)
    fidelity = projection_fidelity(taught_vectors, targets)
    log.info("teacher_projected", sentences=len(taught_texts), vocabulary=len(token_texts), fidelity=fidelity)

    # 3. the initial table
    by_text = dict(zip(token_texts, unit(token_vectors @ axes), strict=True))
    token_init = {i: by_text[t] for i, t in tokens if t in by_text}
    frequency = np.zeros(params.vocab_size, dtype=np.float64)
    for encoding in tokenizer.encode_batch(every_text[:50_000], add_special_tokens=False):
        np.add.at(frequency, encoding.ids, 1.0)
    start = initial_tables(params, token_init, frequency, recipe.seed)

    # 4. training, keeping the table with the best mean AP on the selection sets
    select_sets = {k: v[: recipe.select_pairs] for k, v in plan.select_sets.items()}

    def select(words: NDArray[np.float32], grams: NDArray[np.float32]) -> float:
        table = full_table(words, grams)
        encoder = StaticEncoder(static_manifest(params, recipe.max_tokens, tokenizer), table, tokenizer, out)
        scores = list(_select_score(encoder.embed, select_sets).values())
        return float(np.mean(scores)) if scores else 0.0

    bags = Bags(tokenizer, params, recipe.max_tokens)
    seconds = max(recipe.budget_s - recipe.reserve_s - (time.monotonic() - started), recipe.budget_s / 10)
    tables, state = train_tables(
        start, bags, (taught_texts, targets), plan, select, recipe, seconds, progress=progress
    )

    # 5. the lexical part's weight, then calibration, with the float16 table the worker will run
    shipped = full_table(*tables).astype(np.float16)
    posts, stream_name = simulated_stream(data_dir, recipe.stream_pairs, recipe.seed)
    params, weights = choose_lexical_weight(params, shipped, tokenizer, select_sets, posts, recipe)
    encoder = StaticEncoder(static_manifest(params, recipe.max_tokens, tokenizer), shipped, tokenizer, out)
    calibrate_on = plan.calibrate_on[: plan.calibrate_pairs]
    scores = score_pairs(encoder.embed, [p.text_a for p in calibrate_on], [p.text_b for p in calibrate_on])
    thresholds, metrics = calibrate(
        scores, [p.label for p in calibrate_on], recipe.target_precision, plan.calibrate_name
    )
    cut = stream_cut(encoder, posts) if posts else None
    where = f"a simulated repost stream ({len(posts)} posts) from {stream_name}"
    if recipe.calibration_posts is not None and recipe.calibration_truth is not None:
        cut = labelled_stream_cut(encoder, recipe.calibration_posts, recipe.calibration_truth)
        where = f"the labelled stream {recipe.calibration_posts.name} ({recipe.calibration_posts.parent})"
    if cut is not None:  # the worker's question: flag at the cosine with the best F1 on a repost stream
        thresholds = cut.thresholds(where)
        log.info("stream_threshold", **asdict(cut))
    selection = _select_score(encoder.embed, select_sets)
    training: dict[str, object] = {
        "recipe": "distill",
        "teacher": teacher_dir.name,
        "teacher_texts": len(taught_texts),
        "teacher_tokens": len(token_texts),
        "teacher_cosine_fidelity": fidelity,
        "steps": state.step,
        "best_step": state.best_step,
        "selection": {k: round(v, 4) for k, v in selection.items()},
        "lexical_weights_tried": weights,
        "history": state.history,
        "wall_s": round(time.monotonic() - started, 1),
        "recipe_settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(recipe).items()},
    }
    manifest = static_manifest(params, recipe.max_tokens, tokenizer).model_copy(
        update={
            "thresholds": thresholds,
            "base_model": f"distilled from {teacher_dir.name}",
            "training_data": [r.fingerprint() for r in plan.reports],
            "dev_data": plan.dev_report.fingerprint() if plan.dev_report is not None else None,
            "dev_metrics": metrics.as_dict(),
            "training": json.loads(json.dumps(training)),
            "code_version": code_version(),
        }
    )

    final = write_static_dir(out, manifest, shipped, tokenizer)
    log.info(
        "fast_model_written",
        out=str(out),
        version=final.version,
        threshold=thresholds.decision,
        dev_average_precision=metrics.average_precision,
        steps=state.step,
        wall_s=round(time.monotonic() - started, 1),
    )
    return final


def choose_lexical_weight(
    params: StaticParams,
    table: NDArray[np.floating],
    tokenizer: Tokenizer,
    sets: dict[str, list[Pair]],
    posts: Sequence[Post],
    recipe: DistillRecipe,
) -> tuple[StaticParams, dict[str, dict[str, float]]]:
    """The lexical weight with the best F1 on the simulated stream among those whose mean AP on the
    selection sets is within ``ap_slack`` of the best (each weight's figures)."""
    tried: dict[str, dict[str, float]] = {}
    for weight in recipe.lexical_weights:
        candidate = params.model_copy(update={"lexical_weight": weight})
        encoder = StaticEncoder(
            static_manifest(candidate, recipe.max_tokens, tokenizer), table, tokenizer, Path()
        )
        scores = list(_select_score(encoder.embed, sets).values())
        cut = stream_cut(encoder, posts) if posts else None
        tried[str(weight)] = {
            "selection_ap": float(np.mean(scores)) if scores else 0.0,
            "stream_f1": cut.f1 if cut is not None else 0.0,
        }
    top = max(t["selection_ap"] for t in tried.values())
    fine = [w for w in recipe.lexical_weights if tried[str(w)]["selection_ap"] >= top - recipe.ap_slack]
    best = max(fine, key=lambda w: (tried[str(w)]["stream_f1"], -w))
    log.info("lexical_weight_chosen", weight=best, tried=tried)
    return params.model_copy(update={"lexical_weight": best}), tried
