"""BERT in plain torch: the encoder stack a model directory's weights were trained in, without importing
``transformers``. RoBERTa and XLM-R are the same stack with positions counted from after the pad id;
MPNet (``worker.model.mpnet``) reuses its configuration, attention heads and feed-forward blocks.

Importing ``transformers`` cost the worker about 3.5 s of its start (on top of torch's 2 s) for one
class. This is that class's inference and training path for the configurations twinflag runs (absolute
positions, GELU, post-layer-norm: BERT and MiniLM), with the same parameter names, so
``model.safetensors`` files written before load unchanged, and scaled-dot-product attention (the
fused kernel on CPU and CUDA). Dropout follows the configuration in training mode, as in the original.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_args

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import nn

from worker.model.manifest import ModelType


@dataclass(frozen=True)
class BertConfig:
    """The fields of a BERT ``config.json`` the encoder needs; anything else in the file is ignored."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    hidden_act: str = "gelu"
    position_embedding_type: str = "absolute"
    pad_token_id: int = 0
    model_type: ModelType = "bert"
    relative_attention_num_buckets: int = 32  # MPNet's relative position bias (the others have none)

    @property
    def position_offset(self) -> int:
        """RoBERTa-family models number positions from ``pad_token_id + 1``, MPNet from 2 (BERT from 0)."""
        if self.model_type == "mpnet":
            return MPNET_PADDING_IDX + 1
        return self.pad_token_id + 1 if self.model_type in ROBERTA_FAMILY else 0

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type {self.model_type!r} is not one of {FAMILIES}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of {self.num_attention_heads} heads"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not one of {sorted(ACTIVATIONS)}")
        if self.position_embedding_type != "absolute":
            raise ValueError(f"position_embedding_type {self.position_embedding_type!r} is not 'absolute'")
        if self.model_type == "mpnet" and self.relative_attention_num_buckets < MPNET_BUCKETS:
            raise ValueError(f"relative_attention_num_buckets {self.relative_attention_num_buckets} < 32")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BertConfig:
        known = {field.name for field in fields(cls)}
        missing = [name for name in ("vocab_size", "hidden_size", "num_hidden_layers") if name not in values]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        return cls(**{name: value for name, value in values.items() if name in known and value is not None})

    @classmethod
    def from_json_file(cls, path: str | Path) -> BertConfig:
        """Read a ``config.json``; ``ValueError`` when it is not a BERT configuration this class runs."""
        try:
            values = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"not JSON: {error}") from error
        if not isinstance(values, dict):
            raise ValueError("not a JSON object")
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        values = {field.name: getattr(self, field.name) for field in fields(self)}
        if self.model_type != "mpnet":  # BERT's config.json as it always was
            del values["relative_attention_num_buckets"]
        return values

    def to_json(self) -> str:
        """``config.json`` text that this class and ``transformers`` both read."""
        values = {"architectures": ["MPNetModel" if self.model_type == "mpnet" else "BertModel"]}
        return json.dumps({**values, **self.to_dict()}, indent=2, sort_keys=True) + "\n"


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ROBERTA_FAMILY = frozenset({"roberta", "xlm-roberta", "camembert"})
MODEL_TYPES = frozenset(get_args(ModelType))
"""What the worker runs: BERT (MiniLM, most English sentence-transformers) and the RoBERTa family
(multilingual XLM-R bases) in this module's stack; MPNet (all-mpnet-base-v2) in ``worker.model.mpnet``."""
FAMILIES = "BERT (bert), RoBERTa (roberta, xlm-roberta, camembert) or MPNet (mpnet)"
"""The supported ``model_type`` values, as an error message names them."""

MPNET_PADDING_IDX = 1
"""MPNet numbers positions from after id 1 whatever ``config.json`` says (as ``transformers`` does)."""
MPNET_BUCKETS = 32
"""The relative-position buckets MPNet uses, whatever ``config.json`` says (as ``transformers`` does)."""

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "relu": F.relu,
    "gelu_new": _gelu_tanh,
}


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.position_offset = config.position_offset

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device) + self.position_offset
        embedded = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        if token_type_ids is None:
            embedded = embedded + self.token_type_embeddings.weight[0]
        else:
            embedded = embedded + self.token_type_embeddings(token_type_ids)
        out: torch.Tensor = self.dropout(self.LayerNorm(embedded))
        return out


