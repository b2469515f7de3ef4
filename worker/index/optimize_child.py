"""``python -m worker.index.optimize_child SHARD_DIR PARENT_PID``: optimise a copy of an Edge shard.

A separate interpreter, so the worker's GIL stays free (Qdrant Edge holds it for a whole ``optimize``
call). It dies with the worker (PR_SET_PDEATHSIG, Linux), refuses to run if the worker is already gone,
and runs at low priority so the stream keeps the CPU it needs. Imports nothing of twinflag but this.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Sequence

PR_SET_PDEATHSIG = 1
SIGKILL = 9
EXIT_ORPHANED = 3


def die_with_parent() -> None:
    """Ask the kernel to kill this process when its parent dies (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, SIGKILL)


def main(argv: Sequence[str]) -> int:
    shard_dir, parent_pid = argv[0], int(argv[1])
    die_with_parent()
    if os.getppid() != parent_pid:  # the worker died before the death signal was armed
        return EXIT_ORPHANED
    os.nice(10)
    import qdrant_edge

    shard = qdrant_edge.EdgeShard.load(shard_dir)
    try:
        print("optimized" if shard.optimize() else "already optimal", flush=True)
        shard.flush()
    finally:
        shard.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
