"""Does the int8-quantised index decide as the float one does? The same history and the same new posts,
once per index kind, side by side in one run.

The first ``--history`` posts of a generated stream go through ``scan`` into a fresh embedded index,
which is then optimised whole (every point in an HNSW segment, with its int8 copy when quantised); the
next ``--new`` posts are then checked against it read-only (``scan --read-only``: each one searched
against the whole history, nothing written), so every search walks the graph the quantisation changes.
It prints how many of the new posts' decisions differ (flagged, the earlier post named, the ranked
candidates and their scores) between the int8 and the float index, the same between two builds of the
float index (HNSW's own noise), and each index's checks/s.

    python -m bench.quantization --out bench/results/quantization.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import argv_command, dump
from bench.report import machine
from devkit.posts import generate, read_jsonl, write_jsonl
from worker.core.ports import Encoder
from worker.index.edge import EdgeIndex
from worker.model.directory import read_manifest
from worker.model.encode import load_encoder
from worker.service.scan import scan

ROOT = Path(__file__).resolve().parent.parent
KINDS = {"int8": True, "float": False, "float-again": False}
"""Each index the run builds, by its ``scalar_quantization``. The second float index measures the noise
floor: HNSW's graph build is multi-threaded, so two builds of the same points differ a little."""


def decisions(path: Path) -> dict[str, tuple[Any, ...]]:
    """What a reader of each decision line would compare: by post id."""
    return {
        str(line["id"]): (
            line.get("flagged"),
            line.get("duplicate_of"),
            json.dumps(line.get("matches"), sort_keys=True),
        )
        for line in read_jsonl(path)
    }


def run_kind(
    name: str,
    scalar: bool,
    history: Path,
    new: Path,
    encoder: Encoder,
    threshold: float,
    work: Path,
    batch: int,
) -> dict[str, Any]:
    """Build the history's index of this kind, then check the new posts against it read-only."""
    index = EdgeIndex(work / f"index-{name}", scalar_quantization=scalar)
    try:
        started = time.perf_counter()
        scan(history, work / f"history-{name}.jsonl", encoder, index, threshold, batch, progress=False)
        index.optimize()
        built_s = time.perf_counter() - started
        described = index.describe()
        started = time.perf_counter()
        summary = scan(
            new, work / f"new-{name}.jsonl", encoder, index, threshold, batch, progress=False, read_only=True
        )
        checked_s = time.perf_counter() - started
    finally:
        index.close()
    return {
        "index": described,
        "build_s": built_s,
        "checks_per_s": summary.lines / checked_s,
        "flagged": summary.flagged,
        "output": str(work / f"new-{name}.jsonl"),
    }


def measure(model: Path, n_history: int, n_new: int, seed: int, batch: int, work: Path) -> dict[str, Any]:
    stream = generate(n_history + n_new, seed)
    history, new = work / "history.jsonl", work / "new.jsonl"
    write_jsonl(history, stream.posts[:n_history])
    write_jsonl(new, stream.posts[n_history:])
    manifest = read_manifest(model)
    threshold = manifest.thresholds.decision
    result: dict[str, Any] = {"machine": machine(), "model": str(model), "version": manifest.version}
    result.update({"history": n_history, "new": n_new, "seed": seed, "threshold": threshold})
    encoder = load_encoder(model)
    kinds = {
        kind: run_kind(kind, scalar, history, new, encoder, threshold, work, batch)
        for kind, scalar in KINDS.items()
    }
    decided = {kind: decisions(Path(kinds[kind].pop("output"))) for kind in KINDS}
    result["kinds"] = kinds
    result["compared"] = {
        "int8 vs float": compare(decided["int8"], decided["float"]),
        "float vs float-again (noise floor)": compare(decided["float"], decided["float-again"]),
    }
    return result


def compare(a: dict[str, tuple[Any, ...]], b: dict[str, tuple[Any, ...]]) -> dict[str, Any]:
    """How many posts' decisions differ at all, and in the flag or the earlier post named."""
    differing = sorted(post for post in a if a[post] != b.get(post))
    return {
        "decisions": len(a),
        "differing": len(differing),
        "flag_or_post_differing": sum(a[p][:2] != b.get(p, (None, None))[:2] for p in differing),
        "examples": [{"id": post, "a": a[post], "b": b.get(post)} for post in differing[:3]],
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "fast", help="a model directory")
    parser.add_argument("--history", type=int, default=24_000, help="posts indexed first")
    parser.add_argument("--new", type=int, default=6_000, help="posts then checked against them")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not (args.model / "manifest.json").is_file():
        parser.error(f"no model directory at {args.model} (make fast builds models/fast)")
    with tempfile.TemporaryDirectory(prefix="twinflag-quant-") as tmp:
        result = measure(args.model, args.history, args.new, args.seed, args.batch_size, Path(tmp))
    result["command"] = argv_command("bench.quantization", argv)
    for kind, figures in result["kinds"].items():
        print(
            f"{kind:5}  {figures['index']['points']} points ({figures['index']['indexed_vectors']} in HNSW), "
            f"{figures['checks_per_s']:.0f} checks/s, {figures['flagged']} of {args.new} new posts flagged",
            flush=True,
        )
    for pair, found in result["compared"].items():
        print(
            f"{pair}: {found['differing']} of {found['decisions']} decisions differ "
            f"({found['flag_or_post_differing']} in the flag or the earlier post named)",
            flush=True,
        )
    dump(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
