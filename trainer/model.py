"""The encoder a run starts from, and how it trains: see ``trainer.train``'s step 2.

The transformer comes from a sentence-transformers directory (all-MiniLM-L6-v2 by default) or from a
model directory; the bilstm from a model directory or from scratch, with a WordPiece vocabulary learnt
from the training texts. ``Initial`` carries what the model card will say about where it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import nn

from trainer.batches import TrainingSet
from trainer.settings import TrainSettings
from trainer.vocab import train_wordpiece
from worker.model.directory import load_model_dir
from worker.model.manifest import CONFIG_FILE, BiLSTMParams, ModelFormatError, StaticParams, TransformerParams
from worker.model.modules import BiLSTMEncoder, TransformerEncoder
from worker.model.pretrained import default_base_model, from_sentence_transformer
from worker.model.tokenizer import configure_tokenizer, pad_token_id

BILSTM_MAX_TOKENS = 128


@dataclass
class Initial:
    """An encoder ready to train, and what its manifest will say about where it came from."""

    module: nn.Module
    tokenizer: Tokenizer
    params: TransformerParams | BiLSTMParams
    dim: int
    max_tokens: int
    base_model: str | None
    extra_files: dict[str, str | bytes] = field(default_factory=dict)
    pretrained: bool = True


def init_model(settings: TrainSettings, data: TrainingSet) -> Initial:
    """The encoder to start from: see the module docstring."""
    if settings.arch == "bilstm":
        if settings.init is not None:
            return _from_model_dir(settings.init)
        sizes = settings.bilstm
        tokenizer = train_wordpiece(data.texts, vocab_size=sizes.vocab_size)
        params = BiLSTMParams(
            vocab_size=tokenizer.get_vocab_size(),
            embedding_dim=sizes.embedding_dim,
            hidden_size=sizes.hidden_size,
            num_layers=sizes.num_layers,
            dropout=sizes.dropout,
        )
        module = BiLSTMEncoder(params, sizes.dim, pad_token_id=pad_token_id(tokenizer))
        return Initial(module, tokenizer, params, sizes.dim, BILSTM_MAX_TOKENS, None, pretrained=False)
    source = settings.init if settings.init is not None else default_base_model()
    if (source / "manifest.json").is_file():
        return _from_model_dir(source)
    parts = from_sentence_transformer(source)
    return Initial(
        parts.module,
        parts.tokenizer,
        parts.params,
        parts.params.hidden_size,
        parts.max_tokens,
        parts.base_model,
        {CONFIG_FILE: parts.config_json},
    )


def _from_model_dir(path: Path) -> Initial:
    manifest, module, tokenizer = load_model_dir(path)
    params = manifest.hyperparameters
    if isinstance(params, StaticParams):  # load_model_dir refuses these already: no torch module
        raise ModelFormatError(f"{path}: a static model cannot be fine-tuned; distill a new one")
    extra: dict[str, str | bytes] = {}
    if manifest.architecture == "transformer":
        extra[CONFIG_FILE] = (path / CONFIG_FILE).read_text(encoding="utf-8")
    return Initial(
        module,
        tokenizer,
        params,
        manifest.dim,
        manifest.max_tokens,
        manifest.version,
        extra,
    )


def freeze(module: nn.Module, layers: int) -> None:
    """Transformer only: freeze the embeddings and the first ``layers`` layers (-1 freezes nothing).

    Saves CPU time (no gradient below the first trainable layer, no Adam state for the 30k×384
    word embeddings) and keeps a gentle fine-tune from drifting far from the base model.
    """
    if not isinstance(module, TransformerEncoder) or layers < 0:
        return
    module.bert.embeddings.requires_grad_(False)
    encoder_layers = module.bert.encoder.layer
    for layer in encoder_layers[: min(layers, len(encoder_layers) - 1)]:  # the top layer always trains
        layer.requires_grad_(False)


def clone_tokenizer(tokenizer: Tokenizer, max_tokens: int) -> Tokenizer:
    """An independent copy truncating at ``max_tokens`` (training truncates shorter than the model)."""
    return configure_tokenizer(Tokenizer.from_str(tokenizer.to_str()), max_tokens)


def autocast_dtype_for(device: str) -> torch.dtype | None:
    """bf16 autocast on CUDA (fp16, with a gradient scaler, where bf16 is missing); none on CPU."""
    if device != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
