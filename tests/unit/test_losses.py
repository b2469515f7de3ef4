"""Every loss and the negative mask against values worked out by hand on 2-d unit vectors.

The batch used throughout (cosines in brackets):

    a0 = (1, 0)   p0 = (0.8, 0.6)   s(a0,p0) = 0.8
    a1 = (0, 1)   p1 = (0.6, 0.8)   s(a1,p1) = 0.8
    hard negative h = (0.6, -0.8), its own cluster

    candidates [p0, p1, h]; a0 · [0.8, 0.6, 0.6]; a1 · [0.6, 0.8, -0.8]
    mask (clusters [0, 1] vs [0, 1, 2]): a0 → [F, T, T]; a1 → [T, F, T]
"""

from __future__ import annotations

import math

import pytest
import torch

from trainer.losses import (
    LOSSES,
    batch_hard_triplet_loss,
    contrastive_batch_loss,
    contrastive_loss,
    cosine_triplet_loss,
    euclidean_triplet_loss,
    multiple_negatives_ranking_loss,
    negative_mask,
    pair_ranking_loss,
)

A = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
P = torch.tensor([[0.8, 0.6], [0.6, 0.8]])
H = torch.tensor([[0.6, -0.8]])
CANDIDATES = torch.cat([P, H])
MASK = negative_mask(torch.tensor([0, 1]), torch.tensor([0, 1, 2]))


def test_negative_mask_keeps_clusters_apart() -> None:
    # Rows 0 and 1 are one duplicate cluster (A~B), rows 2 and 3 their own.
    clusters = torch.tensor([0, 0, 1, 2])
    expected = torch.tensor(
        [
            [False, False, True, True],
            [False, False, True, True],
            [True, True, False, True],
            [True, True, True, False],
        ]
    )
    assert torch.equal(negative_mask(clusters, clusters), expected)


def test_mask_example() -> None:
    assert MASK.tolist() == [[False, True, True], [True, False, True]]


def test_cosine_triplet_loss_by_hand() -> None:
    # a0: mean_neg 0.6, closest below 0.8 is 0.6 → relu(.25-.8+.6) + relu(.25-.8+.6) = 0.05 + 0.05
    # a1: mean_neg (0.6-0.8)/2 = -0.1 → relu(.25-.8-.1) = 0; closest 0.6 → 0.05
    loss = cosine_triplet_loss(A, P, CANDIDATES, MASK, 0.25)
    assert loss.item() == pytest.approx((0.1 + 0.05) / 2, abs=1e-6)


def test_cosine_triplet_closest_negative_must_score_below_the_positive() -> None:
    # The only negative scores 0.9 > 0.8: the mean term counts it, the closest term has nothing.
    anchor = torch.tensor([[1.0, 0.0]])
    positive = torch.tensor([[0.8, 0.6]])
    negative = torch.tensor([[0.9, math.sqrt(1 - 0.81)]])
    loss = cosine_triplet_loss(anchor, positive, negative, torch.tensor([[True]]), 0.25)
    assert loss.item() == pytest.approx(0.25 - 0.8 + 0.9, abs=1e-6)


def test_batch_hard_triplet_loss_by_hand() -> None:
    # Hardest negative of both anchors scores 0.6 → relu(.25 - .8 + .6) = 0.05 each.
    assert batch_hard_triplet_loss(A, P, CANDIDATES, MASK, 0.25).item() == pytest.approx(0.05, abs=1e-6)


def test_euclidean_triplet_loss_by_hand() -> None:
    # ‖a−p‖² = 2 − 2·0.8 = 0.4; negatives at cos 0.6 → 0.8, at −0.8 → 3.6; α = 0.5.
    # Triplets: (a0: 0.8, 0.8) → 0.1, 0.1; (a1: 0.8, 3.6) → 0.1, 0 → 0.3 over 4 triplets.
    assert euclidean_triplet_loss(A, P, CANDIDATES, MASK, 0.5).item() == pytest.approx(0.075, abs=1e-6)


