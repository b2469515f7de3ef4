"""Text normalisation and the content hash behind the exact fast path.

Normalisation is for *hashing* only: the model sees the original text. Its job is to make reposts that
differ only in invisible ways (zero-width characters, compatibility forms such as full-width letters or
ligatures, runs of whitespace, control characters) hash the same.

Case policy: the hash is taken over the **case-folded** normalised text. Changing case is one of the
cheapest spam edits, the default base model (all-MiniLM-L6-v2) is uncased and would score such a repost
at ~1.0 anyway, and a moderator reading ``stage: "exact"`` expects "the same words", not "the same
bytes". The hash path therefore catches case-only reposts without running the model. ``normalize``
itself keeps case, so its output stays readable.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import unicodedata
from typing import Literal

# Invisible characters that are not in category Cf but are used to pad or disguise text:
# combining grapheme joiner, Hangul fillers, Khmer inherent vowels, variation selectors.
_EXTRA_INVISIBLE = [
    0x034F,
    0x115F,
    0x1160,
    0x17B4,
    0x17B5,
    0x3164,
    0xFFA0,
    *range(0xFE00, 0xFE10),
    *range(0xE0100, 0xE01F0),
]


def _build_table() -> dict[int, str | None]:
    """One translate table: whitespace-like controls → space; other controls, format, surrogates → gone."""
    table: dict[int, str | None] = {}
    # Control, format and surrogate code points live only in planes 0, 1 and 14 (checked against
    # unicodedata); scanning just those keeps import time small.
    for code in itertools.chain(range(0x20000), range(0xE0000, 0xF0000)):
        category = unicodedata.category(chr(code))
        if category == "Cc":
            table[code] = " " if chr(code).isspace() else None
        elif category in ("Cf", "Cs"):
            table[code] = None
    for code in _EXTRA_INVISIBLE:
        table[code] = None
    return table


_TABLE = _build_table()

MAX_NON_STARTERS = 30
"""Longest run of combining marks kept before NFKC, as in Unicode's Stream-Safe Text Format (UAX #15).

CPython's NFKC puts each run of combining marks in canonical order with an insertion sort: quadratic,
holding the GIL. One 500 KB post of marks took 100 s and froze the worker's heartbeat and status
endpoint. No script needs more than a few marks on one letter; a run of thousands is an attack (or
"Zalgo" text), and what is cut from it only ever mattered to the hash of such a post."""


def _non_starter_class() -> str:
    """A regex class of the characters that decompose to a combining mark first (planes 0-2 hold all)."""
    codes = []
    for code in range(0x30000):
        char = chr(code)
        decomposed = unicodedata.normalize("NFKD", char) if not unicodedata.combining(char) else char
        if decomposed and unicodedata.combining(decomposed[0]):
            codes.append(code)
    ranges: list[tuple[int, int]] = []
    for code in codes:
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1] = (ranges[-1][0], code)
        else:
            ranges.append((code, code))
    return "".join(
        re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges
    )


_MARK_RUN = re.compile(f"[{_non_starter_class()}]{{{MAX_NON_STARTERS + 1},}}")


def cap_mark_runs(text: str) -> str:
    """Cut every run of combining marks to its first ``MAX_NON_STARTERS`` (linear time)."""
    return _MARK_RUN.sub(lambda run: run.group()[:MAX_NON_STARTERS], text)


def normalize(text: str) -> str:
    """Strip invisible and control characters, cap runs of combining marks, apply NFKC, collapse
    whitespace, trim. Linear in the length of the text.

    Invisible characters go *before* NFKC so that a zero-width character wedged inside a combining
    sequence cannot stop it from composing (``"e\\u200b\\u0301"`` normalises like ``"é"``).
    Newlines and tabs count as whitespace and collapse to one space.
    """
    # NFKC never produces a character the table removes (checked over every code point), so one pass
    # of the table is enough; str.split() without arguments splits on exactly the characters that
    # ``\\s`` matches, and is three times faster on a post that NFKC expands eighteenfold.
    return " ".join(unicodedata.normalize("NFKC", cap_mark_runs(text.translate(_TABLE))).split())


ExactBy = Literal["identical", "invisible", "compatibility", "whitespace", "case"]
EXACT_STEPS: tuple[ExactBy, ...] = ("identical", "invisible", "compatibility", "whitespace", "case")
"""What an exact match took, in ``normalize``'s order: nothing (the same text), removing invisible and
control characters, NFKC (full-width letters, ligatures, other compatibility forms), collapsing
whitespace, and case (the hash is case-folded)."""


def normal_forms(text: str) -> tuple[str, str]:
    """``normalize(text)``, and short fingerprints of the text after each of its steps (raw, invisible
    characters removed, NFKC, whitespace collapsed): two posts with the same hash agree from the step
    that made them agree onwards, which is how a flag says what made an exact match (``exact_by``)."""
    cleaned = text.translate(_TABLE)
    composed = unicodedata.normalize("NFKC", cap_mark_runs(cleaned))
    spaced = " ".join(composed.split())
    return spaced, ".".join(_fingerprint(form) for form in (text, cleaned, composed, spaced))


def exact_by(forms: str | None, other: str | None) -> ExactBy | None:
    """The first step of ``EXACT_STEPS`` after which two posts of the same hash agree (None: unknown,
    a post stored before fingerprints were kept)."""
    if not forms or not other:
        return None
    for step, mine, theirs in zip(EXACT_STEPS, forms.split("."), other.split("."), strict=False):
        if mine == theirs:
            return step
    return "case"


def _fingerprint(form: str) -> str:
    return hashlib.blake2b(form.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()


def text_hash(normalised: str) -> str:
    """Content hash of already-normalised text: BLAKE2b-128 hex of its case-folded UTF-8 bytes."""
    return hashlib.blake2b(normalised.casefold().encode("utf-8"), digest_size=16).hexdigest()
