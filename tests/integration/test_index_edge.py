"""Qdrant Edge specifics the contract cannot state: crashes, the lock, leftovers, a failing optimiser.

The crash tests run the index in a child interpreter that SIGKILLs itself, the way a worker dies
under the OOM killer or ``kill -9``: no ``flush``, no ``close``, no atexit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import structlog

from worker.core.errors import IndexMismatchError
from worker.core.ports import IndexPoint, Query
from worker.index import edge_optimize
from worker.index.edge import EdgeIndex

pytestmark = pytest.mark.integration

DIM = 8
ROOT = Path(__file__).resolve().parents[2]

# Upserts N points (and optionally starts a background optimisation first), prints the optimiser's
# pid, then dies without flushing.
CRASHER = """
import os, signal, sys
import numpy as np
from pathlib import Path
from worker.core.ports import IndexPoint
from worker.index.edge import EdgeIndex

path, n, optimize = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
index = EdgeIndex(path, optimize_every=100, indexing_threshold_kb=1)
index.ensure(8, "m1")
rng = np.random.default_rng(0)
def batch(lo, hi):
    return [IndexPoint(f"d{i}", "a", rng.standard_normal(8).astype(np.float32), f"h{i}", (1, i), "m1")
            for i in range(lo, hi)]
half = n // 2
index.upsert(batch(0, half))
if optimize:
    index.maintain()
    print(index._job.proc.pid, flush=True)
