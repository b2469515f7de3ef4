"""A tiny random BERT model directory for the reliability benches (``bench.crash``, ``bench.soak``).

The delivery guarantees do not depend on what the model knows, only on the loop around it, so a random
two-layer BERT of width 32 keeps a 10,000-post run to minutes on a shared 2-core CPU. Its WordPiece
vocabulary is learnt from the stream itself, so posts get distinct vectors; its decision threshold is
set from the stream too (``flag_share``), so a run flags a realistic share of posts at both stages.
``tests/unit/test_model.py`` builds its tiny transformer with ``write_tiny_bert`` too.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Tokenizer

MAX_TOKENS = 64


def write_tiny_bert(
    path: Path, tokenizer: Tokenizer, *, hidden_size: int, max_tokens: int, seed: int
) -> Path:
    """A randomly initialised two-layer BERT laid out like a sentence-transformers directory (``path``
    must not exist). The unit tests build their tiny transformer with it too."""
    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=2 * max_tokens,
    )
    path.mkdir(parents=True)
    bert = BertModel(config, add_pooling_layer=False)
    save_file({k: v.contiguous() for k, v in bert.state_dict().items()}, str(path / "model.safetensors"))
    config.to_json_file(str(path / "config.json"))
    tokenizer.save(str(path / "tokenizer.json"))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_tokens}))
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
