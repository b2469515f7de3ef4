"""Loss math: pure functions of L2-normalised embeddings. No model, no data loading.

Every triplet-style loss here takes the same four things, so they can be swapped by name:

- ``anchor`` (B, d) and ``positive`` (B, d): row i is a duplicate pair;
- ``negatives`` (C, d): every text that may serve as a negative — in a training batch the other rows'
  positives followed by the hard negatives;
- ``negative_mask`` (B, C) bool: True where ``negatives[j]`` counts as a negative of ``anchor[i]``.
  It comes from ``negative_mask(anchor_clusters, candidate_clusters)``: texts of one duplicate
  cluster (A~B, B~C) are never negatives of each other, which also drops row i's own positive.

``LOSSES`` registers them by name, each with its default margin and its source. ``pair_ranking_loss``
is the exception: it takes the cosines of labelled pairs and their labels, and is added to the batch
loss rather than chosen instead of it.

Anchors without any negative in the mask contribute nothing (they are not averaged in). Similarities
are cosines (dot products of unit vectors); the Euclidean loss works on squared distances, which for
unit vectors are ``2 − 2·cos``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias


def negative_mask(anchor_clusters: torch.Tensor, candidate_clusters: torch.Tensor) -> torch.Tensor:
    """(B, C) bool: candidate j is a negative of anchor i iff they belong to different clusters."""
    return anchor_clusters.unsqueeze(1) != candidate_clusters.unsqueeze(0)


def _scores(
    anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) cosine of each anchor with its positive, (B, C) cosine with every candidate negative."""
    return (anchor * positive).sum(-1), anchor @ negatives.T


def _mean_over_valid(per_anchor: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of the rows that had a negative; 0 (still differentiable) when none had."""
    return (per_anchor * valid).sum() / valid.sum().clamp(min=1)


def cosine_triplet_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    negative_mask: torch.Tensor,
    margin: float = 0.25,
) -> torch.Tensor:
    """``relu(m − s(a,p) + mean_neg) + relu(m − s(a,p) + closest_neg)``, averaged over anchors.

    ``mean_neg`` is the mean similarity to all of the anchor's negatives (a smooth, easy signal);
    ``closest_neg`` is the most similar negative that still scores *below* the positive (the hardest
    one the model already ranks correctly: pushing it away sharpens the margin without chasing
    label noise). An anchor whose negatives all outscore its positive has no closest term.
    """
    pos, neg = _scores(anchor, positive, negatives)
    count = negative_mask.sum(1)
    valid = (count > 0).to(pos.dtype)
    mean_neg = (neg * negative_mask).sum(1) / count.clamp(min=1)
    below = negative_mask & (neg < pos.unsqueeze(1))
    closest_neg = neg.masked_fill(~below, float("-inf")).max(1).values
    has_closest = below.any(1)
    closest_term = torch.where(has_closest, F.relu(margin - pos + closest_neg.clamp(min=-2.0)), 0.0)
    per_anchor = F.relu(margin - pos + mean_neg) + closest_term
    return _mean_over_valid(per_anchor, valid)


def batch_hard_triplet_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    negative_mask: torch.Tensor,
    margin: float = 0.25,
) -> torch.Tensor:
    """``relu(m − s(a,p) + max_neg)``: each anchor against its single hardest negative (cosine form
    of Hermans et al.'s batch-hard loss, where the positive is the pair's own)."""
    pos, neg = _scores(anchor, positive, negatives)
    valid = negative_mask.any(1)
    hardest = neg.masked_fill(~negative_mask, float("-inf")).max(1).values
    per_anchor = torch.where(valid, F.relu(margin - pos + hardest.clamp(min=-2.0)), 0.0)
    return _mean_over_valid(per_anchor, valid.to(pos.dtype))


def euclidean_triplet_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    negative_mask: torch.Tensor,
    margin: float = 0.2,
) -> torch.Tensor:
    """FaceNet's ``relu(‖a−p‖² − ‖a−n‖² + α)``, averaged over every (anchor, negative) triplet."""
    d_pos = (anchor - positive).pow(2).sum(-1)
    d_neg = torch.cdist(anchor, negatives).pow(2)
    per_triplet = F.relu(d_pos.unsqueeze(1) - d_neg + margin) * negative_mask
    return per_triplet.sum() / negative_mask.sum().clamp(min=1)


def multiple_negatives_ranking_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    negative_mask: torch.Tensor,
    scale: float = 20.0,
) -> torch.Tensor:
    """InfoNCE / MultipleNegativesRankingLoss: cross-entropy of picking the positive among the
    anchor's negatives, on cosines times ``scale`` (a temperature of 1/scale)."""
    pos, neg = _scores(anchor, positive, negatives)
    logits = torch.cat([pos.unsqueeze(1), neg.masked_fill(~negative_mask, float("-inf"))], dim=1) * scale
    return F.cross_entropy(logits, torch.zeros(len(pos), dtype=torch.long, device=logits.device))


