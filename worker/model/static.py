"""A static encoder: pooled token and character n-gram embeddings, run in numpy (no torch import).

The fast model (``python -m trainer distill``) is one embedding table. A text is folded first
(``fold``: the worker's invisible-character strip and NFKC, ``worker.core.normalize.normalize``, the
tokenizer's look-alike table, lower case, accents), so a repost that differs only by zero-width
characters, full-width letters or Cyrillic and Greek look-alikes has exactly the same features as its
original, by construction. Its features (``features``) are its WordPiece ids (the tokenizer of
the teacher) and its character n-grams, spaces included, hashed into ``buckets`` rows after the
vocabulary: a typo changes a few n-grams, not the whole word. The vector is the sum of the features'
rows, L2-normalised (the rows' norms are their learned weights).

A directory holds ``manifest.json`` (architecture ``static``, ``StaticParams``), ``model.safetensors``
(``embedding.weight``, float16, ``vocab_size + buckets`` rows; ``lexical_weight``, the share of the
cosine the n-gram part holds, which the version must cover) and ``tokenizer.json``:
JSON and safetensors only, nothing that runs code.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from tokenizers import Tokenizer

from worker.core.normalize import normalize
from worker.model.directory import check_model_dir, model_version, read_manifest, required_file
from worker.model.encode import ManifestEncoder
from worker.model.manifest import (
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    Manifest,
    ModelFormatError,
    StaticParams,
)
from worker.model.tokenizer import HOMOGLYPHS, UNK_TOKEN, configure_tokenizer

TABLE = "embedding.weight"
LEXICAL_WEIGHT = "lexical_weight"  # a one-element tensor: the weights' hash, so the version, covers it
CHARS_PER_TOKEN = 32  # as ``worker.model.encode``: what a hostile post may cost before truncation

_MIX = np.uint64(0xBF58476D1CE4E5B9)  # splitmix64's multiplier
_STEP = np.uint64(1_000_003)


_LOOK_ALIKES = str.maketrans(HOMOGLYPHS)


def fold(texts: Sequence[str], max_chars: int) -> list[str]:
    """Each text as the encoder reads it: invisibles stripped and NFKC (``normalize``), look-alike
    letters folded to Latin (the tokenizer's ``HOMOGLYPHS``), lower case, accents stripped, whitespace
    collapsed. Pure Python string operations: a few microseconds a post."""
    out = []
    for text in texts:
        flat = normalize(text[:max_chars]).translate(_LOOK_ALIKES).lower()
        if not flat.isascii():  # strip accents as BERT does (NFD, drop non-spacing marks), fold again
            flat = "".join(c for c in unicodedata.normalize("NFD", flat) if unicodedata.category(c) != "Mn")
            flat = flat.translate(_LOOK_ALIKES)
        out.append(" ".join(flat.split()))
    return out


def plain_normalizer(tokenizer: Tokenizer) -> Tokenizer:
    """The tokenizer with the spam folds (NFKC, look-alikes) taken out of its normaliser: ``fold`` has
    applied them already, and on folded text they change nothing but cost four times the tokenising."""
    import json

    from tokenizers import Tokenizer as Loaded

    spec = json.loads(tokenizer.to_str())
    normalizer = spec.get("normalizer") or {}
    if normalizer.get("type") == "Sequence":
        kept = [n for n in normalizer["normalizers"] if n.get("type") not in ("NFKC", "Replace")]
        spec["normalizer"] = kept[0] if len(kept) == 1 else {"type": "Sequence", "normalizers": kept}
    plain: Tokenizer = Loaded.from_str(json.dumps(spec))
    return plain


def ngram_buckets(
    folded: Sequence[str], ngrams: Sequence[int], buckets: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(bucket of every character n-gram of every text, the text it came from), texts in order.

    Each text is read with a space on either side, so a word's first and last letters make n-grams of
    their own. The hash is a fixed polynomial over code points, mixed (splitmix64) and reduced modulo
    ``buckets``; each size of n hashes with its own seed. No Python ``hash``: it changes per process.
    """
    padded = [f" {text} " for text in folded]
    lengths = np.fromiter((len(t) for t in padded), dtype=np.int64, count=len(padded))
    if not padded:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    points = np.frombuffer("".join(padded).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    ends = np.cumsum(lengths)
    owner = np.repeat(np.arange(len(padded), dtype=np.int64), lengths)
    found_buckets, found_owner = [], []
    with np.errstate(over="ignore"):
        for n in ngrams:
            starts = np.arange(max(points.size - n + 1, 0), dtype=np.int64)
            valid = starts + n <= ends[owner[starts]]
            starts = starts[valid]
            h = np.full(starts.size, np.uint64(n) * np.uint64(0x9E3779B97F4A7C15), dtype=np.uint64)
            for k in range(n):
                h = (h * _STEP) ^ points[starts + k]
            h ^= h >> np.uint64(30)
            h *= _MIX
            h ^= h >> np.uint64(31)
            found_buckets.append((h % np.uint64(buckets)).astype(np.int64))
            found_owner.append(owner[starts])
    bucket = np.concatenate(found_buckets)
    who = np.concatenate(found_owner)
    order = np.argsort(who, kind="stable")
    return bucket[order], who[order]


def features(
    texts: Sequence[str], tokenizer: Tokenizer, params: StaticParams, max_tokens: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(row indices of every text's features, offsets): text i owns ``rows[offsets[i]:offsets[i+1]]``.

    The one feature path, shared by the worker and the trainer (which feeds the same rows to an
    ``nn.EmbeddingBag``). WordPiece ids come without the special tokens, truncated at ``max_tokens``.
    """
    folded = fold(texts, max_tokens * CHARS_PER_TOKEN)
    encodings = tokenizer.encode_batch(folded, add_special_tokens=False)
    counts = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
    word_ids = np.fromiter((i for e in encodings for i in e.ids), dtype=np.int64, count=int(counts.sum()))
    word_owner = np.repeat(np.arange(len(texts), dtype=np.int64), counts)
    grams, gram_owner = ngram_buckets(folded, params.ngrams, params.buckets)
    rows = np.concatenate([word_ids, grams + params.vocab_size])
    owner = np.concatenate([word_owner, gram_owner])
    order = np.argsort(owner, kind="stable")
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner, minlength=len(texts)), out=offsets[1:])
    return rows[order], offsets


def pool(
    table: NDArray[np.float32],
    rows: NDArray[np.int64],
    offsets: NDArray[np.int64],
    lexical_dim: int = 0,
    lexical_weight: float = 0.0,
) -> NDArray[np.float32]:
    """Sum of each text's rows, L2-normalised; a text without features gets the first axis. Text by
    text: a text's sum never depends on its batch, and the gathered rows stay small.

    With ``lexical_dim``, the first columns (the WordPiece rows') and the last ``lexical_dim`` (the
    n-gram rows') are normalised apart and weighted ``√(1 − w)`` and ``√w``: the cosine of two texts is
    ``(1 − w)·semantic + w·lexical``, whatever their lengths.
    """
    out = np.zeros((offsets.size - 1, table.shape[1]), dtype=np.float32)
    for i in range(offsets.size - 1):
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        if hi > lo:
            out[i] = table[rows[lo:hi]].sum(axis=0)
    if lexical_dim:
        split = table.shape[1] - lexical_dim
        semantic, lexical = _unit(out[:, :split]), _unit(out[:, split:])
        out = np.concatenate(
            [semantic * np.sqrt(1.0 - lexical_weight), lexical * np.sqrt(lexical_weight)], axis=1
        ).astype(np.float32)
    return _unit(out)


def _unit(x: NDArray[np.float32]) -> NDArray[np.float32]:
    """Rows L2-normalised; an all-zero row becomes the first axis."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    empty = norms[:, 0] < 1e-12
    out = np.where(empty[:, None], 0.0, x / np.where(empty, 1.0, norms[:, 0])[:, None]).astype(np.float32)
    out[empty, 0] = 1.0
    return out


class StaticEncoder(ManifestEncoder):
    """A static model directory as the worker's ``Encoder`` (``worker.core.ports``): numpy only.

    ``embed`` folds, featurises and pools (see the module docstring); one text's vector never depends
    on the other texts of the batch. ``known`` is the transformer's rule: a text with no WordPiece but
    ``[UNK]`` is matched by its exact text only.
    """

    def __init__(
        self, manifest: Manifest, table: NDArray[np.floating], tokenizer: Tokenizer, root: Path
    ) -> None:
        params = manifest.hyperparameters
        if not isinstance(params, StaticParams):
            raise ModelFormatError(f"{root}: a {manifest.architecture} model is not a static one")
        expected = (params.vocab_size + params.buckets, params.embedding_dim)
        if table.shape != expected:
            raise ModelFormatError(f"{root}: {TABLE} has shape {table.shape}, the manifest says {expected}")
        if tokenizer.get_vocab_size() > params.vocab_size:
            raise ModelFormatError(
                f"{root}: the tokenizer has {tokenizer.get_vocab_size()} tokens, the table's vocabulary"
                f" {params.vocab_size}: token ids would index into the n-gram rows"
            )
        self.manifest = manifest
        self.params = params
        self.table = np.ascontiguousarray(table, dtype=np.float32)  # float16 on disk, summed in float32
        self.tokenizer = configure_tokenizer(tokenizer, manifest.max_tokens)
        self.root = root
        unknown = self.tokenizer.token_to_id(getattr(self.tokenizer.model, "unk_token", UNK_TOKEN))
        self._unknown = -1 if unknown is None else int(unknown)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows, offsets = features(texts, self.tokenizer, self.params, self.max_tokens)
        return pool(self.table, rows, offsets, self.params.lexical_dim, self.params.lexical_weight)

    def known(self, texts: Sequence[str]) -> list[bool]:
        folded = fold(texts, self.max_tokens * CHARS_PER_TOKEN)
        rows = self.tokenizer.encode_batch(folded, add_special_tokens=False)
        return [any(i != self._unknown for i in row.ids) for row in rows]

    def health(self) -> bool:
        probe = self.embed(["health check"])
        return bool(
            probe.shape == (1, self.dim)
            and np.isfinite(probe).all()
            and abs(float(np.linalg.norm(probe[0])) - 1.0) < 1e-3
        )


def load_static(path: str | Path) -> StaticEncoder:
    """A ``StaticEncoder`` for a static model directory, after the same safety and version checks as
    ``worker.model.directory.load_model_dir``; never unpickles, never imports torch."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    root = check_model_dir(Path(path))
    manifest = read_manifest(root)
    if manifest.architecture != "static":
        raise ModelFormatError(f"{path}: a {manifest.architecture} model is not a static one")
    weights = required_file(root, WEIGHTS_FILE)
    if manifest.version != model_version(manifest.architecture, weights):
        raise ModelFormatError(f"{path}: manifest version {manifest.version!r} does not match the weights")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelFormatError(f"{path}: not a safetensors file: {error}") from error
    if set(tensors) != {TABLE, LEXICAL_WEIGHT}:
        raise ModelFormatError(
            f"{path}: a static model holds {TABLE} and {LEXICAL_WEIGHT}, not {sorted(tensors)}"
        )
    params = manifest.hyperparameters
    stored = tensors[LEXICAL_WEIGHT]
    if (
        not isinstance(params, StaticParams)
        or stored.shape != (1,)
        or float(stored[0]) != params.lexical_weight
    ):
        raise ModelFormatError(f"{path}: the weights' {LEXICAL_WEIGHT} does not match the manifest's")
    try:
        tokenizer = Tokenizer.from_file(str(required_file(root, TOKENIZER_FILE)))
    except Exception as error:  # tokenizers raises a bare Exception on malformed JSON
        raise ModelFormatError(f"{path}: {TOKENIZER_FILE} is not a tokenizers file: {error}") from error
    return StaticEncoder(manifest, tensors[TABLE], tokenizer, Path(path))
