"""Fact changes: a copy of a post with one material fact changed, the hardest "not a duplicate" there is.

A repost keeps the facts and changes the words; a near miss keeps the words and changes a fact: a
price, a place, a name, a product, a day or a date, a negation, who did what to whom. An encoder scores
both alike (most words are shared), so the verifier learns the difference from pairs made here:
``text`` ~ ``fact_change(text)`` is a non-duplicate. Pure functions of the text and a seeded
``random.Random``; each returns ``None`` when the text has nothing of its kind to change.

Kept apart from the demo stream's generator (``devkit.posts``) on purpose: the demo is a test of the
model, and a model trained on exactly its generator would make that test unfair.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
OPPOSITES = {
    "buy": "sell", "bought": "sold", "lost": "found", "before": "after", "up": "down", "more": "less",
    "open": "closed", "cheap": "expensive", "new": "used", "first": "last", "best": "worst",
    "increase": "decrease", "rise": "fall", "win": "lose", "won": "lost", "start": "end", "early": "late",
    "north": "south", "east": "west", "left": "right", "always": "never", "yes": "no", "men": "women",
    "male": "female", "morning": "evening", "day": "night", "free": "paid", "accept": "reject",
}  # fmt: skip
OPPOSITES |= {b: a for a, b in list(OPPOSITES.items())}
STAND_INS = (
    "London", "Paris", "Berlin", "Madrid", "Tokyo", "Chicago", "Toronto", "Sydney", "Lisbon", "Oslo",
    "Samsung", "Apple", "Google", "Microsoft", "Tesla", "Nike", "Adobe", "Intel", "Sony", "Canon",
    "Alice", "Bob", "Maria", "David", "Sarah", "James", "Emma", "Omar", "Priya", "Chen",
)  # fmt: skip
"""Proper names swapped in when the caller's pool has none to offer: places, brands, people."""

_NUMBER = re.compile(r"(?<![\w.])(\d+(?:[.,]\d+)?)(?![\w])")
_CAPITALISED = re.compile(r"(?<=[a-z,;:] )([A-Z][a-z]{2,}(?:\s[A-Z][a-z]+)?)")
_NEGATABLE = re.compile(r"\b(is|are|was|were|can|could|will|would|do|does|did|should|has|have|had)\b", re.I)
_NEGATION = re.compile(r"\b(not |n't|never |no )", re.I)
_FROM_TO = re.compile(r"\bfrom (\w+) to (\w+)\b")
_PAIR = re.compile(r"\b([A-Z]\w+) (and|or|vs\.?|versus|over|beat|beats) ([A-Z]\w+)\b")


def change_number(text: str, rng: random.Random, _pool: Sequence[str] = ()) -> str | None:
    """A price, amount, count, time or percentage, changed to another plausible value."""
    spots = list(_NUMBER.finditer(text))
    if not spots:
        return None
    spot = rng.choice(spots)
    raw = spot.group(1)
    value = float(raw.replace(",", ""))
    factor = rng.choice((0.5, 0.75, 1.5, 2.0, 3.0, 10.0))
    new = value * factor if value else rng.randint(1, 9)
    if "." in raw or (value and new != int(new)):
        changed = f"{new:.2f}".rstrip("0").rstrip(".")
    else:
        changed = str(int(new))
    if changed == raw:
        changed = str(int(value) + rng.randint(1, 9))
    return text[: spot.start(1)] + changed + text[spot.end(1) :]


def change_name(text: str, rng: random.Random, pool: Sequence[str] = ()) -> str | None:
    """A name, place or product (a capitalised word inside a sentence) swapped for another."""
    spots = list(_CAPITALISED.finditer(text))
    if not spots:
        return None
    spot = rng.choice(spots)
    choices = [name for name in (*pool, *STAND_INS) if name != spot.group(1)]
    return text[: spot.start(1)] + rng.choice(choices) + text[spot.end(1) :]


def change_day(text: str, rng: random.Random, _pool: Sequence[str] = ()) -> str | None:
    """A weekday or a month swapped for another."""
    for names in (WEEKDAYS, MONTHS):
        found = [n for n in names if re.search(rf"\b{n}\b", text)]
        if found:
            old = rng.choice(found)
            new = rng.choice([n for n in names if n != old])
            return re.sub(rf"\b{old}\b", new, text, count=1)
    return None


def negate(text: str, rng: random.Random, _pool: Sequence[str] = ()) -> str | None:
    """A negation removed, or one added after an auxiliary verb."""
    negations = list(_NEGATION.finditer(text))
    if negations and rng.random() < 0.5:
        spot = rng.choice(negations)
        return text[: spot.start()] + text[spot.end() :]
    auxiliaries = list(_NEGATABLE.finditer(text))
    if not auxiliaries:
        return None
    spot = rng.choice(auxiliaries)
    return text[: spot.end()] + " not" + text[spot.end() :]


def opposite(text: str, rng: random.Random, _pool: Sequence[str] = ()) -> str | None:
    """A word swapped for its opposite (buy/sell, lost/found, before/after...)."""
    words = [m for m in re.finditer(r"\b\w+\b", text) if m.group().lower() in OPPOSITES]
    if not words:
        return None
    spot = rng.choice(words)
    word = spot.group()
    new = OPPOSITES[word.lower()]
    new = new.capitalize() if word[0].isupper() else new
    return text[: spot.start()] + new + text[spot.end() :]


def swap_roles(text: str, rng: random.Random, _pool: Sequence[str] = ()) -> str | None:
    """Who did what to whom: "from A to B" → "from B to A", "A than B" → "B than A"."""
    spots = list(_FROM_TO.finditer(text)) or [m for m in _PAIR.finditer(text) if m.group(1) != m.group(3)]
    if not spots:
        return None
    spot = rng.choice(spots)
    if spot.re is _FROM_TO:
        swapped = f"from {spot.group(2)} to {spot.group(1)}"
    else:
        swapped = f"{spot.group(3)} {spot.group(2)} {spot.group(1)}"
    return text[: spot.start()] + swapped + text[spot.end() :]


CHANGES: tuple[Callable[[str, random.Random, Sequence[str]], str | None], ...] = (
    change_number, change_name, change_day, negate, opposite, swap_roles,
)  # fmt: skip


def fact_change(text: str, rng: random.Random, pool: Sequence[str] = ()) -> str | None:
    """One material fact of ``text`` changed (the first kind, in random order, that applies), or None.

    ``pool``: proper names to swap in (from the training texts), beside a fixed stand-in list.
    """
    for change in rng.sample(CHANGES, len(CHANGES)):
        changed = change(text, rng, pool)
        if changed is not None and changed != text:
            return changed
    return None


def proper_names(texts: Sequence[str], limit: int = 2000) -> list[str]:
    """Capitalised words found inside sentences of ``texts``: names to swap in, most frequent first."""
    counts: dict[str, int] = {}
    for text in texts:
        for match in _CAPITALISED.finditer(text):
            counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return sorted(counts, key=lambda name: (-counts[name], name))[:limit]
