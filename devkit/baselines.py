"""The tools people would use instead of twinflag, as small pure functions (plus one datasketch wrapper).

- character n-gram shingles and their exact Jaccard similarity;
- a MinHash signature and its Jaccard estimate (numpy, seeded universal hashing over BLAKE2b);
- TF-IDF cosine over word tokens with sparse dict vectors (no scipy, no scikit-learn);
- ``MinHashLSHStream``: datasketch's MinHash LSH used the way a streaming deduplicator would
  (query the earlier documents of the tenant, then insert), scoring each document by the best
  estimated Jaccard among its LSH candidates.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
from numpy.typing import NDArray

PRIME = (1 << 31) - 1  # a·x < 2^62 for a, x < 2^31: no uint64 overflow
_WORD = re.compile(r"\w+", re.UNICODE)


def normalise(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: what a careful baseline would do before shingling."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def shingles(text: str, n: int = 5) -> set[str]:
    """Character n-grams of the normalised text; a text shorter than n is its own single shingle."""
    if n < 1:
        raise ValueError("n must be >= 1")
    flat = normalise(text)
    if len(flat) <= n:
        return {flat} if flat else set()
    return {flat[i : i + n] for i in range(len(flat) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    """|a ∩ b| / |a ∪ b|; two empty sets are identical (1.0)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def char_jaccard(text_a: str, text_b: str, n: int = 5) -> float:
    return jaccard(shingles(text_a, n), shingles(text_b, n))


def _base_hashes(items: Iterable[str]) -> NDArray[np.uint64]:
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little") for s in items),
        dtype=np.uint64,
    )


def minhash_params(num_perm: int = 128, seed: int = 1) -> tuple[NDArray[np.uint64], NDArray[np.uint64]]:
    """(a, b) of ``num_perm`` universal hash functions h(x) = (a·x + b) mod (2^31 − 1)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, PRIME, size=num_perm, dtype=np.uint64)
    b = rng.integers(0, PRIME, size=num_perm, dtype=np.uint64)
    return a, b


def minhash_signature(
    items: set[str], params: tuple[NDArray[np.uint64], NDArray[np.uint64]]
) -> NDArray[np.uint64]:
    """Per permutation, the minimum hash over the items; an empty set gives all-max (matches only itself)."""
    a, b = params
    if not items:
        return np.full(a.shape, np.iinfo(np.uint64).max, dtype=np.uint64)
    x = _base_hashes(sorted(items)) % np.uint64(PRIME)
    values = (a[:, None] * x[None, :] + b[:, None]) % np.uint64(PRIME)
    return np.asarray(values.min(axis=1), dtype=np.uint64)


def minhash_estimate(sig_a: NDArray[np.uint64], sig_b: NDArray[np.uint64]) -> float:
    """Fraction of permutations whose minima agree: an unbiased estimate of the Jaccard similarity."""
    if sig_a.shape != sig_b.shape:
        raise ValueError("signatures of different lengths")
    return float(np.mean(sig_a == sig_b))


def words(text: str) -> list[str]:
    return _WORD.findall(normalise(text))


def idf(documents: Iterable[Sequence[str]]) -> dict[str, float]:
    """Smoothed inverse document frequency: ln((1 + N) / (1 + df)) + 1 (scikit-learn's default)."""
    df: Counter[str] = Counter()
    n = 0
    for tokens in documents:
        n += 1
        df.update(set(tokens))
    return {t: math.log((1 + n) / (1 + c)) + 1.0 for t, c in df.items()}


def tfidf_vector(tokens: Sequence[str], weights: dict[str, float]) -> dict[str, float]:
    """Sparse L2-normalised tf·idf; unseen tokens get the largest idf (they are rarest)."""
    unseen = max(weights.values(), default=1.0)
    raw = {t: c * weights.get(t, unseen) for t, c in Counter(tokens).items()}
    norm = math.sqrt(sum(v * v for v in raw.values()))
    return {t: v / norm for t, v in raw.items()} if norm else {}


def cosine(a: dict[str, float], b: dict[str, float]) -> float:
    """Dot product of two L2-normalised sparse vectors (0.0 when either is empty)."""
    if len(a) > len(b):
        a, b = b, a
    return float(sum(v * b.get(t, 0.0) for t, v in a.items()))


def tfidf_scores(text_a: Sequence[str], text_b: Sequence[str]) -> list[float]:
    """TF-IDF cosine of each pair, the idf fitted on all texts of the pair set (unsupervised)."""
    tok_a, tok_b = [words(t) for t in text_a], [words(t) for t in text_b]
    weights = idf(dict.fromkeys(tuple(t) for t in [*tok_a, *tok_b]))
    return [
        cosine(tfidf_vector(a, weights), tfidf_vector(b, weights)) for a, b in zip(tok_a, tok_b, strict=True)
    ]


class MinHashLSHStream:
    """datasketch MinHash LSH over character 5-gram shingles, one index per tenant, in arrival order.

    ``add`` queries the earlier documents first, then inserts: a document never matches itself or a
    later one. It returns the best (estimated Jaccard, earlier id) among the LSH candidates, or None.
    """

    def __init__(self, threshold: float = 0.5, num_perm: int = 128, n: int = 5) -> None:
        self._threshold, self._num_perm, self._n = threshold, num_perm, n
        self._lsh: dict[str, object] = {}
        self._sigs: dict[str, object] = {}
        self._scheme: str | None = None
        self._perms: object = None  # datasketch's permutations, drawn once (drawing them per MinHash is slow)

    def add(self, tenant: str, doc_id: str, text: str) -> tuple[float, str] | None:
        from datasketch import MinHash, MinHashLSH

        if self._perms is None:
            template = MinHash(num_perm=self._num_perm)
            self._perms, self._scheme = template.permutations, template.scheme
        sig = MinHash(num_perm=self._num_perm, permutations=self._perms, scheme=self._scheme)
        sig.update_batch([s.encode("utf-8") for s in shingles(text, self._n)])
        if tenant not in self._lsh:  # not setdefault: building an LSH (band optimisation) is slow
            self._lsh[tenant] = MinHashLSH(threshold=self._threshold, num_perm=self._num_perm)
        lsh = self._lsh[tenant]
        assert isinstance(lsh, MinHashLSH)
        best: tuple[float, str] | None = None
        for other in lsh.query(sig):
            other_sig = self._sigs[f"{tenant}\x1f{other}"]
            assert isinstance(other_sig, MinHash)
            score = float(sig.jaccard(other_sig))
            if best is None or score > best[0]:
                best = (score, str(other))
        key = f"{tenant}\x1f{doc_id}"
        if key not in self._sigs:
            lsh.insert(doc_id, sig)
            self._sigs[key] = sig
        return best
