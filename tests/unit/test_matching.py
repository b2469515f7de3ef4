"""Which index neighbours the batch step reads back and rescores: only those that can reach the top k."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from worker.core.matching import Doc, contenders, index_candidates
from worker.core.messages import Document
from worker.core.ports import Candidate, Query, StoredVector
from worker.core.records import Record

DIM = 4


def unit(*values: float) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


QUERY = unit(1, 0, 0, 0)


class ScriptedIndex:
    """Returns the given neighbours for every query and records which points the step fetches."""

    def __init__(self, stored: dict[str, tuple[np.ndarray, bool]]) -> None:
        self.stored = stored  # id -> (vector, opaque)
        self.fetched: list[list[str]] = []

    def search(self, queries: Sequence[Query], k: int) -> list[list[Candidate]]:
        found = [
            Candidate(doc_id, float(vector @ QUERY), (1, i), "index")
            for i, (doc_id, (vector, _)) in enumerate(self.stored.items())
        ]
        return [sorted(found, key=lambda c: -c.score)[:k] for _ in queries]

    def fetch(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], StoredVector]:
        self.fetched.append([doc_id for _, doc_id in keys])
        return {
            (tenant, doc_id): StoredVector(
                doc_id, tenant, "h", self.stored[doc_id][0], opaque=self.stored[doc_id][1]
            )
            for tenant, doc_id in keys
        }


def doc() -> Doc:
    record = Record("in", 0, 99, 5, b"q", b"{}")
    return Doc(record, Document(id="q", text="q"), (5, 99), "hq", vector=QUERY)


def neighbours(n: int, opaque: Sequence[int] = ()) -> dict[str, tuple[np.ndarray, bool]]:
    """n stored points, p0 nearest the query, p(n-1) farthest."""
    return {f"p{i}": (unit(1, 0.1 * (i + 1), 0, 0), i in opaque) for i in range(n)}


def test_only_the_top_k_are_read_back_and_the_ranking_is_unchanged() -> None:
    index = ScriptedIndex(neighbours(10))
    (found,) = index_candidates([doc()], index, {}, 3, {}, {})  # type: ignore[arg-type]
    assert [c.doc_id for c in found] == ["p0", "p1", "p2"]
    assert index.fetched == [["p0", "p1", "p2"]]  # not the 6 asked for tie-breaking
    assert found[0].score == round(
        float(np.dot(QUERY.astype(np.float64), unit(1, 0.1, 0, 0).astype(np.float64))), 6
    )


def test_an_opaque_neighbour_among_the_best_makes_the_step_read_further() -> None:
    index = ScriptedIndex(neighbours(10, opaque=[1]))
    (found,) = index_candidates([doc()], index, {}, 3, {}, {})  # type: ignore[arg-type]
    assert [c.doc_id for c in found] == ["p0", "p2", "p3"]
    assert index.fetched == [["p0", "p1", "p2"], ["p3"]]


def test_neighbours_within_the_rescoring_margin_of_the_last_place_are_read_too() -> None:
    near = [Candidate(f"t{i}", s, (1, i), "index") for i, s in enumerate([0.9, 0.8, 0.8 - 1e-6, 0.7])]
    assert [c.doc_id for c in contenders(near, 2)] == ["t0", "t1", "t2"]
    assert contenders(near, 0) == []
    assert contenders(near, 9) == near
