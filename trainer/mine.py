"""Hard-negative mining: for each cluster, the nearest texts of *other* clusters under the current model.

Run between epochs, so the negatives get harder as the model improves. The search is pure numpy over
vectors the caller embedded. A candidate that scores almost as high as the cluster's own duplicate is
more likely an unlabelled duplicate than a negative (Quora has many), so candidates above
``max_relative`` × the positive's score are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray


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
