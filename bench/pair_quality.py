"""Pair quality on labelled development pairs (QQP, PAWS): ROC-AUC, average precision, best F1 and
recall at precision 0.90 / 0.99 for each model variant and each baseline (character 5-gram Jaccard,
MinHash estimate of it, TF-IDF cosine). Data sets that are absent are skipped, and said so.

    python -m bench.pair_quality --max-pairs 3000 --out bench/results/pair_quality.json
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from bench.stream_quality import models_to_compare
from bench.throughput import ROOT
from devkit.baselines import (
    char_jaccard,
    minhash_estimate,
    minhash_params,
    minhash_signature,
    shingles,
    tfidf_scores,
)

DATA = ROOT.parent / "shared" / "data"
DATASETS = {"qqp": DATA / "qqp" / "dev.tsv", "paws": DATA / "paws" / "dev.tsv"}


def untrained_part(path: Path) -> Callable[[str], bool] | None:
    """For the dev file the default recipe trains half of: which rows (by ``text_a``) it never trained
    on. None for any other file: all of it is untouched."""
    from trainer.data import Pair
    from trainer.recipes import DEV_TRAIN_SPLIT, find_pair_files
    from trainer.splits import is_held_out

    if not DATA.is_dir() or find_pair_files(DATA)[1] != path:
        return None
    return lambda text_a: is_held_out(Pair(text_a, "", 1), 1.0 - DEV_TRAIN_SPLIT)  # split_dev's dev side


def read_pairs(
    path: Path, limit: int | None, seed: int = 0, keep: Callable[[str], bool] | None = None
) -> tuple[list[str], list[str], NDArray[np.int64]]:
    """``text_a, text_b, label`` rows (csv-quoted TSV) whose ``text_a`` passes ``keep``; a seeded
    sample of ``limit`` rows when given."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = [(r["text_a"], r["text_b"], int(r["label"])) for r in csv.DictReader(handle, delimiter="\t")]
    if keep is not None:
        rows = [r for r in rows if keep(r[0])]
    if limit is not None and len(rows) > limit:
        pick = np.random.default_rng(seed).choice(len(rows), size=limit, replace=False)
        rows = [rows[i] for i in sorted(pick)]
    return [r[0] for r in rows], [r[1] for r in rows], np.array([r[2] for r in rows], dtype=np.int64)


def _metrics_local(scores: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """The same definitions as trainer.evaluate, used only when the trainer module is unavailable."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s.size - 1]
    tp = np.cumsum(y_sorted)[last].astype(np.float64)
    precision, recall = tp / (last + 1), tp / y.sum()
    f1 = np.divide(
        2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0
    )
    ranks = np.empty(s.size)
    sorted_asc = np.sort(s, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_asc)) + 1]
    ends = np.r_[starts[1:], s.size]
    ranks[np.argsort(s, kind="stable")] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    pos, neg = float(y.sum()), float(y.size - y.sum())
    best = int(np.argmax(f1))

    def r_at(target: float) -> float:
        ok = precision >= target
        return float(recall[ok].max()) if ok.any() else 0.0

    return {
        "average_precision": float(np.sum(np.diff(np.r_[0.0, recall]) * precision)),
        "roc_auc": float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg)),
        "best_f1": float(f1[best]),
        "best_f1_threshold": float(s_sorted[last][best]),
        "recall_at_p90": r_at(0.90),
        "recall_at_p99": r_at(0.99),
    }


def pair_metrics(scores: ArrayLike, labels: ArrayLike) -> tuple[dict[str, float], str]:
    """trainer.evaluate's metrics when that module exists, else the local copy; and which one was used."""
    try:
        from trainer.evaluate import evaluate_scores
    except ImportError:
        return _metrics_local(scores, labels), "bench.pair_quality (local)"
    m = evaluate_scores(scores, labels).as_dict()
    keys = ("average_precision", "roc_auc", "best_f1", "best_f1_threshold", "recall_at_p90", "recall_at_p99")
    return {k: m[k] for k in keys}, "trainer.evaluate.evaluate_scores"


def minhash_scores(text_a: Sequence[str], text_b: Sequence[str], num_perm: int = 128) -> list[float]:
    params = minhash_params(num_perm)
    cache: dict[str, NDArray[np.uint64]] = {}

    def sig(t: str) -> NDArray[np.uint64]:
        if t not in cache:
            cache[t] = minhash_signature(shingles(t), params)
        return cache[t]

    return [minhash_estimate(sig(a), sig(b)) for a, b in zip(text_a, text_b, strict=True)]


def model_scorer(model: Path) -> Callable[[Sequence[str], Sequence[str]], list[float]]:
    """Cosine of each pair under a model directory (what ``python -m trainer score`` prints)."""
    from worker.model.encode import load_encoder

    encoder = load_encoder(model, "cpu")

    def score(text_a: Sequence[str], text_b: Sequence[str]) -> list[float]:
        unique = list(dict.fromkeys([*text_a, *text_b]))
        vectors = np.asarray(encoder.embed(unique), dtype=np.float64)
        row = {t: i for i, t in enumerate(unique)}
        a = vectors[[row[t] for t in text_a]]
        b = vectors[[row[t] for t in text_b]]
        return [float(x) for x in np.sum(a * b, axis=1)]

    return score


def measure(max_pairs: int | None, seed: int = 0, datasets: dict[str, Path] | None = None) -> dict[str, Any]:
    methods: dict[str, Callable[[Sequence[str], Sequence[str]], list[float]]] = {
        "char-5gram-jaccard": lambda a, b: [char_jaccard(x, y) for x, y in zip(a, b, strict=True)],
        "minhash-128": minhash_scores,
        "tfidf-cosine": tfidf_scores,
    }
    for label, model in models_to_compare().items():
        methods[label] = model_scorer(model)
    results: dict[str, Any] = {"max_pairs": max_pairs, "seed": seed, "sets": {}, "skipped": []}
    for name, path in (datasets or DATASETS).items():
        if not path.is_file():
            results["skipped"].append(f"{name}: {path} absent")
            print(f"skip {name}: {path} absent", flush=True)
            continue
        keep = untrained_part(path)
        text_a, text_b, labels = read_pairs(path, max_pairs, seed, keep)
        rows = {}
        for label, scorer in methods.items():
            started = time.perf_counter()
            scores = scorer(text_a, text_b)
            elapsed = time.perf_counter() - started
            metrics, source = pair_metrics(scores, labels)
            rows[label] = {**metrics, "seconds": elapsed}
            results["metrics_from"] = source
            print(
                f"{name:<5} {label:<20} AP {metrics['average_precision']:.3f} AUC {metrics['roc_auc']:.3f} "
                f"F1 {metrics['best_f1']:.3f} R@P90 {metrics['recall_at_p90']:.3f} "
                f"R@P99 {metrics['recall_at_p99']:.3f}  ({elapsed:.1f}s)",
                flush=True,
            )
        results["sets"][name] = {
            "path": str(path),
            "part": "the half the default recipe never trains on" if keep else "all",
            "pairs": int(labels.size),
            "duplicates": int(labels.sum()),
            "methods": rows,
        }
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-pairs", type=int, default=3000, help="seeded sample per set (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    results = measure(args.max_pairs or None, args.seed)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
