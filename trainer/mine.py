"""Hard-negative mining: for each cluster, the nearest texts of *other* clusters under the current model.

Run between epochs, so the negatives get harder as the model improves. ``mine_for_epoch`` embeds the
pool (the epoch's anchors and positives, then random texts); the search, ``mine_hard_negatives``, is
pure numpy over those vectors. A candidate that scores almost as high as the cluster's own duplicate is
more likely an unlabelled duplicate than a negative (Quora has many), so candidates above
``max_relative`` × the positive's score are skipped.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import NDArray
from tokenizers import Tokenizer
from torch import nn

from trainer.batches import TrainingSet
from trainer.schedule import epoch_examples
from trainer.settings import TrainSettings
from worker.core.logs import get_logger
from worker.model.encode import embed_texts
from worker.model.tokenizer import pad_token_id

log = get_logger("trainer")


def mine_hard_negatives(
    vectors: NDArray[np.float32],
    clusters: Sequence[int],
    anchors: Sequence[int],
    positive_scores: Sequence[float],
    k: int = 3,
    max_relative: float = 0.95,
    chunk: int = 1024,
) -> dict[int, list[int]]:
    """Cluster id → up to ``k`` row indices of ``vectors`` mined for it.

    ``vectors`` (N, d) are unit rows of the mining pool, ``clusters[i]`` the cluster of row i;
    ``anchors`` are the pool rows to mine for and ``positive_scores`` their score with their own
    positive. Rows of the anchor's cluster are never returned; neither is anything scoring above
    ``max_relative * positive_score``. Results of anchors of one cluster are merged, nearest first.
    """
    cluster_of = np.asarray(clusters)
    anchor_rows = np.asarray(anchors, dtype=np.int64)
    ceiling = np.asarray(positive_scores, dtype=np.float32) * max_relative
    found: dict[int, list[tuple[float, int]]] = {}
    for start in range(0, anchor_rows.size, chunk):
        rows = anchor_rows[start : start + chunk]
        scores = vectors[rows] @ vectors.T
        scores[cluster_of[rows][:, None] == cluster_of[None, :]] = -np.inf
        scores[scores > ceiling[start : start + chunk, None]] = -np.inf
        take = min(k, scores.shape[1])
        best = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        for i, row in enumerate(rows):
            mined = found.setdefault(int(cluster_of[row]), [])
            mined += [(-float(scores[i, c]), int(c)) for c in best[i] if np.isfinite(scores[i, c])]
    return {cluster: _nearest_distinct(items, k) for cluster, items in found.items()}


def _nearest_distinct(items: list[tuple[float, int]], k: int) -> list[int]:
    """The k best distinct rows of (negated score, row) items, nearest first."""
    out: list[int] = []
    for _, row in sorted(items):
        if row not in out:
            out.append(row)
        if len(out) == k:
            break
    return out


def mine_for_epoch(
    module: nn.Module,
    tokenizer: Tokenizer,
    data: TrainingSet,
    settings: TrainSettings,
    pool_size: int,
    epoch: int,
    device: str,
    autocast_dtype: torch.dtype | None,
) -> dict[int, list[int]]:
    """Embed a pool (this epoch's anchors and positives, then random texts) and mine negatives for it."""
    tick = time.monotonic()
    order = epoch_examples(len(data.examples), settings.seed, epoch, settings.examples_per_epoch)
    pool: dict[int, None] = {}
    anchors: list[int] = []
    for k in order:
        if len(pool) + 2 > pool_size:
            break
        a, p = data.examples[k]
        pool.setdefault(a)
        pool.setdefault(p)
        anchors.append(k)
    rng = random.Random(f"{settings.seed}:{epoch}:pool")  # noqa: S311 - sampling, not secrets
    others = [
        t
        for t in rng.sample(range(len(data.texts)), min(len(data.texts), settings.mine_pool))
        if t not in pool
    ]
    for t in others[: max(0, pool_size - len(pool))]:
        pool.setdefault(t)
    rows = list(pool)
    row_of = {t: i for i, t in enumerate(rows)}
    module.eval()
    vectors = embed_texts(
        module,
        tokenizer,
        [data.texts[t] for t in rows],
        pad_token_id=pad_token_id(tokenizer),
        device=device,
        autocast_dtype=autocast_dtype,
    )
    module.train()
    anchor_rows = [row_of[data.examples[k][0]] for k in anchors]
    positive_rows = [row_of[data.examples[k][1]] for k in anchors]
    positive_scores = (vectors[anchor_rows] * vectors[positive_rows]).sum(1)
    found = mine_hard_negatives(
        vectors,
        [data.clusters[t] for t in rows],
        anchor_rows,
        positive_scores.tolist(),
        k=settings.mine_k,
        max_relative=settings.mine_max_relative,
    )
    mined = {cluster: [rows[i] for i in found_rows] for cluster, found_rows in found.items()}
    seconds = round(time.monotonic() - tick, 1)
    log.info("mined", epoch=epoch, pool=len(rows), clusters=len(mined), seconds=seconds)
    return mined
