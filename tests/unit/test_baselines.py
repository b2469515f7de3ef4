"""The baseline similarity functions of devkit/baselines.py, on small hand-checked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from devkit.baselines import (
    char_jaccard,
    cosine,
    idf,
    jaccard,
    minhash_estimate,
    minhash_params,
    minhash_signature,
    shingles,
    tfidf_scores,
    tfidf_vector,
    words,
)


def test_shingles_normalise_case_width_and_whitespace() -> None:
    assert shingles("AbC  d", 3) == {"abc", "bc ", "c d"}
    assert shingles("ＡＢＣ", 3) == {"abc"}  # NFKC folds full-width letters
    assert shingles("ab", 5) == {"ab"}
    assert shingles("   ", 5) == set()
    with pytest.raises(ValueError):
        shingles("abc", 0)


def test_jaccard_hand_computed() -> None:
    assert jaccard({"a", "b"}, {"b", "c"}) == pytest.approx(1 / 3)
    assert jaccard(set(), set()) == 1.0
    assert jaccard({"a"}, set()) == 0.0
    assert char_jaccard("hello world", "HELLO   world") == 1.0


def test_minhash_signature_is_deterministic_and_estimates_jaccard() -> None:
    params = minhash_params(256, seed=3)
    a = {f"s{i}" for i in range(200)}
    b = {f"s{i}" for i in range(100, 300)}  # |a∩b| = 100, |a∪b| = 300: J = 1/3
    sig_a, sig_b = minhash_signature(a, params), minhash_signature(b, params)
    assert np.array_equal(sig_a, minhash_signature(set(a), params))
    assert minhash_estimate(sig_a, sig_a) == 1.0
    assert minhash_estimate(sig_a, sig_b) == pytest.approx(1 / 3, abs=0.1)
    disjoint = minhash_signature({f"t{i}" for i in range(200)}, params)
    assert minhash_estimate(sig_a, disjoint) < 0.05


def test_minhash_empty_set_and_length_mismatch() -> None:
    params = minhash_params(16)
    empty = minhash_signature(set(), params)
    assert minhash_estimate(empty, minhash_signature({"x"}, params)) == 0.0
    with pytest.raises(ValueError):
        minhash_estimate(empty, minhash_signature({"x"}, minhash_params(8)))


def test_idf_and_tfidf_vector_are_normalised() -> None:
    weights = idf([["a", "b"], ["a"]])
    assert weights["a"] == pytest.approx(1.0)  # ln(3/3) + 1
    assert weights["b"] == pytest.approx(math.log(3 / 2) + 1)
    vec = tfidf_vector(["a", "b", "b"], weights)
    assert sum(v * v for v in vec.values()) == pytest.approx(1.0)
    assert tfidf_vector([], weights) == {}


def test_cosine_of_sparse_vectors() -> None:
    assert cosine({"a": 1.0}, {"a": 1.0}) == pytest.approx(1.0)
    assert cosine({"a": 1.0}, {"b": 1.0}) == 0.0
    assert cosine({}, {"a": 1.0}) == 0.0


def test_tfidf_scores_rank_paraphrase_above_unrelated() -> None:
    scores = tfidf_scores(
        ["How do I learn Python fast?", "How do I learn Python fast?", "same words"],
        ["What is the fastest way to learn Python?", "Best pizza in Naples", "same words"],
    )
    assert scores[0] > scores[1]
    assert scores[2] == pytest.approx(1.0)
    assert words("Hello, World!") == ["hello", "world"]
