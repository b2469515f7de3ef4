"""One optimisation step: the model call, then the loss math of ``trainer.losses`` on its embeddings.

One forward pass embeds the anchors, all candidates and the step's labelled pairs together, in chunks
of similar length; on CUDA it runs under autocast (bf16, or fp16 with the gradient scaler).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer
from torch import nn

from trainer.batches import Batch
from trainer.data import Pair
from trainer.losses import BatchLoss, negative_mask, pair_ranking_loss
from worker.model.encode import token_batches
from worker.model.modules import pad_batch


def forward_by_length(
    module: nn.Module,
    ids: Sequence[Sequence[int]],
    pad_id: int,
    device: str,
    autocast_dtype: torch.dtype | None,
    chunk_tokens: int = 2048,
) -> torch.Tensor:
    """Embeddings (with gradients) of token id lists, in their order, run in chunks of similar length.

    One padded batch of a hundred texts wastes most of its compute on padding when lengths vary
    (tweets next to news sentences); sorted chunks cut that waste on CPU.
    """
    pieces: list[torch.Tensor] = []
    order: list[int] = []
    for chunk in token_batches([len(row) for row in ids], chunk_tokens, len(ids)):
        input_ids, mask = pad_batch([ids[i] for i in chunk], pad_id)
        autocast = (
            torch.autocast("cuda", dtype=autocast_dtype)
            if autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            pieces.append(module(input_ids.to(device), mask.to(device)).float())
        order += chunk
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return torch.cat(pieces)[inverse.to(device)]


@dataclass(frozen=True)
class PairTerm:
    """Labelled pairs of one step for the pair ranking term, its weight and scale."""

    pairs: Sequence[Pair]
    weight: float
    scale: float


def train_step(
    module: nn.Module,
    tokenizer: Tokenizer,
    pad_id: int,
    batch: Batch,
    loss_fn: BatchLoss,
    margin: float,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: str,
    autocast_dtype: torch.dtype | None,
    pair_term: PairTerm | None = None,
) -> float:
    """One optimisation step on one batch (and, with ``pair_term``, its labelled pairs); returns the loss."""
    texts = batch.anchors + batch.candidates
    if pair_term is not None:
        texts += [p.text_a for p in pair_term.pairs] + [p.text_b for p in pair_term.pairs]
    ids = [e.ids for e in tokenizer.encode_batch(texts)]
    vectors = forward_by_length(module, ids, pad_id, device, autocast_dtype)
    rows = len(batch.anchors)
    anchor, candidates = vectors[:rows], vectors[rows : rows + len(batch.candidates)]
    mask_neg = negative_mask(
        torch.tensor(batch.anchor_clusters, device=device),
        torch.tensor(batch.candidate_clusters, device=device),
    )
    loss = loss_fn(anchor, candidates[:rows], candidates, mask_neg, margin)
    if pair_term is not None:
        n = len(pair_term.pairs)
        left, right = vectors[-2 * n : -n], vectors[-n:]
        labels = torch.tensor([p.label for p in pair_term.pairs], device=device)
        loss = loss + pair_term.weight * pair_ranking_loss((left * right).sum(-1), labels, pair_term.scale)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()  # type: ignore[no-untyped-call]  # torch leaves backward unannotated
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.requires_grad], 1.0)
    scaler.step(optimizer)
    scaler.update()
    return float(loss.detach())