def test_multiple_negatives_ranking_loss_by_hand() -> None:
    # Logits ×20: a0 [16 | 12, 12], a1 [16 | 12, −16]; CE picks the positive.
    row0 = math.log(1 + 2 * math.exp(-4))
    row1 = math.log(1 + math.exp(-4) + math.exp(-32))
    loss = multiple_negatives_ranking_loss(A, P, CANDIDATES, MASK, 20.0)
    assert loss.item() == pytest.approx((row0 + row1) / 2, abs=1e-6)


def test_contrastive_loss_by_hand() -> None:
    left = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    right = torch.tensor([[0.0, 1.0], [0.8, 0.6], [0.8, 0.6]])
    labels = torch.tensor([0, 1, 0])
    # far non-duplicate (d = √2 > m): 0; duplicate d² = 0.4 → 0.2; near non-duplicate d = √0.4 < 1.
    near = 0.5 * (1.0 - math.sqrt(0.4)) ** 2
    loss = contrastive_loss(left, right, labels, margin=1.0)
    assert loss.item() == pytest.approx((0 + 0.2 + near) / 3, abs=1e-6)


def test_contrastive_batch_loss_by_hand() -> None:
    # Pairs: (a0,p0,1), (a1,p1,1) with d² 0.4 each; hardest negatives at cos 0.6 (d ≈ 0.894 > 0.7): 0.
    assert contrastive_batch_loss(A, P, CANDIDATES, MASK, 0.7).item() == pytest.approx(0.1, abs=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_ignores_anchors_without_negatives_and_has_gradients(name: str) -> None:
    anchor = A.clone().requires_grad_(True)
    none = torch.zeros((2, 3), dtype=torch.bool)
    margin = 20.0 if name == "mnr" else 0.25
    # Without negatives only the contrastive loss still has its duplicate pairs: ½ · d² = ½ · 0.4.
    expected = 0.2 if name == "contrastive" else 0.0
    assert LOSSES[name](anchor, P, CANDIDATES, none, margin).item() == pytest.approx(expected, abs=1e-6)
    loss = LOSSES[name](anchor, P, CANDIDATES, MASK, margin)
    loss.backward()
    assert anchor.grad is not None
    assert torch.isfinite(anchor.grad).all()


def test_a_perfectly_separated_batch_costs_nothing_for_margin_losses() -> None:
    anchor = torch.tensor([[1.0, 0.0]])
    positive = torch.tensor([[1.0, 0.0]])
    negative = torch.tensor([[-1.0, 0.0]])
    mask = torch.tensor([[True]])
    assert cosine_triplet_loss(anchor, positive, negative, mask, 0.25).item() == 0.0
    assert batch_hard_triplet_loss(anchor, positive, negative, mask, 0.25).item() == 0.0
    assert euclidean_triplet_loss(anchor, positive, negative, mask, 0.2).item() == 0.0


def test_pair_ranking_loss_by_hand() -> None:
    # One duplicate at 0.8, non-duplicates at 0.6 and 0.7: log(1 + e^(s·(0.6−0.8)) + e^(s·(0.7−0.8))).
    scores = torch.tensor([0.8, 0.6, 0.7])
    labels = torch.tensor([1, 0, 0])
    expected = math.log(1 + math.exp(-0.2) + math.exp(-0.1))
    assert pair_ranking_loss(scores, labels, 1.0).item() == pytest.approx(expected, abs=1e-6)
    # a non-duplicate that outscores the duplicate costs more than one ranked below it
    swapped = torch.tensor([0.6, 0.8, 0.7])
    assert pair_ranking_loss(swapped, labels, 20.0) > pair_ranking_loss(scores, labels, 20.0)
    # ranked right by a wide margin at scale 20: next to nothing
    assert pair_ranking_loss(torch.tensor([0.9, 0.1]), torch.tensor([1, 0]), 20.0).item() < 1e-6


def test_pair_ranking_loss_without_both_kinds_is_zero_and_differentiable() -> None:
    scores = torch.tensor([0.3, 0.9], requires_grad=True)
    loss = pair_ranking_loss(scores, torch.tensor([1, 1]), 20.0)
    assert loss.item() == 0.0
    loss.backward()
    assert scores.grad is not None
    assert torch.equal(scores.grad, torch.zeros(2))