def contrastive_loss(
    left: torch.Tensor, right: torch.Tensor, labels: torch.Tensor, margin: float = 0.7
) -> torch.Tensor:
    """Hadsell et al.'s pair loss: ``½·[y·d² + (1−y)·relu(m − d)²]`` with d the Euclidean distance.

    Duplicates are pulled together; non-duplicates pushed apart until they are ``margin`` away (0.7
    between unit vectors is a cosine of about 0.755), beyond which they cost nothing.
    """
    distance = (left - right).pow(2).sum(-1).clamp(min=1e-12).sqrt()
    y = labels.to(distance.dtype)
    return 0.5 * (y * distance.pow(2) + (1 - y) * F.relu(margin - distance).pow(2)).mean()


def contrastive_batch_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    negative_mask: torch.Tensor,
    margin: float = 0.7,
) -> torch.Tensor:
    """``contrastive_loss`` on a batch's pairs: every (anchor, positive) as a duplicate and every
    anchor with its currently hardest negative as a non-duplicate (online hard pairs)."""
    _, neg = _scores(anchor, positive, negatives)
    valid = negative_mask.any(1)
    hardest = neg.detach().masked_fill(~negative_mask, float("-inf")).argmax(1)[valid]
    left = torch.cat([anchor, anchor[valid]])
    right = torch.cat([positive, negatives[hardest]])
    labels = torch.cat([torch.ones(len(anchor)), torch.zeros(int(valid.sum()))]).to(anchor.device)
    return contrastive_loss(left, right, labels, margin)


def pair_ranking_loss(scores: torch.Tensor, labels: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """CoSENT (Su, 2022): ``log(1 + Σ exp(scale·(s_neg − s_pos)))`` over every (duplicate,
    non-duplicate) pair of pairs in the batch.

    ``scores`` (N,) are the cosines of N labelled pairs, ``labels`` (N,) 1 for duplicate, 0 for not.
    Each term asks one labelled duplicate to outscore one labelled non-duplicate, whichever texts
    they hold, so it learns from non-duplicate pairs that have no duplicate of their own (most of a
    labelled set such as Quora's) and optimises the one ranking that average precision measures.
    A batch with only one kind of pair gives 0 (still differentiable).
    """
    positive = labels.bool()
    diff = scores[~positive].unsqueeze(0) - scores[positive].unsqueeze(1)
    terms = torch.cat([diff.flatten() * scale, scores.new_zeros(1)])
    return torch.logsumexp(terms, 0)


BatchLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]


@dataclass(frozen=True)
class Loss:
    """One batch loss by name: its function, its default margin (the scale, for ``mnr``), its source."""

    name: str
    function: BatchLoss
    margin: float
    citation: str

    def __call__(
        self,
        anchor: torch.Tensor,
        positive: torch.Tensor,
        negatives: torch.Tensor,
        negative_mask: torch.Tensor,
        margin: float,
    ) -> torch.Tensor:
        return self.function(anchor, positive, negatives, negative_mask, margin)


# The registry: ``TrainSettings.loss`` is checked against these names, ``--margin`` defaults to theirs.
LOSSES: dict[str, Loss] = {
    loss.name: loss
    for loss in (
        Loss(
            "triplet",
            cosine_triplet_loss,
            0.25,
            "Schroff, Kalenichenko & Philbin, FaceNet (CVPR 2015): the triplet loss, here on cosines, with "
            "a mean-negative term and FaceNet's semi-hard negative (the closest one below the positive)",
        ),
        Loss(
            "batch_hard",
            batch_hard_triplet_loss,
            0.25,
            "Hermans, Beyer & Leibe, In Defense of the Triplet Loss for Person Re-Identification "
            "(arXiv:1703.07737, 2017): batch-hard, on cosines",
        ),
        Loss(
            "euclidean",
            euclidean_triplet_loss,
            0.2,
            "Schroff, Kalenichenko & Philbin, FaceNet (CVPR 2015): squared Euclidean distances",
        ),
        Loss(
            "contrastive",
            contrastive_batch_loss,
            0.7,
            "Hadsell, Chopra & LeCun, Dimensionality Reduction by Learning an Invariant Mapping "
            "(CVPR 2006), on each batch's hardest negative pairs",
        ),
        Loss(
            "mnr",
            multiple_negatives_ranking_loss,
            20.0,
            "Henderson et al., Efficient Natural Language Response Suggestion for Smart Reply "
            "(arXiv:1705.00652, 2017); sentence-transformers' MultipleNegativesRankingLoss",
        ),
    )
}
