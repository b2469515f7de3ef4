"""The model directory on disk: safety checks, loading and atomic saving. Never unpickles.

A directory holding a pickle-capable file (``*.bin``, ``*.pt``, ``*.pkl``, ...) or a symlink anywhere
inside is refused with ``UnsafeModelError`` before anything is read: a model directory is an artefact
people copy around, and a pickle in it is code. The directory itself may be a symlink
(``models/default -> models/v3`` is a deployment habit). torch is imported only by the functions that
build or save a module, so checking a directory or reading its manifest stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from worker.model.manifest import (
    ALLOWED_SUFFIXES,
    CONFIG_FILE,
    MANIFEST_FILE,
    PICKLE_SUFFIXES,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    BiLSTMParams,
    Manifest,
    ModelFormatError,
    StaticParams,
    UnsafeModelError,
)

README_FILE = "README.md"
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
"""A file or folder name a model directory may hold: no separators, no leading dot or dash."""

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer
    from torch import nn


def check_model_dir(path: Path) -> Path:
    """The resolved directory, after refusing pickle-capable files and symlinks anywhere inside it."""
    if not path.exists():
        raise FileNotFoundError(f"no model directory at {path}")
    root = path.resolve(strict=True)
    if not root.is_dir():
        raise ModelFormatError(f"{path} is not a directory")
    if not (root / MANIFEST_FILE).is_file():
        raise ModelFormatError(not_a_model_dir(path, root))
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


def not_a_model_dir(path: Path, root: Path) -> str:
    """What to say of a directory without a manifest, and the command that makes a model directory."""
    names = {entry.name for entry in root.iterdir()}
    if "modules.json" in names or "sentence_bert_config.json" in names or "config.json" in names:
        return (
            f"{path} has no {MANIFEST_FILE}: it looks like a sentence-transformers or Hugging Face model,"
            f" not a twinflag model directory. Make one from it with: python -m trainer export"
            f" --from-pretrained {path} --out models/mine (add --dev PAIRS to calibrate its threshold)"
        )
    return (
        f"{path} has no {MANIFEST_FILE}: not a twinflag model directory. Make one with"
        f" `make model`, `python -m trainer train ... --out DIR` or `python -m trainer export"
        f" --from-pretrained DIR --out DIR`"
    )


def required_file(root: Path, name: str) -> Path:
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
        return Manifest.model_validate_json(required_file(root, MANIFEST_FILE).read_bytes())
    except ValidationError as error:
        raise ModelFormatError(f"{path}/{MANIFEST_FILE} is not a valid manifest: {error}") from error


def build_module(manifest: Manifest, root: Path) -> nn.Module:
    """An untrained module of the manifest's architecture (the transformer from ``config.json``), once
    ``config.json`` and the shapes in the weights' header agree with the manifest: nothing is allocated
    for sizes the weights do not have."""
    from worker.model.modules import BiLSTMEncoder, TransformerEncoder

    params = manifest.hyperparameters
    if isinstance(params, StaticParams):
        raise ModelFormatError(f"{root}: a static model has no torch module (worker.model.static loads it)")
    shapes = weight_shapes(required_file(root, WEIGHTS_FILE))
    if isinstance(params, BiLSTMParams):
        _expect_shape(root, shapes, "embedding.weight", (params.vocab_size, params.embedding_dim))
        _expect_shape(root, shapes, "projection.weight", (manifest.dim, 4 * params.hidden_size))
        return BiLSTMEncoder(params, manifest.dim, manifest.pad_token_id)
    from worker.model.bert import BertConfig

    try:
        config = BertConfig.from_json_file(required_file(root, CONFIG_FILE))
    except (ValueError, TypeError, OSError) as error:
        raise ModelFormatError(f"{root}: {CONFIG_FILE} is not a model this worker runs: {error}") from error
    if config.hidden_size != manifest.dim:
        raise ModelFormatError(f"{root}: config.json hidden_size {config.hidden_size} != dim {manifest.dim}")
    summary = {
        **({"model_type": params.model_type} if params.model_type is not None else {}),
        "num_hidden_layers": params.num_hidden_layers,
        "num_attention_heads": params.num_attention_heads,
        "intermediate_size": params.intermediate_size,
        "vocab_size": params.vocab_size,
    }
    for name, value in summary.items():
        if getattr(config, name, None) != value:
            raise ModelFormatError(f"{root}: config.json {name} {getattr(config, name, None)} != {value}")
    if config.max_position_embeddings < manifest.max_tokens + config.position_offset:
        raise ModelFormatError(
            f"{root}: max_tokens {manifest.max_tokens} > the model's"
            f" {config.max_position_embeddings} positions"
        )
    embeddings = "bert.embeddings."
    _expect_shape(
        root, shapes, embeddings + "word_embeddings.weight", (config.vocab_size, config.hidden_size)
    )
    _expect_shape(
        root,
        shapes,
        embeddings + "position_embeddings.weight",
        (config.max_position_embeddings, config.hidden_size),
    )
    return TransformerEncoder(config, manifest.pooling)


def weight_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors header, without reading the tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as file:
            return {name: tuple(file.get_slice(name).get_shape()) for name in file.keys()}  # noqa: SIM118
    except Exception as error:  # safetensors raises its own error types for a malformed header
        raise ModelFormatError(f"{weights}: not a safetensors file: {error}") from error


def _expect_shape(
    root: Path, shapes: dict[str, tuple[int, ...]], name: str, expected: tuple[int, ...]
) -> None:
    if shapes.get(name) != expected:
        raise ModelFormatError(
            f"{root}: weights hold {name} of shape {shapes.get(name)}, the manifest and config say {expected}"
        )


def load_model_dir(path: Path) -> tuple[Manifest, nn.Module, Tokenizer]:
    """Manifest, module (eval mode, CPU, float32) and tokenizer of a model directory. Never unpickles.

    Raises ``UnsafeModelError`` for pickles or symlinks, ``ModelFormatError`` for a missing file, an
    invalid manifest, weights that do not fit the architecture, or a version that does not match the
    weights, and ``FileNotFoundError`` when there is no directory at all.
    """
    from safetensors.torch import load_file

    root = check_model_dir(path)
    manifest = read_manifest(root)
    if manifest.precision != "float32":
        raise ModelFormatError(f"{path}: a {manifest.precision} model runs in ONNX Runtime, not torch")
    weights = checked_weights(root, manifest)
    module = build_module(manifest, root)
    try:
        module.load_state_dict(load_file(str(weights), device="cpu"), strict=True)
    except (RuntimeError, OSError) as error:
        raise ModelFormatError(f"{path}: weights do not fit a {manifest.architecture}: {error}") from error
    module.eval()
    return manifest, module, load_tokenizer(root, manifest)


def quantized_version(architecture: str, weights_file: Path) -> str:
    """``<architecture>-int8-<12 hex>``: a quantised copy's vectors are its own space."""
    return f"{architecture}-int8-{file_sha256(weights_file)[:12]}"


