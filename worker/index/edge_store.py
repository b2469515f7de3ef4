"""The embedded index's directory on disk: its sidecar, its lock, its shard generations, its files.

Layout: ``PATH/twinflag-index.json`` (dimension, model version, live shard name: the sidecar),
``PATH/shard-N/`` (the live shard), ``PATH/shard-N+1/`` (only while an optimisation runs),
``PATH/optimize.log`` (the last optimiser's output), ``PATH/.lock`` (one process per index). The
sidecar names the live shard and is replaced atomically: it is the commit point of a shard swap, so
a crash at any moment leaves it naming a complete shard; other ``shard-*`` directories are leftovers.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from worker.core.errors import IndexMismatchError
from worker.core.logs import get_logger
from worker.index.payload import PAYLOAD_INDEXES, IndexKind

SIDECAR = "twinflag-index.json"
FORMAT = 1
OPTIMIZE_LOG = "optimize.log"

log = get_logger("index", backend="edge")


class IndexDirectory:
    """The sidecar and the lock of one index path; shard directories by generation."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None

    def lock(self) -> None:
        """Take the directory for this process, or fail at once: one process per index."""
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(f"index {self.path} is open in another process") from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def has_shards(self) -> bool:
        return any(self.path.glob("shard-*"))

    def read_meta(self) -> dict[str, Any] | None:
        path = self.path / SIDECAR
        if not path.exists():
            return None
        meta: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise IndexMismatchError(f"{path} has format {meta.get('format')!r}, this code reads {FORMAT}")
        return meta

    def write_meta(self, meta: dict[str, Any]) -> None:
        """Replace the sidecar atomically and durably (file and directory fsynced)."""
        path = self.path / SIDECAR
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        dir_fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def remove_leftovers(self, live: str) -> None:
        """Shard directories other than the live one are copies from an optimisation cut short."""
        for stale in self.path.glob("shard-*"):
            if stale.name != live:
                log.warning("index.leftover_removed", shard=stale.name)
                shutil.rmtree(stale, ignore_errors=True)

    def next_generation(self, live: str) -> str:
        """The name of the next shard directory: one past every generation on disk."""
        names = [p.name for p in self.path.glob("shard-*")] + [live]
        number = 1 + max(int(n.removeprefix("shard-")) for n in names if n.removeprefix("shard-").isdigit())
        return f"shard-{number}"


def open_shard(where: Path, config: qe.EdgeConfig, *, create: bool) -> qe.EdgeShard:
    """Load (checking the vector config) or create, then add any payload index it lacks."""
    if (where / "edge_config.json").exists():
        shard = qe.EdgeShard.load(str(where), config)
    elif create:
        shutil.rmtree(where, ignore_errors=True)  # a create cut short; the sidecar came first
        shard = qe.EdgeShard.create(str(where), config)
    else:
        raise RuntimeError(f"{where} is not a Qdrant Edge shard")
    present = shard.info().payload_schema
    for field, kind in PAYLOAD_INDEXES.items():
        if field not in present:
            shard.update(qe.UpdateOperation.create_field_index(field, _edge_index(kind)))
    return shard


def _edge_index(kind: IndexKind) -> qe.KeywordIndexParams | qe.IntegerIndexParams:
    if kind == "tenant":
        return qe.KeywordIndexParams(is_tenant=True)
    if kind == "keyword":
        return qe.KeywordIndexParams(enable_hnsw=False)
    return qe.IntegerIndexParams(lookup=True, range=True, enable_hnsw=False)


def copy_shard(src: Path, dst: Path) -> None:
    """Copy a shard directory, WAL included (a copy without its WAL restarts the operation numbering
    and then silently ignores later updates and deletes of existing points), holes kept."""
    shutil.copytree(src, dst, copy_function=_copy_sparse)


def _copy_sparse(src: str, dst: str) -> str:
    """Copy only a file's data extents (SEEK_DATA/SEEK_HOLE, copy_file_range): about half the bytes.

    Edge preallocates 32 MiB WAL and storage files that are mostly holes; a plain copy writes the
    zeros out. Falls back to ``shutil.copy2`` where the kernel or file system says no.
    """
    try:
        with Path(src).open("rb") as fin, Path(dst).open("wb") as fout:
            size = os.fstat(fin.fileno()).st_size
            pos = 0
            while pos < size:
                try:
                    start = os.lseek(fin.fileno(), pos, os.SEEK_DATA)
                except OSError:  # ENXIO: only a hole is left
                    break
                end = os.lseek(fin.fileno(), start, os.SEEK_HOLE)
                while start < end:
                    copied = os.copy_file_range(fin.fileno(), fout.fileno(), end - start, start, start)
                    if copied == 0:
                        raise OSError(f"copy_file_range made no progress on {src}")
                    start += copied
                pos = end
            fout.truncate(size)
        shutil.copystat(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst
