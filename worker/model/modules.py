"""The two encoders a model directory can hold, as torch modules.

Both map ``(input_ids, attention_mask) -> (n, dim)`` L2-normalised float32: ``TransformerEncoder``
(BERT, a RoBERTa-family model or MPNet + attention-masked mean pooling, what sentence-transformers'
all-MiniLM-L6-v2 does) and
``BiLSTMEncoder`` (embedding + bidirectional LSTM + masked mean/max pooling + projection, the classic
Siamese encoder, for CPU-only deployments).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from worker.model.bert import BertConfig, BertModel
from worker.model.encode import pad_ids
from worker.model.manifest import BiLSTMParams
from worker.model.mpnet import MPNetModel


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token vectors the mask keeps (what sentence-transformers' mean pooling does)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class TransformerEncoder(nn.Module):
    """BERT → attention-masked mean pooling (or the first token's vector, ``cls``) → L2 normalisation.

    The stack is the one ``config.model_type`` names (MPNet's, or BERT's for BERT and the RoBERTa
    family); it is ``bert`` whichever it is, the prefix of every weight in a model directory.
    """

    def __init__(self, config: BertConfig, pooling: str = "mean") -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"a transformer pools by mean or cls, not {pooling!r}")
        self.bert: BertModel | MPNetModel = (
            MPNetModel(config) if config.model_type == "mpnet" else BertModel(config)
        )
        self.pooling = pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids, attention_mask)
        pooled = hidden[:, 0] if self.pooling == "cls" else mean_pool(hidden, attention_mask)
        return F.normalize(pooled.float(), dim=-1)


class BiLSTMEncoder(nn.Module):
    """Embedding → bidirectional LSTM (packed, so padding never leaks in) → mean ⊕ max → linear → L2."""

    def __init__(self, params: BiLSTMParams, dim: int, pad_token_id: int = 0) -> None:
        super().__init__()
        self.embedding = nn.Embedding(params.vocab_size, params.embedding_dim, padding_idx=pad_token_id)
        self.dropout = nn.Dropout(params.dropout)
        self.lstm = nn.LSTM(
            params.embedding_dim,
            params.hidden_size,
            num_layers=params.num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=params.dropout if params.num_layers > 1 else 0.0,
        )
        self.projection = nn.Linear(4 * params.hidden_size, dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        lengths = attention_mask.sum(1).clamp(min=1)
        embedded = self.dropout(self.embedding(input_ids))
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        hidden, _ = pad_packed_sequence(out, batch_first=True, total_length=input_ids.shape[1])
        mask = attention_mask.unsqueeze(-1).bool()
        pooled_mean = mean_pool(hidden, attention_mask)
        pooled_max = hidden.masked_fill(~mask, torch.finfo(hidden.dtype).min).max(1).values
        projected = self.projection(self.dropout(torch.cat([pooled_mean, pooled_max], dim=-1)))
        return F.normalize(projected.float(), dim=-1)


def pad_batch(ids: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists to the longest: ``(input_ids, attention_mask)``, both int64 (n, longest)."""
    input_ids, attention_mask = pad_ids(ids, pad_token_id)
    return torch.from_numpy(input_ids), torch.from_numpy(attention_mask)


def output_dim(module: nn.Module) -> int:
    """The embedding width of one of these encoders."""
    if isinstance(module, TransformerEncoder):
        return int(module.bert.config.hidden_size)
    if isinstance(module, BiLSTMEncoder):
        return int(module.projection.out_features)
    raise TypeError(f"not a twinflag encoder: {type(module).__name__}")