index.upsert(batch(half, n))
index.delete("a", ["d0"])
os.kill(os.getpid(), signal.SIGKILL)
"""


def crash(path: Path, n: int, *, optimize: bool) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", CRASHER, str(path), str(n), "1" if optimize else "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""


def gone(pid: int) -> bool:
    """No such process, or a zombie nobody has reaped yet (PID 1 in a container may not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def points(n: int, seed: int = 0) -> list[IndexPoint]:
    rng = np.random.default_rng(seed)
    return [
        IndexPoint(f"d{i}", "a", rng.standard_normal(DIM).astype(np.float32), f"h{i}", (1, i), "m1")
        for i in range(n)
    ]


def test_upserts_survive_sigkill_without_flush(tmp_path: Path) -> None:
    """The WAL (on by default) holds every acknowledged update; the process dying loses none."""
    crash(tmp_path / "index", 1000, optimize=False)
    index = EdgeIndex(tmp_path / "index")
    index.ensure(DIM, "m1")
    assert index.count() == 999  # 1000 upserted, d0 deleted
    index.close()


def test_sigkill_during_optimisation_keeps_everything_and_cleans_up(tmp_path: Path) -> None:
    path = tmp_path / "index"
    optimiser = int(crash(path, 400, optimize=True))
    deadline = time.monotonic() + 10
    while not gone(optimiser):  # PR_SET_PDEATHSIG: the child dies with the worker
        assert time.monotonic() < deadline, "optimiser outlived the worker"
        time.sleep(0.05)
    assert json.loads((path / "twinflag-index.json").read_text())["shard"] == "shard-0"
    index = EdgeIndex(path)
    index.ensure(DIM, "m1")
    assert index.count() == 399
    assert sorted(p.name for p in path.glob("shard-*")) == ["shard-0"]
    index.close()


def test_a_second_process_cannot_open_the_same_index(tmp_path: Path) -> None:
    first = EdgeIndex(tmp_path / "index")
    first.ensure(DIM, "m1")
    with pytest.raises(RuntimeError, match="open in another process"):
        EdgeIndex(tmp_path / "index").ensure(DIM, "m1")
    first.close()
    again = EdgeIndex(tmp_path / "index")
    again.ensure(DIM, "m1")  # the lock went with close()
    again.close()


def test_refuses_shard_directories_without_a_sidecar(tmp_path: Path) -> None:
    (tmp_path / "index" / "shard-0").mkdir(parents=True)
    with pytest.raises(IndexMismatchError, match=r"no twinflag-index\.json"):
        EdgeIndex(tmp_path / "index").ensure(DIM, "m1")


def child(code: str) -> Callable[[Path, int], list[str]]:
    """An optimiser child that runs ``code`` (with the copy and the worker's pid as its argv)."""
    return lambda target, parent_pid: [sys.executable, "-c", code, str(target), str(parent_pid)]


def test_a_failed_optimisation_leaves_the_live_shard_in_charge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(edge_optimize, "child_command", child("import sys; sys.exit(7)"))
    index = EdgeIndex(tmp_path / "index", optimize_every=10)
    index.ensure(DIM, "m1")
    index.upsert(points(50))
    with structlog.testing.capture_logs() as logs:
        index.maintain()
        assert index.optimizing
        index._job.proc.wait()  # type: ignore[union-attr]
        index.maintain()
    assert not index.optimizing
    failed = [e for e in logs if e["event"] == "index.optimize.failed"]
    assert failed
    assert failed[0]["returncode"] == 7
    assert sorted(p.name for p in (tmp_path / "index").glob("shard-*")) == ["shard-0"]
    assert index.count() == 50
    (got,) = index.search([Query(points(50)[7].vector, "a", (2, 0), "q")], 1)
    assert got[0].doc_id == "d7"
    index.close()


def test_close_stops_a_running_optimisation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(edge_optimize, "child_command", child("import time; time.sleep(60)"))
    index = EdgeIndex(tmp_path / "index", optimize_every=10)
    index.ensure(DIM, "m1")
    index.upsert(points(20))
    index.maintain()
    proc = index._job.proc  # type: ignore[union-attr]
    started = time.monotonic()
    index.close()
    assert time.monotonic() - started < 5
    assert proc.poll() is not None
    assert sorted(p.name for p in (tmp_path / "index").glob("shard-*")) == ["shard-0"]


def test_an_unusable_copy_is_dropped_and_the_stream_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = "import os, sys; os.remove(os.path.join(sys.argv[1], 'edge_config.json'))"
    monkeypatch.setattr(edge_optimize, "child_command", child(broken))
    index = EdgeIndex(tmp_path / "index", optimize_every=10)
    index.ensure(DIM, "m1")
    index.upsert(points(30))
    with structlog.testing.capture_logs() as logs:
        index.maintain()
        index._job.proc.wait()  # type: ignore[union-attr]
        index.maintain()
    assert [e["event"] for e in logs if e["event"].startswith("index.optimize")] == [
        "index.optimize.started",
        "index.optimize.swap_failed",
    ]
    assert not index.optimizing
    assert index.describe()["shard"] == "shard-0"
    assert index.count() == 30
    index.close()


def test_searches_past_every_stored_point_drop_the_order_condition_and_others_keep_it(tmp_path: Path) -> None:
    """The index remembers its latest order key (across a reopen); a query earlier than it, as in a
    replay, still sees only earlier points."""
    vector = np.zeros(4, dtype=np.float32)
    vector[0] = 1.0
    orders = {"a": (3, 0), "b": (5, 1), "c": (5, 7)}
    index = EdgeIndex(tmp_path / "idx")
    index.ensure(4, "m")
    index.upsert([IndexPoint(doc, "t", vector, doc, order, "m") for doc, order in orders.items()])
    index.close()
    index = EdgeIndex(tmp_path / "idx")
    index.ensure(4, "m")
    try:
        assert index._latest == (5, 7)  # the bound the filter is chosen by
        replayed, fresh = index.search([Query(vector, "t", (5, 3), "x"), Query(vector, "t", (9, 0), "x")], 10)
        assert sorted(c.doc_id for c in replayed) == ["a", "b"]
        assert sorted(c.doc_id for c in fresh) == ["a", "b", "c"]
        index.upsert([IndexPoint("d", "t", vector, "d", (9, 5), "m")])
        (after,) = index.search([Query(vector, "t", (9, 1), "x")], 10)
        assert sorted(c.doc_id for c in after) == ["a", "b", "c"]
    finally:
        index.close()


def test_a_quantised_index_finds_what_the_float_one_finds_with_float_scores(tmp_path: Path) -> None:
    """The int8 copy only steers the graph walk: near copies come back first, as from an index without
    it, and with their float32 cosine (rescored), not an int8 approximation."""
    rng = np.random.default_rng(3)
    stored = rng.standard_normal((3000, 64)).astype(np.float32)
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    picked = rng.choice(len(stored), 40, replace=False)
    noise = rng.standard_normal((40, 64)).astype(np.float32) * 0.05
    queries = stored[picked] + noise
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    points = [IndexPoint(f"p{i}", "t", v, f"h{i}", (1, i), "m") for i, v in enumerate(stored)]
    found = {}
    for scalar in (True, False):
        index = EdgeIndex(tmp_path / f"idx-{scalar}", indexing_threshold_kb=1, scalar_quantization=scalar)
        index.ensure(64, "m")
        try:
            index.upsert(points)
            index.optimize()
            assert index.describe()["indexed_vectors"] == len(stored)  # the graph, not a plain scan
            rows = index.search([Query(q, "t", (2, 0), "query") for q in queries], 5)
            found[scalar] = [row[0].doc_id for row in rows]
            for row, query in zip(rows, queries, strict=True):
                exact = stored[int(row[0].doc_id[1:])] @ query
                assert row[0].score == pytest.approx(float(exact), abs=1e-6)
        finally:
            index.close()
        config = json.loads(next((tmp_path / f"idx-{scalar}").glob("shard-*/edge_config.json")).read_text())
        assert (config.get("quantization_config") is not None) is scalar
    assert found[True] == found[False] == [f"p{i}" for i in picked]


def test_an_index_built_without_quantisation_takes_it_up_at_its_next_optimisation(tmp_path: Path) -> None:
    """Upgrading keeps the points: the old float segments are searched as they are until the optimiser
    rebuilds them with their int8 copy."""
    rng = np.random.default_rng(4)
    stored = rng.standard_normal((2000, 32)).astype(np.float32)
    points = [IndexPoint(f"p{i}", "t", v, f"h{i}", (1, i), "m") for i, v in enumerate(stored)]
    path = tmp_path / "idx"
    old = EdgeIndex(path, indexing_threshold_kb=1, scalar_quantization=False)
    old.ensure(32, "m")
    old.upsert(points)
    old.optimize()
    old.close()
    assert not list(path.glob("shard-*/segments/*/vector_storage/quantized.data"))
    new = EdgeIndex(path, indexing_threshold_kb=1)
    new.ensure(32, "m")
    try:
        assert new.count() == len(points)
        new.optimize()
        assert list(path.glob("shard-*/segments/*/vector_storage/quantized.data"))
        (row,) = new.search([Query(stored[7], "t", (2, 0), "q")], 1)
        assert row[0].doc_id == "p7"
    finally:
        new.close()
