"""How the batch step finds what a document may duplicate: the documents on their way, the exact path,
the in-batch matrix and the index search merged into ranked candidates, and the verifier's pass.

``worker.core.step`` runs these in order; the rules they follow are written there and in
``worker.core.decide``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from worker.core.decide import (
    Verdict,
    batch_candidates,
    clamp_score,
    cosine,
    exact_in_batch,
    similarities,
)
from worker.core.decide import top_k as merge_top_k
from worker.core.messages import Document
from worker.core.policy import Policy
from worker.core.ports import Candidate, HashQuery, Query, StoredVector, VectorIndex, Verifier
from worker.core.records import OrderKey, Record

TIE_MARGIN = 2
"""The index is asked for ``TIE_MARGIN * top_k`` neighbours, ranked here and cut to ``top_k``: equal
scores (copies of one text share a vector) are then ranked by order key and id, not by whichever copies
the index's own cut happened to keep, unless more than that many tie at the cut."""


@dataclass(slots=True)
class Doc:
    """A valid document on its way through the step."""

    record: Record
    document: Document
    order: OrderKey
    text_hash: str
    deleted: bool = False  # a later deletion in this batch removes it
    exact: Candidate | None = None
    exact_in_batch: int | None = None  # position of the in-batch document it exactly repeats
    vector: np.ndarray | None = None
    opaque: bool = False  # the model knows none of its tokens: it matches by the exact path only
    first: Verdict | None = None  # its first decision, stored with its point (a replay)
    floor: int | None = None  # the earliest record time it may match (retention); None: any

    @property
    def key(self) -> tuple[str, str]:
        return (self.document.tenant, self.document.id)


def first_versions(docs: list[Doc]) -> dict[tuple[str, str], OrderKey]:
    """Order key of each (tenant, id)'s first version in the batch.

    An index point with that key is stale for every document after that order key: the batch's own
    version supersedes it (and after a batch boundary the index would hold only that one).
    """
    first: dict[tuple[str, str], OrderKey] = {}
    for doc in docs:
        first.setdefault(doc.key, doc.order)
    return first


def invisible(neighbour: Candidate, doc: Doc, first_version: dict[tuple[str, str], OrderKey]) -> bool:
    """Neighbours the document must not match: itself, later posts and posts past its retention (the
    index should not return those; checked again because the guarantee matters), and stale versions of
    ids in the batch."""
    if neighbour.doc_id == doc.document.id or neighbour.order >= doc.order:
        return True
    if doc.floor is not None and neighbour.order[0] < doc.floor:
        return True  # past its retention (the index should not return it either)
    batch_order = first_version.get((doc.document.tenant, neighbour.doc_id))
    return batch_order is not None and batch_order < doc.order


def exact_path(
    docs: list[Doc], visible: np.ndarray, index: VectorIndex, first_version: dict[tuple[str, str], OrderKey]
) -> None:
    """Exact fast path: the earliest visible document with the same text hash, from the index or the batch."""
    if not docs:
        return
    hits = index.find_hashes(
        [
            HashQuery(d.document.tenant, d.text_hash, before=d.order, doc_id=d.document.id, after_ts=d.floor)
            for d in docs
        ]
    )
    in_batch = exact_in_batch(
        visible, [d.text_hash for d in docs], [d.order for d in docs], [d.document.id for d in docs]
    )
    for doc, hit, position in zip(docs, hits, in_batch, strict=True):
        options: list[tuple[OrderKey, str, int | None]] = []
        if hit is not None and not invisible(hit, doc, first_version):
            options.append((hit.order, hit.doc_id, None))
        if position is not None:
            options.append((docs[position].order, docs[position].document.id, position))
        if options:
            order, doc_id, doc.exact_in_batch = min(options, key=lambda o: (o[0], o[1]))
            doc.exact = Candidate(doc_id, 1.0, order, "exact")


Texts = dict[tuple[str, str, OrderKey], str]
"""A candidate's text by (tenant, id, order key): what the verifier reads beside the post."""
Fetched = dict[tuple[str, str], StoredVector]
"""The points a batch has read from the index, by (tenant, id): later stages look there before asking
the index again."""


def lookup(index: VectorIndex, fetched: Fetched, keys: Sequence[tuple[str, str]]) -> Fetched:
    """The stored points of ``keys``: those the batch read already, the rest in one fetch (kept)."""
    missing = sorted({key for key in keys if key not in fetched})
    if missing:
        fetched.update(index.fetch(missing))
    return {key: fetched[key] for key in keys if key in fetched}


def text_hashes(
    docs: list[Doc], index: VectorIndex, fetched: Fetched
) -> Callable[[str, Sequence[str]], dict[str, str]]:
    """Candidates' text hashes (what ``feedback.screen`` matches verdicts by): a batch document's own,
    else the stored point's (read by the search)."""
    in_batch = {d.key: d.text_hash for d in docs}

    def hashes(tenant: str, ids: Sequence[str]) -> dict[str, str]:
        found = {i: in_batch[(tenant, i)] for i in ids if (tenant, i) in in_batch}
        stored = lookup(index, fetched, [(tenant, i) for i in ids if i not in found])
        return found | {doc_id: point.text_hash for (_, doc_id), point in stored.items()}

    return hashes


