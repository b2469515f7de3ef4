"""A static model's directory and its threshold: the manifest and the atomic write of ``trainer
distill``'s output, and the best-F1 cosine on a repost stream (simulated from held-out pairs, or a
labelled one: ``trainer distill --calibrate-only``). Separate from the training in ``trainer.distill``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from trainer.card import code_version
from trainer.facts import proper_names
from trainer.ship import calibration_pairs
from trainer.stream import Post, compare, simulate
from trainer.verifier import VerifierRecipe
from worker.core.logs import get_logger
from worker.model.manifest import Manifest, StaticParams, Thresholds
from worker.model.static import LEXICAL_WEIGHT, TABLE, StaticEncoder
from worker.model.tokenizer import pad_token_id

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tokenizers import Tokenizer

log = get_logger("trainer.distill")


def write_static_dir(
    path: Path, manifest: Manifest, table: NDArray[np.floating], tokenizer: Tokenizer
) -> Manifest:
    """A static model directory, written atomically by ``save_model_dir`` (which stamps the version):
    the table as float16 under ``embedding.weight`` and the manifest's lexical weight beside it (in
    the weights, so the version changes with it), the tokenizer, the manifest."""
    import torch
    from torch import nn

    from worker.model.directory import save_model_dir

    holder = nn.Module()  # save_model_dir writes a module's state: here the one table
    holder.embedding = nn.Module()
    holder.embedding.register_buffer(
        "weight", torch.from_numpy(np.ascontiguousarray(table, dtype=np.float16))
    )
    params = manifest.hyperparameters
    assert isinstance(params, StaticParams)
    # the lexical weight changes every vector: it lives in the weights, so the version names it
    holder.register_buffer(LEXICAL_WEIGHT, torch.tensor([params.lexical_weight], dtype=torch.float64))
    assert set(holder.state_dict()) == {TABLE, LEXICAL_WEIGHT}
    return save_model_dir(path, Manifest.model_validate(manifest.model_dump()), holder, tokenizer)


def static_manifest(params: StaticParams, max_tokens: int, tokenizer: Tokenizer) -> Manifest:
    """The manifest of an untrained static model (uncalibrated threshold): ``distill`` fills the rest."""
    return Manifest(
        architecture="static",
        hyperparameters=params,
        dim=params.embedding_dim,
        max_tokens=max_tokens,
        pooling="mean",
        pad_token_id=pad_token_id(tokenizer),
        thresholds=Thresholds(decision=0.8),
        code_version=code_version(),
    )


@dataclass(frozen=True)
class StreamCut:
    """The cosine that flags with the best F1 on a simulated repost stream, and what it reaches there."""

    threshold: float
    precision: float
    recall: float
    f1: float

    def thresholds(self, where: str) -> Thresholds:
        """The manifest's decision: flag at this cut, best F1 on the stream ``where`` describes."""
        return Thresholds(
            decision=self.threshold,
            precision=self.precision,
            recall=self.recall,
            best_f1=self.f1,
            best_f1_threshold=self.threshold,
            calibrated_on=f"best F1 on {where}",
        )


def simulated_stream(data_dir: Path, stream_pairs: int, seed: int) -> tuple[list[Post], str]:
    """A repost stream simulated from pairs no model trained on (``trainer.ship.calibration_pairs``)."""
    pairs, name = calibration_pairs(data_dir, VerifierRecipe())
    if not pairs:
        return [], name
    return simulate(pairs, stream_pairs, seed, proper_names([p.text_a for p in pairs])), name


def stream_cut(encoder: StaticEncoder, posts: Sequence[Post]) -> StreamCut | None:
    """Each post flags its best earlier post when their cosine reaches the threshold; a flag is right
    when both are of one cluster. The threshold with the best F1 (the highest one on ties)."""
    stream = compare(posts, encoder.embed([p.text for p in posts]), k=1)
    found = [(i, c[0]) for i, c in enumerate(stream.candidates) if c]
    reposts = stream.reposts()
    if not found or reposts == 0:
        return None
    scores = np.array([score for _, (_, score) in found])
    right = np.array([stream.same(i, j) for i, (j, _) in found], dtype=np.float64)
    return best_f1_cut(scores, right, reposts)


def best_f1_cut(scores: NDArray[np.float64], right: NDArray[np.float64], reposts: int) -> StreamCut:
    """The threshold on ``scores`` (each post's best earlier candidate; ``right``: that candidate is of
    its cluster) with the best F1 over ``reposts`` posts that should be flagged."""
    order = np.argsort(-scores, kind="stable")
    hits, ranked = np.cumsum(right[order]), scores[order]
    last = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]
    precision, recall = hits[last] / (last + 1), hits[last] / reposts
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
    k = int(np.argmax(f1))
    return StreamCut(round(float(ranked[last][k]), 6), float(precision[k]), float(recall[k]), float(f1[k]))


DUPLICATE_KINDS = ("exact", "edit", "rewrite")  # a labelled stream's posts that should be flagged


def labelled_stream_cut(encoder: StaticEncoder, posts_path: Path, truth_path: Path) -> StreamCut | None:
    """The best-F1 cosine on a labelled stream of posts, compared as the worker compares them: each
    post with every earlier post of its tenant. A flag is right when the post is a copy, an edit or a
    rewrite and names an earlier member of its cluster."""
    posts = [json.loads(line) for line in posts_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    truth = {
        str(row["id"]): row
        for row in (json.loads(line) for line in truth_path.read_text(encoding="utf-8").splitlines())
    }
    cluster = [str(truth[str(p["id"])]["duplicate_of"] or p["id"]) for p in posts]
    tenants = [str(p.get("tenant", "default")) for p in posts]
    vectors = encoder.embed([str(p["text"]) for p in posts]).astype(np.float64)
    scores, right = [], []
    for i in range(1, len(posts)):
        earlier = [j for j in range(i) if tenants[j] == tenants[i]]
        if not earlier:
            continue
        sims = vectors[earlier] @ vectors[i]
        j = earlier[int(np.argmax(sims))]
        scores.append(float(sims.max()))
        right.append(truth[str(posts[i]["id"])]["kind"] in DUPLICATE_KINDS and cluster[j] == cluster[i])
    positives = sum(truth[str(p["id"])]["kind"] in DUPLICATE_KINDS for p in posts)
    if not scores or positives == 0:
        return None
    return best_f1_cut(np.array(scores), np.array(right, dtype=np.float64), positives)


def recalibrate(model: Path, posts: Path, truth: Path) -> Manifest:
    """Give a static model directory the best-F1 threshold of a labelled stream, weights unchanged
    (``python -m trainer distill --out DIR --calibrate-only --calibration-posts P --calibration-truth T``)."""
    from worker.model.static import load_static

    encoder = load_static(model)
    cut = labelled_stream_cut(encoder, posts, truth)
    if cut is None:
        raise ValueError(f"{posts}: no post with an earlier one of its tenant, or nothing to flag")
    thresholds = cut.thresholds(f"the labelled stream {posts.name} ({posts.parent})")
    manifest = encoder.manifest.model_copy(update={"thresholds": thresholds})
    final = write_static_dir(model, manifest, encoder.table, encoder.tokenizer)
    log.info("recalibrated", out=str(model), version=final.version, **asdict(cut))
    return final
