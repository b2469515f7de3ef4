"""Normalisation for the exact path: invisible differences must not change the hash; real ones must."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core.normalize import MAX_NON_STARTERS, normalize, text_hash


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  hello   world \n\t again ", "hello world again"),
        ("ＦＵＬＬ ｗｉｄｔｈ ﬁle", "FULL width file"),  # NFKC compatibility forms
        ("zero\u200bwidth\u200d join\ufeff", "zerowidth join"),
        ("nul\x00 and \x07bell\x1b", "nul and bell"),
        ("line\r\nbreak\u2028sep\u00a0nbsp", "line break sep nbsp"),
        ("e\u200b\u0301", "\u00e9"),  # a zero-width character cannot stop composition
        ("heart \u2764\ufe0f", "heart \u2764"),  # variation selectors are invisible
        ("\u202eevil\u202c rtl", "evil rtl"),  # bidi overrides are format characters
        ("\u3164\u200b \u00ad", ""),
        ("Keep Case", "Keep Case"),
    ],
)
def test_normalize(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


def test_hash_ignores_invisible_differences_and_case() -> None:
    base = text_hash(normalize("Buy cheap watches now"))
    assert text_hash(normalize("  BUY  cheap\u200b watches\tnow ")) == base
    assert text_hash(normalize("Ｂｕｙ cheap watches now")) == base


def test_hash_tells_different_words_apart() -> None:
    assert text_hash(normalize("Buy cheap watches now")) != text_hash(normalize("Buy cheap watches today"))
    assert len(text_hash("x")) == 32


def test_a_run_of_combining_marks_is_capped_so_normalising_stays_linear() -> None:
    """CPython's NFKC sorts a run of marks with an insertion sort: 40,000 marks took seconds, 500 KB
    of them 100 s, holding the GIL. Runs are cut to the Stream-Safe limit before NFKC."""
    hostile = "a" + "\u0301" * 20_000 + "\u0316" * 20_000 + " b"
    out = normalize(hostile)
    assert len(out) <= 1 + MAX_NON_STARTERS + 2
    assert out.endswith(" b")
    tibetan = "\u0f73" * 20_000  # a starter-like sign whose decomposition is two combining marks
    assert len(normalize(tibetan)) <= 2 * MAX_NON_STARTERS
    accented = "e\u0301\u0316 caf\u00e9 \u1e69"  # ordinary text keeps every mark
    assert normalize(accented) == unicodedata.normalize("NFKC", accented)


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(exclude_categories=("Cs",)), max_size=60))
def test_the_faster_normalisation_hashes_exactly_as_before(text: str) -> None:
    """One table pass and str.split() instead of two passes and a regex: the same string, so every hash
    an index already holds still matches (short runs of marks, as here, are not capped)."""
    import re

    from worker.core.normalize import _TABLE

    before = unicodedata.normalize("NFKC", text.translate(_TABLE)).translate(_TABLE)
    assert normalize(text) == re.sub(r"\s+", " ", before).strip()