def candidates(
    docs: list[Doc],
    visible: np.ndarray,
    index: VectorIndex,
    first_version: dict[tuple[str, str], OrderKey],
    k: int,
    fetched: Fetched,
) -> tuple[list[list[Candidate]], Texts]:
    """Per document, its ranked top-k: the exact match alone, or batch + index neighbours merged; and
    the texts of the candidates that have one (every batch document; index points that kept theirs).

    An opaque document (no token the model knows: its vector says nothing about it) neither searches
    nor is found by similarity; it still repeats, and is repeated by, the same text exactly.
    """
    texts: Texts = {(d.document.tenant, d.document.id, d.order): d.document.text for d in docs}
    if not docs:
        return [], texts
    matrix = np.stack([vector_of(d) for d in docs])
    sims = similarities(matrix)
    opaque = np.array([d.opaque for d in docs], dtype=bool)
    readable = visible & ~opaque[None, :] & ~opaque[:, None]
    searched = [i for i, d in enumerate(docs) if d.exact is None and not d.opaque]
    found = index_candidates([docs[i] for i in searched], index, first_version, k, texts, fetched)
    from_index = dict(zip(searched, found, strict=True))
    in_batch = batch_candidates(sims, readable, [d.order for d in docs], [d.document.id for d in docs], k)
    ranked = [
        [doc.exact]
        if doc.exact is not None
        else merge_top_k(in_batch[i] + from_index.get(i, []), k)  # batch wins an id
        for i, doc in enumerate(docs)
    ]
    return ranked, texts


def index_candidates(
    docs: list[Doc],
    index: VectorIndex,
    first_version: dict[tuple[str, str], OrderKey],
    k: int,
    texts: Texts,
    fetched: Fetched,
) -> list[list[Candidate]]:
    """One batched search, then the neighbours that can reach the top k rescored from their stored
    vectors (see ``decide``); their stored texts go into ``texts``."""
    if not docs or k <= 0:
        return [[] for _ in docs]
    queries = [
        Query(vector_of(d), d.document.tenant, before=d.order, doc_id=d.document.id, after_ts=d.floor)
        for d in docs
    ]
    results = index.search(queries, k * TIE_MARGIN)
    kept = [
        [n for n in neighbours if not invisible(n, doc, first_version)]
        for doc, neighbours in zip(docs, results, strict=True)
    ]
    found: list[list[Candidate]] = [[] for _ in docs]
    todo = list(enumerate(kept))  # each list best first, as the index port returns them
    while todo:
        wanted = {i: contenders(neighbours, k - len(found[i])) for i, neighbours in todo}
        keys = sorted({(docs[i].document.tenant, n.doc_id) for i, chosen in wanted.items() for n in chosen})
        lookup(index, fetched, keys)  # what it reads is kept in ``fetched``
        rest = []
        for i, neighbours in todo:
            chosen = wanted[i]
            doc = docs[i]
            for n in chosen:
                vector = fetched.get((doc.document.tenant, n.doc_id))
                if vector is not None and vector.opaque:
                    continue  # its vector says nothing about it: only the exact path may match it
                score = n.score if vector is None else cosine(vector_of(doc), vector.vector)
                found[i].append(Candidate(n.doc_id, clamp_score(score), n.order, "index"))
                if vector is not None and vector.text is not None:
                    texts[(doc.document.tenant, n.doc_id, n.order)] = vector.text
            if len(found[i]) < k and len(chosen) < len(neighbours):
                rest.append((i, neighbours[len(chosen) :]))  # opaque points took places: read further
        todo = rest
    return found


RESCORE_MARGIN = 1e-5
"""How far below the k-th neighbour's index score a neighbour is still read and rescored: the index's
float32 scores differ from the float64 rescoring by about 1e-7, so one this far below cannot overtake."""


def contenders(neighbours: list[Candidate], places: int) -> list[Candidate]:
    """The leading neighbours (best index score first) that can still take one of ``places`` places once
    rescored: the first ``places`` and every one within ``RESCORE_MARGIN`` of the last of them. The others
    are never read: reading and rescoring a point costs more than searching for it."""
    if places <= 0 or len(neighbours) <= places:
        return neighbours if places > 0 else []
    floor = neighbours[places - 1].score - RESCORE_MARGIN
    cut = places
    while cut < len(neighbours) and neighbours[cut].score >= floor:
        cut += 1
    return neighbours[:cut]


def verify(
    docs: list[Doc],
    ranked: list[list[Candidate]],
    texts: Texts,
    policy: Policy,
    verifier: Verifier | None,
) -> list[dict[int, float]]:
    """The verifier's scores, per document by candidate rank: one call for the whole batch, only for
    candidates in the policy's band whose text is known. A replayed document keeps its first decision,
    so it is not verified again."""
    jobs: list[tuple[int, int, tuple[str, str]]] = []
    if verifier is not None and policy.verifies:
        for i, (doc, candidates) in enumerate(zip(docs, ranked, strict=True)):
            if doc.first is not None or doc.opaque:
                continue
            for rank in policy.to_verify(candidates):
                earlier = texts.get((doc.document.tenant, candidates[rank].doc_id, candidates[rank].order))
                if earlier is not None:
                    jobs.append((i, rank, (doc.document.text, earlier)))
    verified: list[dict[int, float]] = [{} for _ in docs]
    if jobs and verifier is not None:
        scores = np.asarray(verifier.score([pair for _, _, pair in jobs]), dtype=np.float64)
        if scores.shape != (len(jobs),):
            raise ValueError(f"verifier returned {scores.shape}, expected {(len(jobs),)}")
        for (i, rank, _), score in zip(jobs, scores.tolist(), strict=True):
            verified[i][rank] = float(score)
    return verified


def vector_of(doc: Doc) -> np.ndarray:
    if doc.vector is None:  # _vectors gives every document one; this is a bug, not bad input
        raise AssertionError(f"document at {doc.order} has no vector")
    return doc.vector
