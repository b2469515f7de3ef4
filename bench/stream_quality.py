"""Stream quality: the project's repost stream through ``python -m worker scan``, precision and recall of
the flags at each model's shipped threshold, against exact hashing, MinHash LSH and the zero-shot
MiniLM at their best thresholds (a sweep over each method's own score), with precision–recall curves.

A flag is right when the post is a copy, spam-style edit or rewrite and it names an earlier member of
the same cluster (``devkit.posts.precision_recall``); near-miss look-alikes must be left alone.

    python -m bench.stream_quality --n 2000 --out bench/results/stream_quality.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.throughput import ROOT, default_model, make_stream, manifest
from devkit.baselines import MinHashLSHStream, normalise
from devkit.posts import precision_recall, read_jsonl

Scored = list[tuple[str, float | None, str | None]]  # (id, best earlier score, that earlier id)


def scan_decisions(
    model: Path, posts: Path, out: Path, threshold: float | None = None
) -> list[dict[str, Any]]:
    """``python -m worker scan`` as a user runs it; its decisions in input order."""
    command = [
        sys.executable,
        "-m",
        "worker",
        "scan",
        "--model",
        str(model),
        "--input",
        str(posts),
        "--output",
        str(out),
        "--quiet",
    ]
    if threshold is not None:
        command += ["--threshold", str(threshold)]
    subprocess.run(
        command,
        check=True,
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return [row for row in read_jsonl(out) if "id" in row]


def scored_from_scan(decisions: Sequence[dict[str, Any]]) -> Scored:
    """Each post's final score and the match it would flag: the calibrated probability and the
    decisive match for a calibrated model (what its decision point cuts), else the best cosine."""
    rows: Scored = []
    for d in decisions:
        matches = d.get("matches") or []
        best = str(d["duplicate_of"]) if d.get("duplicate_of") else str(matches[0]["id"]) if matches else None
        score = d.get("probability", d.get("score"))
        rows.append((str(d["id"]), None if score is None else float(score), best))
    return rows


def shipped_point(model: Path) -> float:
    """The decision point the model ships: its calibrated one, else its cosine threshold."""
    found = manifest(model)
    stream = found.get("stream")
    return float(stream["point"]) if stream else float(found["thresholds"]["decision"])


def scored_minhash(posts: Sequence[dict[str, Any]]) -> Scored:
    lsh = MinHashLSHStream(threshold=0.3)  # a low LSH band threshold: candidates, then the Jaccard sweep
    rows: Scored = []
    for p in posts:
        best = lsh.add(str(p.get("tenant", "default")), str(p["id"]), str(p["text"]))
        rows.append((str(p["id"]), best[0] if best else None, best[1] if best else None))
    return rows


def scored_exact(posts: Sequence[dict[str, Any]]) -> Scored:
    """Exact hashing of the normalised text: score 1.0 for a repeat, else nothing."""
    first: dict[tuple[str, str], str] = {}
    rows: Scored = []
    for p in posts:
        key = (str(p.get("tenant", "default")), normalise(str(p["text"])))
        earlier = first.setdefault(key, str(p["id"]))
        rows.append((str(p["id"]), 1.0, earlier) if earlier != p["id"] else (str(p["id"]), None, None))
    return rows


def at(rows: Scored, threshold: float, truth: Sequence[dict[str, Any]]) -> tuple[float, float, float, int]:
    """(precision, recall, f1, flags) when every score ≥ threshold flags its best earlier match."""
    decisions = [
        {"id": i, "duplicate_of": c if s is not None and s >= threshold else None} for i, s, c in rows
    ]
    score = precision_recall(decisions, truth)
    return score.precision, score.recall, score.f1, score.flags


def sweep(rows: Scored, truth: Sequence[dict[str, Any]], points: int = 120) -> dict[str, Any]:
    """Precision–recall over thresholds (score quantiles); the best F1 and its threshold."""
    scores = np.array([s for _, s, _ in rows if s is not None], dtype=np.float64)
    if scores.size == 0:
        return {"curve": [], "best": None}
    grid = np.unique(np.quantile(scores, np.linspace(0, 1, points)))
    curve = []
    for t in grid[::-1]:
        p, r, f1, flags = at(rows, float(t), truth)
        curve.append({"threshold": float(t), "precision": p, "recall": r, "f1": f1, "flags": flags})
    best = max(curve, key=lambda c: (c["f1"], c["threshold"]))
    return {"curve": curve, "best": best}


def by_kind(rows: Scored, threshold: float, truth: Sequence[dict[str, Any]]) -> dict[str, dict[str, int]]:
    decisions = [
        {"id": i, "duplicate_of": c if s is not None and s >= threshold else None} for i, s, c in rows
    ]
    score = precision_recall(decisions, truth)
    return {
        k: {"total": v.total, "flagged": v.flagged, "correct": v.correct} for k, v in score.by_kind.items()
    }


def evaluate_stream(
    name: str, posts_path: Path, truth_path: Path, models: dict[str, Path], work: Path
) -> dict[str, Any]:
    posts, truth = read_jsonl(posts_path), read_jsonl(truth_path)
    methods: dict[str, Any] = {}
    for label, model in models.items():
        shipped = shipped_point(model)
        started = time.perf_counter()
        decisions = scan_decisions(model, posts_path, work / f"{name}-{label}.jsonl")
        elapsed = time.perf_counter() - started
        rows = scored_from_scan(decisions)
        official = precision_recall(decisions, truth)
        methods[label] = {
            "shipped_threshold": shipped,
            "shipped": {
                "precision": official.precision,
                "recall": official.recall,
                "f1": official.f1,
                "flags": official.flags,
            },
            "by_kind": {
                k: {"total": v.total, "flagged": v.flagged, "correct": v.correct}
                for k, v in official.by_kind.items()
            },
            "scan_wall_s": elapsed,
            "verified_share": sum(d.get("decided_by") == "verifier" for d in decisions)
            / max(len(decisions), 1),
            "command": f"python -m worker scan --model {_rel(model)} --input {_rel(posts_path)} --output OUT",
            **sweep(rows, truth),
        }
    minhash = scored_minhash(posts)
    methods["minhash-lsh"] = {**sweep(minhash, truth), "shipped_threshold": None}
    methods["minhash-lsh"]["by_kind"] = by_kind(minhash, methods["minhash-lsh"]["best"]["threshold"], truth)
    exact = scored_exact(posts)
    p, r, f1, flags = at(exact, 1.0, truth)
    methods["exact-hash"] = {
        "shipped_threshold": None,
        "best": {"threshold": 1.0, "precision": p, "recall": r, "f1": f1, "flags": flags},
        "curve": [],
        "by_kind": by_kind(exact, 1.0, truth),
    }
    duplicates = sum(1 for t in truth if t["duplicate_of"])
    return {
        "stream": name,
        "posts": len(posts),
        "duplicates": duplicates,
        "path": _rel(posts_path),
        "methods": methods,
    }


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def models_to_compare(zero_shot: Path | None = None) -> dict[str, Path]:
    """zero-shot always; models/default (fine-tuned) when the trainer has shipped one; models/bilstm
    when ``python -m bench.train_quality`` has trained one."""
    from bench import throughput

    out = {"zero-shot": zero_shot or throughput.ZERO_SHOT}
    if default_model() != throughput.ZERO_SHOT:
        out["default"] = default_model()
    if (BILSTM / "manifest.json").is_file():
        out["bilstm"] = BILSTM
    return out


BILSTM = ROOT / "models" / "bilstm"  # written by ``python -m bench.train_quality``


def measure(
    n: int, seed: int, work: Path, models: dict[str, Path], quick: bool = False
) -> list[dict[str, Any]]:
    results = [
        evaluate_stream("demo", ROOT / "demo" / "posts.jsonl", ROOT / "demo" / "truth.jsonl", models, work)
    ]
    if not quick and n > 0:
        posts, truth = make_stream(n, seed, work / "generated")
        results.append(evaluate_stream(f"generated-{n}-seed{seed}", posts, truth, models, work))
        results[-1]["path"] = f"python -m devkit.posts --n {n} --seed {seed}"
    for r in results:
        for label, m in r["methods"].items():
            b, s = m["best"], m.get("shipped")
            shipped = f"shipped P {s['precision']:.3f} R {s['recall']:.3f}  " if s else ""
            print(
                f"{r['stream']:<24} {label:<12} {shipped}best F1 {b['f1']:.3f} "
                f"(P {b['precision']:.3f} R {b['recall']:.3f} @ {b['threshold']:.3f})",
                flush=True,
            )
            if s:
                kinds = "  ".join(
                    f"{kind} {v['correct'] if kind not in ('near_miss', 'cross_tenant') else v['flagged']}"
                    f"/{v['total']}"
                    for kind, v in m["by_kind"].items()
                )
                print(f"{'':<37}caught (near misses: flagged): {kinds}", flush=True)
    return results


def plot(results: Sequence[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 5), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        for label, m in r["methods"].items():
            if m["curve"]:
                ax.plot([c["recall"] for c in m["curve"]], [c["precision"] for c in m["curve"]], label=label)
            if m.get("shipped"):
                ax.scatter([m["shipped"]["recall"]], [m["shipped"]["precision"]], marker="o", zorder=3)
            elif not m["curve"]:
                ax.scatter([m["best"]["recall"]], [m["best"]["precision"]], marker="x", label=label, zorder=3)
        ax.set(
            title=f"{r['stream']} ({r['posts']} posts)",
            xlabel="recall",
            ylabel="precision",
            xlim=(0, 1.02),
            ylim=(0, 1.02),
        )
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left")
    fig.suptitle("Stream flags: precision–recall over each method's threshold (dots: shipped threshold)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="posts in the larger generated stream (0: none)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--zero-shot", type=Path, default=None, help="zero-shot model directory")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument(
        "--model", action="append", default=[], metavar="LABEL=DIR", help="models to compare (default: all)"
    )
    args = parser.parse_args(argv)
    chosen = dict(spec.split("=", 1) for spec in args.model)
    models = {k: Path(v) for k, v in chosen.items()} if chosen else models_to_compare(args.zero_shot)
    with tempfile.TemporaryDirectory(prefix="twinflag-sq-") as tmp:
        results = measure(args.n, args.seed, Path(tmp), models)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
