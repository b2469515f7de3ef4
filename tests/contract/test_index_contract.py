"""One contract for every ``VectorIndex`` backend, checked against a small reference model in numpy.

Run against the in-memory reference backend, Qdrant Edge on disk, qdrant-client's local mode, and a
real Qdrant server when ``QDRANT_URL`` is set — the way qdrant-client holds its local mode against a
server. Data is small (dim 16, a few hundred points), so every backend searches exactly and results
must match the model.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.core.errors import IndexMismatchError
from worker.core.ports import Candidate, Expiry, HashQuery, IndexPoint, Query, VectorIndex
from worker.core.records import OrderKey
from worker.index.edge import EdgeIndex
from worker.index.memory import MemoryIndex
from worker.index.qdrant import QdrantIndex

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

DIM = 16
MODEL = "m1"

# Local mode says that it ignores payload indexes and search params; that is expected here.
LOCAL_MODE_WARNINGS = [
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning"),
    pytest.mark.filterwarnings("ignore:Local mode performs exact:UserWarning"),
]


def unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def point(
    doc_id: str, vector: np.ndarray, *, tenant: str = "a", order: OrderKey = (0, 0), text_hash: str = ""
) -> IndexPoint:
    return IndexPoint(
        doc_id=doc_id,
        tenant=tenant,
        vector=vector,
        text_hash=text_hash or f"hash-{doc_id}",
        order=order,
        model=MODEL,
        created_at="2024-01-01T00:00:00Z",
    )


@dataclass
class Model:
    """What the index should hold and answer: the contract, written as plain Python."""

    points: dict[tuple[str, str], IndexPoint] = field(default_factory=dict)

    def upsert(self, points: list[IndexPoint]) -> None:
        self.points.update({(p.tenant, p.doc_id): p for p in points})

    def delete(self, tenant: str | None, doc_ids: list[str]) -> int:
        gone = [key for key in self.points if key[1] in doc_ids and tenant in (None, key[0])]
        for key in gone:
            del self.points[key]
        return len(gone)

    def expire(self, expiry: Expiry) -> int:
        gone = [
            key
            for key, p in self.points.items()
            if p.order[0] < expiry.before_ts
            and expiry.tenant in (None, p.tenant)
            and p.tenant not in expiry.spared
        ]
        for key in gone:
            del self.points[key]
        return len(gone)

    def candidates(self, q: Query | HashQuery) -> list[IndexPoint]:
        return [
            p
            for p in self.points.values()
            if p.tenant == q.tenant
            and p.order < q.before
            and p.doc_id != q.doc_id
            and (q.after_ts is None or p.order[0] >= q.after_ts)
        ]

    def search(self, q: Query, k: int) -> list[str]:
        scored = [(-float(p.vector @ q.vector), p.order, p.doc_id) for p in self.candidates(q)]
        return [doc for _, _, doc in sorted(scored)[:k]]

    def find_hash(self, q: HashQuery) -> str | None:
        same = [p for p in self.candidates(q) if p.text_hash == q.text_hash]
        return min(same, key=lambda p: (p.order, p.doc_id)).doc_id if same else None


@dataclass
class Backend:
    name: str
    make: Callable[[], VectorIndex]  # a new handle on the same store: opening it again is a reload
    handles: list[VectorIndex] = field(default_factory=list)

    def open(self) -> VectorIndex:
        index = self.make()
        self.handles.append(index)
        return index

    def ready(self) -> VectorIndex:
        index = self.open()
        index.ensure(DIM, MODEL)
        return index


@pytest.fixture(
    params=[
        "memory",
        "edge",
        pytest.param("qdrant-local", marks=LOCAL_MODE_WARNINGS),
        pytest.param("qdrant-server", marks=LOCAL_MODE_WARNINGS),
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    collection = f"contract-{uuid.uuid4().hex[:12]}"
    if request.param == "memory":  # the reference backend: one store, every handle the same object
        store = MemoryIndex()
        yield Backend("memory", lambda: store)
        return
    if request.param == "edge":
        # Tiny thresholds so maintain() really builds HNSW segments out of a few hundred points.
        b = Backend(
            "edge", lambda: EdgeIndex(tmp_path / "index", optimize_every=100, indexing_threshold_kb=1)
        )
        yield b
        for handle in b.handles:
            handle.close()
        return
    from qdrant_client import QdrantClient

    if request.param == "qdrant-local":
        client = QdrantClient(":memory:")
    else:
        url = os.environ.get("QDRANT_URL")
        if not url:
            pytest.skip("QDRANT_URL not set: no real Qdrant server to hold the contract against")
        client = QdrantClient(url=url, api_key=os.environ.get("QDRANT_API_KEY"), timeout=30)
    b = Backend(request.param, lambda: QdrantIndex(client, collection))
    yield b
    for handle in b.handles:
        handle.close()
    if request.param == "qdrant-server":
        client.delete_collection(collection)
    client.close()


@pytest.fixture
def ready(backend: Backend) -> VectorIndex:
    """One ensured index per test (hypothesis examples share it: the fixture is not re-run per example)."""
    return backend.ready()


def wait_for_maintenance(index: VectorIndex, timeout_s: float = 60.0) -> None:
    """Drive maintain() until a background optimisation (Edge) has been swapped in."""
    deadline = time.monotonic() + timeout_s
    while getattr(index, "optimizing", False):
        assert time.monotonic() < deadline, "optimisation did not finish in time"
        time.sleep(0.05)
        index.maintain()


class TestVectorIndexContract:
    # -- ensure -------------------------------------------------------------------------------------

    def test_ensure_creates_then_accepts_the_same_space(self, backend: Backend) -> None:
        index = backend.ready()
        assert index.count() == 0
        index.ensure(DIM, MODEL)  # idempotent on an open index
        index.close()
        backend.ready()  # and on a reopened one

    def test_ensure_refuses_another_dimension(self, backend: Backend) -> None:
        backend.ready().close()
        with pytest.raises(IndexMismatchError) as err:
            backend.open().ensure(DIM * 2, MODEL)
        assert str(DIM) in str(err.value)
        assert str(DIM * 2) in str(err.value)

    def test_ensure_refuses_another_model_naming_both(self, backend: Backend) -> None:
        backend.ready().close()
        with pytest.raises(IndexMismatchError) as err:
            backend.open().ensure(DIM, "m2-other")
        assert MODEL in str(err.value)
        assert "m2-other" in str(err.value)

    # -- writes -------------------------------------------------------------------------------------

    def test_upsert_is_idempotent(self, backend: Backend) -> None:
        rng = np.random.default_rng(1)
        index = backend.ready()
        p = point("d1", unit(rng), order=(1, 0))
        index.upsert([p])
        index.upsert([p])
        moved = point("d1", unit(rng), order=(1, 0))
        index.upsert([moved])  # same (tenant, id): overwrites
        assert index.count() == 1
        stored = index.fetch([("a", "d1")])[("a", "d1")].vector
        np.testing.assert_allclose(stored, moved.vector, atol=1e-6)

    def test_upsert_refuses_order_keys_floats_cannot_compare(self, backend: Backend) -> None:
        index = backend.ready()
        with pytest.raises(ValueError, match="2\\*\\*53"):
            index.upsert([point("d1", unit(np.random.default_rng(0)), order=(2**53, 0))])

    # -- search -------------------------------------------------------------------------------------

    def test_search_matches_the_model(self, backend: Backend) -> None:
        """Only earlier points of the same tenant, never itself, best first, at most k."""
        rng = np.random.default_rng(7)
        index, model = backend.ready(), Model()
        # ts has few values so that (ts, pos) ties on ts are common and pos decides.
        points = [
            point(
                f"d{i}",
                unit(rng),
                tenant="ab"[i % 2],
                order=(int(rng.integers(0, 4)), int(rng.integers(0, 30))),
            )
            for i in range(80)
        ]
        index.upsert(points)
        model.upsert(points)
        queries = [Query(p.vector, p.tenant, p.order, p.doc_id) for p in points[:20]]
        queries.append(Query(points[0].vector, "a", (99, 0), points[0].doc_id))  # later than all, not itself
        results = index.search(queries, 5)
        assert len(results) == len(queries)
        for q, got in zip(queries, results, strict=True):
            assert [n.doc_id for n in got] == model.search(q, 5)
            scores = [n.score for n in got]
            assert scores == sorted(scores, reverse=True)
            for n in got:
                stored = model.points[(q.tenant, n.doc_id)]
                assert n.order == stored.order
                assert n.order < q.before
                assert n.score == pytest.approx(float(stored.vector @ q.vector), abs=1e-5)

    def test_search_never_returns_the_query_itself(self, backend: Backend) -> None:
        rng = np.random.default_rng(3)
        index = backend.ready()
        v = unit(rng)
        index.upsert([point("self", v, order=(1, 1)), point("other", unit(rng), order=(1, 2))])
        (got,) = index.search([Query(v, "a", (5, 0), "self")], 10)
        assert [n.doc_id for n in got] == ["other"]
        (best,) = index.search([Query(v, "a", (5, 0), "self")], 1)  # its own point is nearest: k still met
        assert [n.doc_id for n in best] == ["other"]

    def test_search_is_strict_about_earlier(self, backend: Backend) -> None:
        rng = np.random.default_rng(4)
        index = backend.ready()
        v = unit(rng)
        index.upsert([point("same-key", v, order=(5, 3)), point("just-before", v, order=(5, 2))])
        (got,) = index.search([Query(v, "a", (5, 3), "new")], 10)
        assert [n.doc_id for n in got] == ["just-before"]

    def test_tenants_are_isolated(self, backend: Backend) -> None:
        rng = np.random.default_rng(5)
        index = backend.ready()
        v = unit(rng)
        index.upsert([point("in-b", v, tenant="b", text_hash="h"), point("in-a", unit(rng), tenant="a")])
        (got,) = index.search([Query(v, "a", (9, 0), "q")], 10)
        assert [n.doc_id for n in got] == ["in-a"]
        assert index.find_hashes([HashQuery("a", "h", (9, 0), "q")]) == [None]

    def test_empty_batches(self, backend: Backend) -> None:
        index = backend.ready()
        assert index.search([], 5) == []
        assert index.find_hashes([]) == []
        assert index.fetch([]) == {}
        assert index.delete("a", []) == 0
        index.upsert([])
        (got,) = index.search([Query(unit(np.random.default_rng(0)), "a", (1, 0), "q")], 5)
        assert got == []

    # -- find_hashes --------------------------------------------------------------------------------

    def test_find_hashes_returns_the_earliest_earlier_point(self, backend: Backend) -> None:
        rng = np.random.default_rng(6)
        index = backend.ready()
        index.upsert(
            [
                point("A", unit(rng), order=(5, 1), text_hash="h"),
                point("B", unit(rng), order=(5, 0), text_hash="h"),
                point("C", unit(rng), order=(3, 9), text_hash="h"),
                point("D", unit(rng), order=(7, 0), text_hash="h"),
                point("E", unit(rng), tenant="b", order=(0, 0), text_hash="h"),
                point("F", unit(rng), order=(0, 0), text_hash="other"),
            ]
        )
        got = index.find_hashes(
            [
                HashQuery("a", "h", (9, 9), "new"),
                HashQuery("a", "h", (3, 9), "x"),  # C is not strictly earlier
                HashQuery("a", "h", (9, 9), "C"),  # never itself: the next earliest
                HashQuery("a", "h", (5, 1), "y"),
                HashQuery("b", "h", (9, 9), "z"),
                HashQuery("a", "nope", (9, 9), "w"),
            ]
        )
        assert got == [
            Candidate("C", 1.0, (3, 9), "exact"),
            None,
            Candidate("B", 1.0, (5, 0), "exact"),
            Candidate("C", 1.0, (3, 9), "exact"),
            Candidate("E", 1.0, (0, 0), "exact"),
            None,
        ]

    def test_find_hashes_breaks_many_ties_on_ts_by_pos(self, backend: Backend) -> None:
        """A bulk-loaded corpus has ts=0 everywhere: far more ties than the first probe sees.

        Ties come back from the index in no useful order, so with 40 per tenant the earliest one is
        outside the first probe in most tenants: only the second (pos-ordered) stage finds it.
        """
        rng = np.random.default_rng(8)
        index = backend.ready()
        tenants = [f"t{i}" for i in range(4)]
        for tenant in tenants:
            lines = list(range(40))
            rng.shuffle(lines)
            index.upsert(
                [point(f"line{i}", unit(rng), tenant=tenant, order=(0, i), text_hash="spam") for i in lines]
            )
        queries = [HashQuery(t, "spam", (1, 0), me) for t in tenants for me in ("new", "line0")]
        expected = [
            Candidate(winner, 1.0, (0, int(winner[4:])), "exact")
            for _ in tenants
            for winner in ("line0", "line1")
        ]
        assert index.find_hashes(queries) == expected

    # -- fetch --------------------------------------------------------------------------------------

    def test_fetch_returns_stored_vectors_and_leaves_out_absent_keys(self, backend: Backend) -> None:
        rng = np.random.default_rng(9)
        index = backend.ready()
        p1, p2 = point("d1", unit(rng), tenant="a"), point("d2", unit(rng), tenant="b")
        p2 = replace(p2, decision='{"flagged":false,"matches":[]}')  # comes back for replays
        index.upsert([p1, p2])
        got = index.fetch([("a", "d1"), ("b", "d2"), ("a", "missing"), ("b", "d1"), ("a", "d1")])
        assert set(got) == {("a", "d1"), ("b", "d2")}
        for p in (p1, p2):
            stored = got[(p.tenant, p.doc_id)]
            assert (stored.tenant, stored.doc_id, stored.text_hash) == (p.tenant, p.doc_id, p.text_hash)
            assert stored.decision == p.decision
            assert stored.vector.dtype == np.float32
            np.testing.assert_allclose(stored.vector, p.vector, atol=1e-6)

    # -- delete -------------------------------------------------------------------------------------

    def test_delete_in_one_tenant_stops_matching_there(self, backend: Backend) -> None:
        rng = np.random.default_rng(10)
        index = backend.ready()
        v = unit(rng)
        index.upsert([point("X", v, tenant=t, order=(1, 0), text_hash="hx") for t in "ab"])
        assert index.delete("a", ["X", "never-there"]) == 1
        assert index.delete("a", ["X"]) == 0
        assert index.count() == 1
        got = index.search([Query(v, t, (9, 0), "q") for t in "ab"], 5)
        assert [[n.doc_id for n in row] for row in got] == [[], ["X"]]
        hashes = index.find_hashes([HashQuery(t, "hx", (9, 0), "q") for t in "ab"])
        assert hashes == [None, Candidate("X", 1.0, (1, 0), "exact")]
        assert set(index.fetch([("a", "X"), ("b", "X")])) == {("b", "X")}

    def test_delete_without_tenant_removes_the_id_everywhere(self, backend: Backend) -> None:
        rng = np.random.default_rng(11)
        index = backend.ready()
        index.upsert([point(d, unit(rng), tenant=t) for t, d in itertools.product("ab", ["Y", "keep"])])
        assert index.delete(None, ["Y", "nope"]) == 2
        assert index.count() == 2
        assert set(index.fetch([(t, d) for t, d in itertools.product("ab", ["Y", "keep"])])) == {
            ("a", "keep"),
            ("b", "keep"),
        }
        assert index.find_hashes([HashQuery(t, "hash-Y", (9, 0), "q") for t in "ab"]) == [None, None]

    # -- retention ----------------------------------------------------------------------------------

    def test_a_retention_bound_hides_older_points_from_search_and_hash(self, backend: Backend) -> None:
        """A post far enough after an old one no longer matches it; a post within the window does.
        The bound holds with the read-in-order fast path too (queries later than every point)."""
        rng = np.random.default_rng(14)
        index = backend.ready()
        v = unit(rng)
        index.upsert(
            [
                point("old", v, order=(1_000, 5), text_hash="h"),
                point("edge", v, order=(4_000, 0), text_hash="h"),
                point("recent", v, order=(8_000, 0), text_hash="h"),
            ]
        )
        for before in ((9_000, 0), (10**9, 0)):
            got = index.search([Query(v, "a", before, "q"), Query(v, "a", before, "q", after_ts=4_000)], 10)
            assert [sorted(n.doc_id for n in row) for row in got] == [
                ["edge", "old", "recent"],
                ["edge", "recent"],  # the bound is inclusive: ts == after_ts still matches
            ]
            hashes = index.find_hashes(
                [
                    HashQuery("a", "h", before, "q"),
                    HashQuery("a", "h", before, "q", after_ts=1_001),
                    HashQuery("a", "h", before, "q", after_ts=8_001),
                ]
            )
            assert [c.doc_id if c else None for c in hashes] == ["old", "edge", None]
        (within,) = index.search([Query(v, "a", (5_000, 0), "q", after_ts=1_000)], 10)
        assert sorted(n.doc_id for n in within) == ["edge", "old"]

    def test_expire_removes_old_points_of_a_tenant_or_all_but_the_spared(self, backend: Backend) -> None:
        rng = np.random.default_rng(15)
        index = backend.ready()
        index.upsert(
            [
                point(f"{t}{ts}", unit(rng), tenant=t, order=(ts, 0), text_hash=f"h{ts}")
                for t in "abc"
                for ts in (1_000, 2_000, 3_000)
            ]
        )
        assert index.expire([]) == 0
        assert index.expire([Expiry(2_000, tenant="b")]) == 1  # b's own window
        assert index.expire([Expiry(3_000, spared=frozenset({"b"}))]) == 4  # a and c: 1,000 and 2,000
        assert index.expire([Expiry(3_000, spared=frozenset({"b"}))]) == 0  # gone already
        assert index.count() == 4
        kept = index.fetch([(t, f"{t}{ts}") for t in "abc" for ts in (1_000, 2_000, 3_000)])
        assert sorted(kept) == [("a", "a3000"), ("b", "b2000"), ("b", "b3000"), ("c", "c3000")]
        (got,) = index.search([Query(unit(rng), "a", (9_000, 0), "q")], 10)
        assert [n.doc_id for n in got] == ["a3000"]
        assert index.find_hashes([HashQuery("b", "h1000", (9_000, 0), "q")]) == [None]
        assert index.find_hashes([HashQuery("b", "h2000", (9_000, 0), "q")]) == [
            Candidate("b2000", 1.0, (2_000, 0), "exact")
        ]

    # -- durability and maintenance -----------------------------------------------------------------

    def test_reopen_keeps_points_and_config(self, backend: Backend) -> None:
        rng = np.random.default_rng(12)
        index = backend.ready()
        points = [point(f"d{i}", unit(rng), order=(1, i)) for i in range(10)]
        index.upsert(points)
        index.flush()
        index.close()
        again = backend.ready()
        assert again.count() == 10
        (got,) = again.search([Query(points[3].vector, "a", (2, 0), "q")], 1)
        assert got[0].doc_id == "d3"
        again.close()
        with pytest.raises(IndexMismatchError):
            backend.open().ensure(DIM + 1, MODEL)

    def test_maintain_then_search_is_still_right(self, backend: Backend) -> None:
        """Reads and writes while an optimisation runs, and after it is swapped in, match the model."""
        rng = np.random.default_rng(13)
        index, model = backend.ready(), Model()

        def check() -> None:
            queries = [Query(unit(rng), t, (10, 0), "q") for t in "ab" for _ in range(5)]
            assert [[n.doc_id for n in row] for row in index.search(queries, 5)] == [
                model.search(q, 5) for q in queries
            ]
            assert index.count() == len(model.points)

        first = [point(f"d{i}", unit(rng), tenant="ab"[i % 2], order=(i % 5, i)) for i in range(300)]
        index.upsert(first)
        model.upsert(first)
        index.maintain()  # Edge: copies the shard and starts the optimiser child
        late = [point(f"late{i}", unit(rng), tenant="ab"[i % 2], order=(5, i)) for i in range(20)]
        index.upsert(late)
        model.upsert(late)
        assert index.delete("a", ["d0"]) == model.delete("a", ["d0"]) == 1
        ts0 = Expiry(1, tenant="b")  # b's points at ts 0, journaled like the deletions
        assert index.expire([ts0]) == model.expire(ts0) == 30
        moved = [point("d1", unit(rng), tenant="b", order=(1, 1))]  # an overwrite, journaled too
        index.upsert(moved)
        model.upsert(moved)
        check()
        wait_for_maintenance(index)
        check()
        assert index.fetch([("a", "d0")]) == {}
        if isinstance(index, EdgeIndex):
            state = index.describe()
            assert state["shard"] == "shard-1"
            assert state["indexed_vectors"] > 0
        index.close()
        backend.ready()  # the swapped-in shard is what the sidecar names

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(data=st.data())
    def test_random_batches_match_the_model(self, ready: VectorIndex, data: st.DataObject) -> None:
        """Each example writes under a fresh tenant, so examples share one index without meeting."""
        index = ready
        tenant = uuid.uuid4().hex[:8]
        rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
        n = data.draw(st.integers(1, 25))
        orders = data.draw(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 6)), min_size=n, max_size=n))
        hashes = data.draw(st.lists(st.sampled_from("xyz"), min_size=n, max_size=n))
        points = [
            point(f"d{i}", unit(rng), tenant=tenant, order=o, text_hash=h)
            for i, (o, h) in enumerate(zip(orders, hashes, strict=True))
        ]
        model = Model()
        model.upsert(points)
        index.upsert(points)
        gone = data.draw(st.lists(st.sampled_from([p.doc_id for p in points]), max_size=3))
        assert index.delete(tenant, gone) == model.delete(tenant, gone)
        before = data.draw(st.tuples(st.integers(0, 4), st.integers(0, 7)))
        me = data.draw(st.sampled_from([p.doc_id for p in points] + ["new"]))
        after = data.draw(st.none() | st.integers(1, 4))  # a retention bound, or none
        q = Query(unit(rng), tenant, before, me, after_ts=after)
        (got,) = index.search([q], 4)
        assert [x.doc_id for x in got] == model.search(q, 4)
        hq = [HashQuery(tenant, h, before, me, after_ts=after) for h in "xyz"]
        assert [x.doc_id if x else None for x in index.find_hashes(hq)] == [model.find_hash(h) for h in hq]


def test_a_new_server_collection_gets_the_configured_shards_and_replicas() -> None:
    from qdrant_client import QdrantClient

    url = os.environ.get("QDRANT_URL")
    client = (
        QdrantClient(url=url, api_key=os.environ.get("QDRANT_API_KEY"), timeout=30)
        if url
        else QdrantClient(":memory:")
    )
    created = record_creates(client)
    collection = f"layout-{uuid.uuid4().hex[:12]}"
    index = QdrantIndex(client, collection, shard_number=2, replication_factor=1, write_consistency_factor=1)
    index.ensure(DIM, MODEL)
    assert (created["shard_number"], created["replication_factor"]) == (2, 1)
    assert created["write_consistency_factor"] == 1
    if url:  # a real server reports the layout back
        params = client.get_collection(collection).config.params
        assert (params.shard_number, params.replication_factor) == (2, 1)
        client.delete_collection(collection)
    assert _kwargs_of_default_collection()["shard_number"] is None  # unset: the server's default
    client.close()


def record_creates(client: QdrantClient) -> dict[str, object]:
    """The keyword arguments of the client's ``create_collection`` calls, filled in as they happen."""
    created: dict[str, object] = {}
    real_create = client.create_collection

    def create(*args: object, **kwargs: object) -> bool:
        created.update(kwargs)
        return real_create(*args, **kwargs)  # type: ignore[arg-type]

    client.create_collection = create  # type: ignore[method-assign]
    return created


def _kwargs_of_default_collection() -> dict[str, object]:
    """What ``create_collection`` gets when no layout is configured: the server's defaults apply."""
    from qdrant_client import QdrantClient

    client = QdrantClient(":memory:")
    created = record_creates(client)
    QdrantIndex(client, "plain").ensure(DIM, MODEL)
    client.close()
    return created