class HeadsAttention(nn.Module):
    """What BERT's and MPNet's self-attention share (no parameters, so neither's weight names change):
    the heads, scaled-dot-product attention over them, and dropout in training mode."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.head_width = config.hidden_size // config.num_attention_heads
        self.dropout_p = config.attention_probs_dropout_prob

    def attend(
        self,
        hidden: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        bias: torch.Tensor,
    ) -> torch.Tensor:
        """The projections of ``hidden`` ``(n, length, width)`` attended, ``(n, length, width)``.
        ``bias``: boolean (True: attend), or added to the scores (MPNet's position bias with its
        padding), broadcast over ``(n, heads, length, length)``."""
        n, length, width = hidden.shape

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(n, length, self.heads, self.head_width).transpose(1, 2)

        if torch.onnx.is_in_onnx_export():
            # Written out as BERT's reference implementation does it, with an additive mask: the graph
            # ONNX Runtime's optimiser recognises and fuses into one Attention operator (SDPA's export
            # it does not), which int8 then runs faster. The same numbers, to float rounding.
            scores = torch.matmul(split(query), split(key).transpose(-1, -2))
            scores = scores / math.sqrt(self.head_width)
            if bias.dtype == torch.bool:
                additive = (1.0 - bias.to(scores.dtype)) * torch.finfo(scores.dtype).min
            else:
                additive = bias.to(scores.dtype)
            probs = torch.softmax(scores + additive, dim=-1)
            context = torch.matmul(probs, split(value))
            return context.permute(0, 2, 1, 3).contiguous().view(n, length, width)
        context = F.scaled_dot_product_attention(
            split(query),
            split(key),
            split(value),
            attn_mask=bias,
            dropout_p=self.dropout_p if self.training else 0.0,
            scale=1.0 / math.sqrt(self.head_width),
        )
        return context.transpose(1, 2).reshape(n, length, width)


class BertSelfAttention(HeadsAttention):
    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.attend(hidden, self.query(hidden), self.key(hidden), self.value(hidden), bias)


class BertOutput(nn.Module):
    """Projection back to the hidden width, dropout, residual, layer norm: after attention (from the
    hidden width) and after the feed-forward layer (from the intermediate width)."""

    def __init__(self, config: BertConfig, in_features: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.LayerNorm(self.dropout(self.dense(hidden)) + residual)
        return out


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertOutput(config, config.hidden_size)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.output(self.self(hidden, bias), hidden)
        return out


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACTIVATIONS[config.hidden_act]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.activation(self.dense(hidden))
        return out


class BertLayer(nn.Module):
    """Attention (BERT's, or another stack's with the same ``(hidden, bias)`` call), then feed-forward."""

    def __init__(self, config: BertConfig, attention: nn.Module | None = None) -> None:
        super().__init__()
        self.attention = attention if attention is not None else BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config, config.intermediate_size)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        attended = self.attention(hidden, bias)
        out: torch.Tensor = self.output(self.intermediate(attended), attended)
        return out


class BertEncoderStack(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))


class BertModel(nn.Module):
    """Embeddings and the layer stack; ``forward`` gives the last hidden states ``(n, length, width)``."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        if config.model_type == "mpnet":
            raise ValueError("MPNet is not this stack: worker.model.mpnet.MPNetModel runs it")
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoderStack(config)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden: torch.Tensor = self.embeddings(input_ids, token_type_ids)
        # Which keys each query may attend to, broadcast over heads and queries (boolean, so it fits
        # whatever dtype autocast gives the attention).
        keep = (attention_mask != 0)[:, None, None, :]
        for layer in self.encoder.layer:
            hidden = layer(hidden, keep)
        return hidden
