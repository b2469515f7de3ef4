"""Spam-style edits: what a reposter does to slip past an exact-match filter.

Used as an optional extra positive in training (``text`` ~ ``spam_edit(text)``, added to a batch by
``augment_batch``), so the encoder learns that typos, casing, emoji, links, homoglyphs, zero-width
characters and a dropped word do not make a new post. Pure functions of the text (or the batch) and a
seeded ``random.Random``.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable

from trainer.batches import Batch

# Latin letters and Cyrillic/Greek look-alikes a spammer swaps in.
HOMOGLYPHS = {
    "a": "а", "c": "с", "e": "е", "i": "і", "o": "о", "p": "р", "x": "х", "y": "у",
    "A": "А", "B": "В", "C": "С", "E": "Е", "H": "Н", "K": "К", "M": "М", "O": "О", "P": "Р", "T": "Т",
}  # fmt: skip
ZERO_WIDTH = ("\u200b", "\u200c", "\u200d", "\u2060", "\ufeff")
EMOJI = ("🔥", "😂", "👉", "💯", "✅", "🚀", "😍", "👇", "‼️", "🙏")
LINK_HOSTS = ("bit.ly", "t.co", "tinyurl.com", "goo.gl", "ow.ly")


def typo(text: str, rng: random.Random) -> str:
    """Swap, drop or double one letter inside a word."""
    spots = [i for i, ch in enumerate(text) if ch.isalpha()]
    if len(spots) < 2:
        return text
    i = rng.choice(spots[:-1])
    kind = rng.randrange(3)
    if kind == 0:
        return text[:i] + text[i + 1] + text[i] + text[i + 2 :]
    if kind == 1:
        return text[:i] + text[i + 1 :]
    return text[:i] + text[i] + text[i:]


def recase(text: str, rng: random.Random) -> str:
    """ALL CAPS, all lower, Title Case, or one shouted word."""
    kind = rng.randrange(4)
    if kind == 0:
        return text.upper()
    if kind == 1:
        return text.lower()
    if kind == 2:
        return text.title()
    words = text.split(" ")
    k = rng.randrange(len(words))
    words[k] = words[k].upper()
    return " ".join(words)


def add_emoji(text: str, rng: random.Random) -> str:
    emoji = "".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 3)))
    return f"{emoji} {text}" if rng.random() < 0.3 else f"{text} {emoji}"


def add_link(text: str, rng: random.Random) -> str:
    slug = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(7))
    return f"{text} https://{rng.choice(LINK_HOSTS)}/{slug}"


def homoglyphs(text: str, rng: random.Random) -> str:
    """Replace one to three letters that have a look-alike."""
    spots = [i for i, ch in enumerate(text) if ch in HOMOGLYPHS]
    chars = list(text)
    for i in rng.sample(spots, min(len(spots), rng.randint(1, 3))):
        chars[i] = HOMOGLYPHS[chars[i]]
    return "".join(chars)


def zero_width(text: str, rng: random.Random) -> str:
    """Insert one to three invisible characters."""
    chars = list(text)
    for _ in range(rng.randint(1, 3)):
        chars.insert(rng.randrange(len(chars) + 1), rng.choice(ZERO_WIDTH))
    return "".join(chars)


def drop_word(text: str, rng: random.Random) -> str:
    """Drop one word, only from texts long enough to stay the same post (≥ 5 words)."""
    words = text.split()
    if len(words) < 5:
        return text
    del words[rng.randrange(len(words))]
    return " ".join(words)


EDITS: tuple[Callable[[str, random.Random], str], ...] = (
    typo, recase, add_emoji, add_link, homoglyphs, zero_width, drop_word,
)  # fmt: skip


def spam_edit(text: str, rng: random.Random, max_edits: int = 3) -> str:
    """One to ``max_edits`` different edits, applied in a random order."""
    for edit in rng.sample(EDITS, rng.randint(1, max_edits)):
        text = edit(text, rng)
    return text


def augment_batch(batch: Batch, fraction: float, rng: random.Random) -> Batch:
    """Add rows ``anchor ~ spam_edit(anchor)`` for about ``fraction`` of the rows (same cluster)."""
    if fraction <= 0:
        return batch
    rows = len(batch.anchors)
    chosen = [i for i in range(rows) if rng.random() < fraction]
    if not chosen:
        return batch
    anchors = batch.anchors + [batch.anchors[i] for i in chosen]
    edited = [spam_edit(batch.anchors[i], rng) for i in chosen]
    clusters = batch.anchor_clusters + [batch.anchor_clusters[i] for i in chosen]
    return Batch(
        anchors=anchors,
        candidates=batch.candidates[:rows] + edited + batch.candidates[rows:],
        anchor_clusters=clusters,
        candidate_clusters=clusters + batch.candidate_clusters[rows:],
    )
