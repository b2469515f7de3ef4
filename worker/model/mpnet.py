"""MPNet in plain torch (all-mpnet-base-v2's stack), without importing ``transformers``, with its
parameter names (``MPNetModel``'s), so a sentence-transformers checkpoint loads unchanged.

MPNet is BERT's post-layer-norm stack with three differences, written here: no token types; the
attention's output projection (``o``) sits inside the self-attention; and every layer adds to its
attention scores one learnt bias per head (``encoder.relative_attention_bias``), looked up by the
bucket of the key's offset from the query (T5's buckets: 32, both directions, exact below 8,
logarithmic up to 128). Positions are numbered as ``transformers`` numbers them: from 2, a pad id
keeping 1. The configuration, the attention heads and the feed-forward blocks are ``worker.model.bert``'s.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from worker.model.bert import (
    MPNET_BUCKETS,
    MPNET_PADDING_IDX,
    BertConfig,
    BertLayer,
    HeadsAttention,
)

MAX_DISTANCE = 128
"""Offsets of 128 tokens and more share the last bucket of their direction."""


def relative_buckets(length: int, device: torch.device) -> torch.Tensor:
    """``(length, length)``: the bucket of key ``j``'s offset from query ``i``, as ``transformers``'
    ``MPNetEncoder.relative_position_bucket`` computes it (the same float steps, so the same buckets)."""
    positions = torch.arange(length, dtype=torch.long, device=device)
    offset = positions[:, None] - positions[None, :]  # query minus key
    half = MPNET_BUCKETS // 2  # one half for each direction
    direction = (offset < 0).long() * half
    distance = offset.abs()
    exact = half // 2
    # log(0) is -inf: those entries are below ``exact`` and taken from ``distance`` instead
    scaled = torch.log(distance.float() / exact) / math.log(MAX_DISTANCE / exact) * (half - exact)
    far = (exact + scaled.long()).clamp(max=half - 1)
    return direction + torch.where(distance < exact, distance, far)


class MPNetEmbeddings(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        width, pad = config.hidden_size, MPNET_PADDING_IDX
        self.word_embeddings = nn.Embedding(config.vocab_size, width, padding_idx=pad)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, width, padding_idx=pad)
        self.LayerNorm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # fairseq's numbering, as transformers keeps it: each non-pad token counts from pad + 1, a pad
        # id (padding, or "<pad>" typed into a post) gets pad itself and moves no other token
        real = input_ids.ne(MPNET_PADDING_IDX).long()
        positions = torch.cumsum(real, dim=1) * real + MPNET_PADDING_IDX
        embedded = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        out: torch.Tensor = self.dropout(self.LayerNorm(embedded))
        return out


class MPNetSelfAttention(HeadsAttention):
    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.q = nn.Linear(config.hidden_size, config.hidden_size)
        self.k = nn.Linear(config.hidden_size, config.hidden_size)
        self.v = nn.Linear(config.hidden_size, config.hidden_size)
        self.o = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.o(self.attend(hidden, self.q(hidden), self.k(hidden), self.v(hidden), bias))
        return out


class MPNetAttention(nn.Module):
    """Self-attention (its output projection included), dropout, residual, layer norm."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attn = MPNetSelfAttention(config)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.LayerNorm(self.dropout(self.attn(hidden, bias)) + hidden)
        return out


class MPNetEncoderStack(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            BertLayer(config, MPNetAttention(config)) for _ in range(config.num_hidden_layers)
        )
        self.relative_attention_bias = nn.Embedding(
            config.relative_attention_num_buckets, config.num_attention_heads
        )


class MPNetModel(nn.Module):
    """Embeddings and the layer stack; ``forward`` gives the last hidden states ``(n, length, width)``."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        if config.model_type != "mpnet":
            raise ValueError(f"model_type {config.model_type!r} is not MPNet: worker.model.bert runs it")
        self.config = config
        self.embeddings = MPNetEmbeddings(config)
        self.encoder = MPNetEncoderStack(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden: torch.Tensor = self.embeddings(input_ids)
        buckets = relative_buckets(input_ids.shape[1], input_ids.device)
        # One bias per head for each (query, key), then the padded keys masked out: computed once, added
        # to the scores of every layer (n, heads, length, length).
        position_bias = self.encoder.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)
        padded = (attention_mask == 0)[:, None, None, :]
        bias = position_bias.masked_fill(padded, torch.finfo(position_bias.dtype).min)
        for layer in self.encoder.layer:
            hidden = layer(hidden, bias)
        return hidden
