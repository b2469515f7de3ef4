"""A tiny random BERT model directory for the reliability benches (``bench.crash``, ``bench.soak``).

The delivery guarantees do not depend on what the model knows, only on the loop around it, so a random
two-layer BERT of width 32 keeps a 10,000-post run to minutes on a shared 2-core CPU. Its WordPiece
vocabulary is learnt from the stream itself, so posts get distinct vectors; its decision threshold is
set from the stream too (``flag_share``), so a run flags a realistic share of posts at both stages.
``tests/unit/test_model.py`` builds its tiny transformer with ``write_tiny_bert`` too, and
``tests/unit/test_mpnet.py`` its MPNet with ``write_tiny_mpnet``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from torch import nn
    from transformers import PretrainedConfig

MAX_TOKENS = 64


def write_tiny_bert(
    path: Path, tokenizer: Tokenizer, *, hidden_size: int, max_tokens: int, seed: int
) -> Path:
    """A randomly initialised two-layer BERT laid out like a sentence-transformers directory (``path``
    must not exist). The unit tests build their tiny transformer with it too."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(**_tiny_sizes(tokenizer, hidden_size), max_position_embeddings=2 * max_tokens)
    _save_transformer(path, BertModel(config, add_pooling_layer=False), config, tokenizer, max_tokens)
    return path


def _tiny_sizes(tokenizer: Tokenizer, hidden_size: int) -> dict[str, Any]:
    """The tiny models' shape: two layers, two heads, a feed-forward layer twice as wide."""
    return {
        "vocab_size": tokenizer.get_vocab_size(),
        "hidden_size": hidden_size,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 2 * hidden_size,
    }


def _save_transformer(
    path: Path, model: nn.Module, config: PretrainedConfig, tokenizer: Tokenizer, max_tokens: int
) -> None:
    """A new directory at ``path`` with the weights, ``config.json``, ``tokenizer.json`` and
    ``sentence_bert_config.json``."""
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"))
    config.to_json_file(str(path / "config.json"))
    tokenizer.save(str(path / "tokenizer.json"))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_tokens}))


MPNET_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "[PAD]", "[UNK]")
"""The head of all-mpnet-base-v2's vocabulary: its own specials (``<pad>`` is 1), then BERT's."""


def mpnet_tokenizer(texts: Sequence[str], vocab_size: int = 300) -> Tokenizer:
    """A WordPiece tokenizer laid out like all-mpnet-base-v2's (``<s> … </s>``, ``<pad>`` = 1), over a
    vocabulary learnt from ``texts``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    from trainer.vocab import SPECIALS, UNK, choose_vocab, word_counts

    pieces = choose_vocab(word_counts(texts), vocab_size, min_frequency=1)[len(SPECIALS) :]
    vocab = {token: i for i, token in enumerate([*MPNET_SPECIALS, *pieces, "<mask>"])}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token=UNK))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in (*MPNET_SPECIALS[:4], "<mask>")])
    return tokenizer


def write_tiny_mpnet(
    path: Path, tokenizer: Tokenizer, *, hidden_size: int, max_tokens: int, seed: int, pooling: str = "mean"
) -> Path:
    """A randomly initialised two-layer MPNet laid out like all-mpnet-base-v2's sentence-transformers
    directory (``path`` must not exist): transformer, ``pooling`` (mean or cls), normalisation."""
    import torch
    from transformers import MPNetConfig, MPNetModel

    torch.manual_seed(seed)
    config = MPNetConfig(**_tiny_sizes(tokenizer, hidden_size), max_position_embeddings=max_tokens + 2)
    model = MPNetModel(config)  # with its pooler, as the published checkpoints carry one
    with torch.no_grad():  # the relative position bias starts at zero: make it count
        model.encoder.relative_attention_bias.weight.normal_(0.0, 1.0)
    _save_transformer(path, model, config, tokenizer, max_tokens)
    specials = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "[UNK]"}
    tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_tokens}
    (path / "tokenizer_config.json").write_text(json.dumps({**tokenizer_config, **specials}))
    modules = [
        {"idx": i, "name": str(i), "path": folder, "type": f"sentence_transformers.models.{kind}"}
        for i, (folder, kind) in enumerate(
            [("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")]
        )
    ]
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir()
    pooling_config = {
        "word_embedding_dimension": hidden_size,
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_cls_token": pooling == "cls",
    }
    (path / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config))
    (path / "2_Normalize").mkdir()
    return path


def _sentence_transformer(path: Path, texts: Sequence[str], seed: int) -> Path:
    """A tiny BERT of width 32 with a WordPiece vocabulary learnt from ``texts``."""
    from trainer.vocab import train_wordpiece

    tokenizer = train_wordpiece(texts, vocab_size=2000, min_frequency=2)
    return write_tiny_bert(path, tokenizer, hidden_size=32, max_tokens=MAX_TOKENS, seed=seed)


def calibrated_threshold(vectors: np.ndarray, flag_share: float) -> float:
    """The cosine above which ``flag_share`` of the posts have an earlier neighbour (over this sample)."""
    sims = vectors @ vectors.T
    best = np.array([sims[i, :i].max() for i in range(1, len(vectors))])
    return float(np.round(np.quantile(best, 1.0 - flag_share), 4))


def tiny_model(out: Path, texts: Sequence[str], seed: int = 0, flag_share: float = 0.35) -> Path:
    """Write a tiny model directory to ``out`` (which must not exist) and return it.

    ``texts``: a sample of the stream (the vocabulary and the threshold are learnt from it; 2,000 is
    plenty). ``flag_share``: share of the sample that should land above the threshold.
    """
    from trainer.export import export_pretrained
    from worker.model.directory import read_manifest
    from worker.model.encode import TorchEncoder
    from worker.model.manifest import MANIFEST_FILE, Thresholds

    with tempfile.TemporaryDirectory(prefix="twinflag-tiny-") as tmp:
        source = _sentence_transformer(Path(tmp) / "st", texts, seed)
        export_pretrained(source, out, device="cpu")
    vectors = TorchEncoder(out, device="cpu").embed(list(texts[:2000]))
    thresholds = Thresholds(decision=calibrated_threshold(vectors, flag_share), calibrated_on="devkit.tiny")
    manifest = read_manifest(out).model_copy(update={"thresholds": thresholds})
    (out / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return out
