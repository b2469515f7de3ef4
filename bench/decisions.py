"""The decision a moderator meets at the shipped setting: before (the encoder at its threshold) and after
(the calibrated decision with its verifier), on repost streams, on pair sets, and what it costs.

    python -m bench.decisions --before models/encoder-only --after models/default

1. **Streams** (``worker scan``, as a user runs it): the demo stream and a generated stream of another
   seed; precision, recall and F1 of the flags at each model's shipped setting, what is caught by
   kind (near misses: how many are flagged), and the share of posts the verifier judged.
2. **Pairs**: average precision and ROC-AUC of the final score (what the worker decides on:
   ``trainer.commands.final_scores``) against the encoder's cosine alone and the zero-shot model, on
   the untrained half of QQP dev, the held-out tenths of MRPC and Twitter, and the untrained half of
   PAWS dev.
3. **Cost**: ``worker run`` through the broker on the generated stream, the same model with and without
   its verifier (``TWINFLAG_MODEL__VERIFIER``), one after the other on one broker.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import argv_command, dump
from bench.pair_quality import DATA, pair_metrics, read_pairs
from bench.stream_quality import evaluate_stream
from bench.throughput import ROOT, ZERO_SHOT, make_stream, run_rate
from devkit.broker import tansu
from devkit.posts import read_jsonl


def pair_sets() -> dict[str, tuple[Path, Any]]:
    """Each set and the rows of it no model trained on (by the same hashes as the trainer's splits)."""
    from trainer.data import Pair
    from trainer.splits import is_held_out

    def dev_half(text_a: str) -> bool:
        return is_held_out(Pair(text_a, "", 1), 0.5)

    def held_out_tenth(text_a: str) -> bool:
        return is_held_out(Pair(text_a, "", 1), 0.1)

    return {
        "qqp dev (untrained half)": (DATA / "qqp" / "dev.tsv", dev_half),
        "mrpc (held-out tenth)": (DATA / "mrpc" / "train.tsv", held_out_tenth),
        "twitter (held-out tenth)": (DATA / "twitter" / "train.tsv", held_out_tenth),
        "paws dev (untrained half)": (DATA / "paws" / "dev.tsv", dev_half),
    }


def pairs(after: Path, zero_shot: Path, max_pairs: int) -> dict[str, Any]:
    from trainer.commands import final_scores
    from trainer.evaluate import score_pairs
    from worker.model.encode import load_encoder

    shipped, zero = load_encoder(after, "cpu"), load_encoder(zero_shot, "cpu")
    out: dict[str, Any] = {}
    for name, (path, keep) in pair_sets().items():
        if not path.is_file():
            print(f"skip {name}: {path} absent", flush=True)
            continue
        text_a, text_b, labels = read_pairs(path, max_pairs, 0, keep)
        a, b = list(text_a), list(text_b)
        scores = {
            "final score": final_scores(shipped, a, b),
            "encoder alone": score_pairs(shipped.embed, a, b),
            "zero-shot": score_pairs(zero.embed, a, b),
        }
        rows = {}
        for label, values in scores.items():
            metrics, _ = pair_metrics(values, labels)
            rows[label] = {"average_precision": metrics["average_precision"], "roc_auc": metrics["roc_auc"]}
            print(
                f"{name:<26} {label:<14} AP {metrics['average_precision']:.4f} AUC {metrics['roc_auc']:.4f}",
                flush=True,
            )
        out[name] = {"pairs": int(labels.size), "duplicates": int(np.sum(labels)), "methods": rows}
    return out


def streams(before: Path, after: Path, n: int, seed: int, work: Path) -> list[dict[str, Any]]:
    models = {"before": before, "after": after}
    results = [
        evaluate_stream("demo", ROOT / "demo" / "posts.jsonl", ROOT / "demo" / "truth.jsonl", models, work)
    ]
    posts, truth = make_stream(n, seed, work / "generated")
    results.append(evaluate_stream(f"generated-{n}-seed{seed}", posts, truth, models, work))
    for r in results:
        for label in models:
            m = r["methods"][label]
            s, kinds = m["shipped"], m["by_kind"]
            caught = {
                k: (v["flagged"] if k in ("near_miss", "cross_tenant") else v["correct"], v["total"])
                for k, v in kinds.items()
            }
            print(
                f"{r['stream']:<22} {label:<7} P {s['precision']:.3f} R {s['recall']:.3f} F1 {s['f1']:.3f} "
                f"verified {m['verified_share']:.1%}  "
                + "  ".join(f"{k} {c}/{t}" for k, (c, t) in caught.items()),
                flush=True,
            )
    return results


def cost(after: Path, n: int, seed: int, work: Path, rounds: int) -> dict[str, Any]:
    """docs/s with and without the verifier, alternating, the same produced stream each time."""
    posts_path, _ = make_stream(n, seed, work / "cost")
    posts = read_jsonl(posts_path)
    runs: dict[str, list[float]] = {"with verifier": [], "without verifier": []}
    shares: list[float] = []  # of the documents decided, those the verifier judged
    time_shares: list[float] = []  # of the batches' time, the verifier's
    with tansu(log_path=work / "tansu.log", timeout_s=30) as bootstrap:
        produced = False
        for round_ in range(rounds):
            for label, flag in (("without verifier", "false"), ("with verifier", "true")):
                group = f"cost-{round_}-{flag}"
                result = run_rate(
                    bootstrap, after, posts, work, timeout_s=900, group=group, produced=produced,
                    extra_env={"TWINFLAG_MODEL__VERIFIER": flag},
                )  # fmt: skip
                produced = True
                runs[label].append(result.busy_docs_per_s)
                if flag == "true":
                    shares.append(result.verified / max(result.documents, 1))
                    time_shares.append(
                        result.mean_ms.get("verify", 0.0) / max(result.mean_ms.get("total", 1.0), 1e-9)
                    )
                print(
                    f"  {label:<17} {result.busy_docs_per_s:.1f} docs/s ({result.batches} batches)",
                    flush=True,
                )
    with_v, without = float(np.median(runs["with verifier"])), float(np.median(runs["without verifier"]))
    return {
        "posts": n,
        "docs_per_s": runs,
        "median_with": with_v,
        "median_without": without,
        "ratio": with_v / without if without else float("nan"),
        "share_of_posts_verified": float(np.median(shares)) if shares else None,
        "share_of_time_verifying": float(np.median(time_shares)) if time_shares else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.decisions", description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the model without its decision")
    parser.add_argument("--after", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--zero-shot", type=Path, default=ZERO_SHOT)
    parser.add_argument("--n", type=int, default=2000, help="posts in the generated stream")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--max-pairs", type=int, default=2000)
    parser.add_argument("--cost-posts", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip", action="append", default=[], choices=["streams", "pairs", "cost"])
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "decisions.json")
    args = parser.parse_args(argv)
    started = time.monotonic()
    result: dict[str, Any] = {
        "command": argv_command("bench.decisions", sys.argv[1:] if argv is None else argv)
    }
    with tempfile.TemporaryDirectory(prefix="twinflag-decisions-") as tmp:
        work = Path(tmp)
        if "streams" not in args.skip:
            result["streams"] = streams(args.before, args.after, args.n, args.seed, work)
        if "pairs" not in args.skip:
            result["pairs"] = pairs(args.after, args.zero_shot, args.max_pairs)
        if "cost" not in args.skip:
            result["cost"] = cost(args.after, args.cost_posts, args.seed, work, args.rounds)
            c = result["cost"]
            print(
                f"cost: {c['median_with']:.1f} vs {c['median_without']:.1f} docs/s, ratio {c['ratio']:.2f}; "
                f"posts verified {c['share_of_posts_verified']:.1%}, "
                f"time verifying {c['share_of_time_verifying']:.1%}"
            )
    result["wall_s"] = round(time.monotonic() - started, 1)
    dump(result, args.json)
    print(json.dumps({k: v for k, v in result.items() if k != "streams"}, indent=2)[:4000])


if __name__ == "__main__":
    main()
