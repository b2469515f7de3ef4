"""Tokenizer hardening and set-up, shared by the trainer that writes ``tokenizer.json`` and the worker.

The folds below are part of ``tokenizer.json`` itself, so the worker applies them with no code of its
own, and the pad id is read from the tokenizer by one function for training and export alike.
"""

from __future__ import annotations

from tokenizers import Tokenizer
from tokenizers.normalizers import Normalizer

PAD_TOKEN = "[PAD]"  # noqa: S105 -- a vocabulary entry, not a password
UNK_TOKEN = "[UNK]"  # noqa: S105 -- a vocabulary entry, not a password

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


def pad_token_id(tokenizer: Tokenizer) -> int:
    """The id of ``<pad>`` or ``[PAD]`` (0 for the vocabularies we ship; 0 when a vocabulary has none).

    ``<pad>`` first: XLM-R's SentencePiece vocabulary has only it (1), and MPNet's has both, BERT's
    ``[PAD]`` (4) among the WordPiece entries it kept and ``<pad>`` (1), the one it pads with.
    """
    for name in ("<pad>", PAD_TOKEN):
        pad = tokenizer.token_to_id(name)
        if pad is not None:
            return int(pad)
    return 0