def checked_weights(root: Path, manifest: Manifest) -> Path:
    """The weights file, once the manifest's version is found to name exactly these weights."""
    weights = required_file(root, manifest.weights_file)
    make = quantized_version if manifest.precision == "int8" else model_version
    if manifest.version != make(manifest.architecture, weights):
        raise ModelFormatError(f"{root}: manifest version {manifest.version!r} does not match the weights")
    return weights


def load_tokenizer(root: Path, manifest: Manifest) -> Tokenizer:
    """The directory's tokenizer, truncating at ``max_tokens``, checked against the model's vocabulary."""
    from tokenizers import Tokenizer

    from worker.model.tokenizer import configure_tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(required_file(root, TOKENIZER_FILE)))
    except Exception as error:  # tokenizers raises a bare Exception on malformed JSON
        raise ModelFormatError(f"{root}: {TOKENIZER_FILE} is not a tokenizers file: {error}") from error
    if tokenizer.get_vocab_size() > manifest.hyperparameters.vocab_size:
        raise ModelFormatError(
            f"{root}: the tokenizer has {tokenizer.get_vocab_size()} tokens, the model's vocabulary"
            f" {manifest.hyperparameters.vocab_size}: token ids would index past its embeddings"
        )
    return configure_tokenizer(tokenizer, manifest.max_tokens)


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
    readme: Callable[[Manifest], str] | None = None,
) -> Manifest:
    """Write a model directory atomically (temp dir beside it, then rename); return the final manifest.

    The version is computed here from the weights. ``extra_files`` (``config.json`` for the
    transformer, a report) are names inside the directory, at most one folder deep; pickle-capable
    names are refused. A transformer directory also gets the sentence-transformers layout
    (``pretrained.sentence_transformers_layout``); ``readme`` writes ``README.md`` (the model card) from
    the final manifest, version included. An existing directory at ``path`` is replaced only
    once the new one is complete.
    """
    from safetensors.torch import save_file

    files = dict(extra_files or {})
    if manifest.architecture == "transformer" and _model_type(files.get(CONFIG_FILE)) == "bert":
        # (the weights are saved under BERT's names: transformers loads a RoBERTa-family or MPNet model
        # from others)
        from worker.model.pretrained import sentence_transformers_layout

        files = {**sentence_transformers_layout(manifest, tokenizer), **files}
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
        for name, content in files.items():
            parts = Path(name).parts
            if not 1 <= len(parts) <= 2 or any(not SAFE_NAME.fullmatch(part) for part in parts):
                raise UnsafeModelError(f"refusing to write {name!r} into a model directory")
            if Path(name).suffix.lower() not in ALLOWED_SUFFIXES:
                raise UnsafeModelError(f"refusing to write {name!r} into a model directory")
            data = content.encode("utf-8") if isinstance(content, str) else content
            (staging / name).parent.mkdir(exist_ok=True)
            (staging / name).write_bytes(data)
        (staging / MANIFEST_FILE).write_text(final.model_dump_json(indent=2) + "\n", encoding="utf-8")
        if readme is not None:
            (staging / README_FILE).write_text(readme(final), encoding="utf-8")
        for entry in staging.rglob("*"):
            # safetensors writes 0600; a worker under another user must read it
            entry.chmod(0o755 if entry.is_dir() else 0o644)
        replace_dir(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def _model_type(config: str | bytes | None) -> str | None:
    try:
        value = json.loads(config) if config is not None else None
    except ValueError:
        return None
    return str(value.get("model_type", "bert")) if isinstance(value, dict) else None


def replace_dir(staging: Path, path: Path) -> None:
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
