"""The bilstm's own tokenizer, learnt from the training texts: WordPiece, lower-cased.

Saved as ``tokenizer.json`` like the transformer's, so the worker loads both the same way. Every text
starts with ``[CLS]``, so even an empty post has one token and gets a real vector.

The vocabulary is chosen here rather than by ``tokenizers``' WordPiece trainer because that trainer
breaks ties in hash order, so two runs on the same data give different vocabularies (and a seeded run
would not be reproducible). The rule is simple and deterministic: every character seen (as a word
start and as a continuation ``##c``), then the word prefixes and ``##`` pieces that save the most
tokens (count × (length − 1)), ties broken alphabetically. Greedy longest-match WordPiece then
tokenises any word, typos included, with these pieces.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from worker.model.tokenizer import spam_folds

PAD, UNK, CLS = "[PAD]", "[UNK]", "[CLS]"
SPECIALS = (PAD, UNK, CLS)
MAX_PIECE = 12  # longest prefix / continuation piece considered (whole short words fit)


def _normalizer() -> normalizers.Normalizer:
    # NFKC folds full-width and compatibility forms, look-alike letters go back to Latin; BERT's
    # normaliser lower-cases, strips accents and drops control and format characters (zero-width ones).
    bert = normalizers.BertNormalizer(clean_text=True, lowercase=True, strip_accents=True)
    return normalizers.Sequence([*spam_folds(), bert])


def word_counts(texts: Iterable[str]) -> Counter[str]:
    """Words as the tokenizer will see them (normalised, split on whitespace and punctuation)."""
    normalizer = _normalizer()
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    return counts


def choose_vocab(counts: Counter[str], vocab_size: int, min_frequency: int = 2) -> list[str]:
    """Specials, characters, then the most useful pieces; deterministic for given counts.

    Characters and pieces seen fewer than ``min_frequency`` times are left out (they become
    ``[UNK]`` or are spelled with smaller pieces).
    """
    chars: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    saving: Counter[str] = Counter()
    for word, count in counts.items():
        for i, ch in enumerate(word):
            chars[ch if i == 0 else f"##{ch}"] += count
        spans = [(0, n) for n in range(2, min(len(word), MAX_PIECE) + 1)]
        spans += [
            (s, n) for s in range(1, len(word) - 1) for n in range(2, min(len(word) - s, MAX_PIECE) + 1)
        ]
        for start, n in spans:
            piece = word[:n] if start == 0 else f"##{word[start : start + n]}"
            seen[piece] += count
            saving[piece] += count * (n - 1)
    vocab = list(SPECIALS) + sorted(ch for ch, count in chars.items() if count >= min_frequency)
    room = max(0, vocab_size - len(vocab))
    useful = sorted((-score, piece) for piece, score in saving.items() if seen[piece] >= min_frequency)
    return vocab + [piece for _, piece in useful[:room]]


def train_wordpiece(texts: Iterable[str], vocab_size: int = 16000, min_frequency: int = 2) -> Tokenizer:
    """A WordPiece tokenizer over a vocabulary learnt from ``texts``; ``[PAD]`` is id 0."""
    vocab = choose_vocab(word_counts(texts), vocab_size, min_frequency)
    tokenizer = Tokenizer(
        models.WordPiece(
            {token: i for i, token in enumerate(vocab)}, unk_token=UNK, max_input_chars_per_word=100
        )
    )
    tokenizer.normalizer = _normalizer()
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A", special_tokens=[(CLS, vocab.index(CLS))]
    )
    return tokenizer
