"""The embedded index's optimiser, out of process: copy the live shard, optimise the copy in a child.

Why a child process. The Qdrant Edge 0.9.0 binding holds the GIL for the whole of every call: during
``optimize()`` a Python thread spinning beside it advanced ~700 times a second instead of ~7.8
million, for the 40 s the optimisation of 50k×384 points took on two cores. A background thread would
freeze the stream just as surely as calling ``optimize()`` inline.

So ``EdgeIndex.maintain()`` starts a job when ``optimize_every`` points have arrived: it flushes the
live shard, copies its directory (``edge_store.copy_shard``) and starts ``python -m
worker.index.optimize_child`` on the copy at low priority; the child dies with the worker. Meanwhile
the stream reads and writes the live shard as usual and every write is also kept in a journal. When
the child is done, the next ``maintain()`` loads the optimised copy, replays the journal into it,
flushes it, points the sidecar at it (atomic rename: the commit point) and deletes the old directory.
The stream pauses only for the copy (disk bandwidth, O(size)) and the swap (load + replay);
``bench/index_scaling.py`` reports both next to the in-process optimise time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from worker.index.edge_store import OPTIMIZE_LOG, IndexDirectory, copy_shard


@dataclass(slots=True)
class OptimizeJob:
    """A running optimisation: the shard directory it writes and the child writing it."""

    name: str
    proc: subprocess.Popen[bytes]
    started: float
    copy_s: float


def child_command(target: Path, parent_pid: int) -> list[str]:
    """The optimiser's argv: this interpreter, our module, the copy, the worker's pid."""
    return [sys.executable, "-m", "worker.index.optimize_child", str(target), str(parent_pid)]


def start_job(directory: IndexDirectory, live: str) -> OptimizeJob:
    """Copy the live shard (already flushed by the caller) and start the child on the copy."""
    name = directory.next_generation(live)
    target = directory.path / name
    started = time.perf_counter()
    copy_shard(directory.path / live, target)
    copy_s = time.perf_counter() - started
    with (directory.path / OPTIMIZE_LOG).open("wb") as log_file:
        proc = subprocess.Popen(  # noqa: S603 -- fixed argv: this interpreter, our module, our path
            child_command(target, os.getpid()),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    return OptimizeJob(name=name, proc=proc, started=time.perf_counter(), copy_s=copy_s)


def stop_job(job: OptimizeJob, directory: IndexDirectory) -> None:
    """Stop the child (terminate, then kill) and discard its copy."""
    if job.proc.poll() is None:
        job.proc.terminate()
        try:
            job.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            job.proc.kill()
            job.proc.wait()
    shutil.rmtree(directory.path / job.name, ignore_errors=True)
