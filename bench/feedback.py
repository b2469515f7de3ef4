"""A simulated moderation session: does the learning loop (issue 18) raise F1 on what comes next, without
lowering precision on a stream it has not seen?

    python -m bench.feedback --n 4000 --seed 21 --unseen-seed 22 --budget-minutes 15

(26 minutes on a 2-core CPU; there ``--budget-minutes 4`` trains 6 steps and retrain refuses the copy.)

A ``devkit.posts`` stream of ``--n`` posts (seed 21: not the demo's 4, ``make fast``'s 3 or the bench's
11) is split in two halves by arrival. A reviewer answers from the truth on pairs of the first half
(``review``); then the second half is decided and scored, three ways, each on a fresh embedded index
with the first half added first:

a. **no feedback**: the live model (``models/default``) at its shipped decision;
b. **suppression + points**: the first half's verdicts given with ``Detector.review_many`` after the
   first half (rejected pairs never flagged again, confirmed ones always, per-tenant decision points
   re-chosen), then the second half;
c. **retrain + promotion**: ``python -m trainer retrain`` on the verdicts (the first half as
   ``--documents``); when it writes a candidate, the first half is re-embedded with it into a new index
   (what promotion does), the same verdicts are given again (suppression and points re-learned in the
   candidate's cosines), then the second half. A refusal (exit 3) is reported with its message.

Then an unseen stream (seed 22, ``--unseen-n`` posts): the live model and the candidate, no feedback.

**What the reviewer sees and answers** (``devkit.posts.review``): a pair of first-half posts with both
texts and the tenant, answered ``duplicate`` when the truth puts them in one cluster, else
``not_duplicate``: every flag of the first half, the ``--near`` unflagged posts with the highest
best-match cosine against that match (the queue's "possible duplicates" below the point), and
``--missed`` unflagged reposts (seeded sample) against their true original. The reviewer never sees
the second half or the unseen stream.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.harness import ROOT, argv_command, dump, rel
from devkit.posts import generate, write_jsonl
from devkit.posts.review import half_score, halves, review

MODEL = ROOT / "models" / "default"
DATA = ROOT.parent / "shared" / "data"


def session(
    model: Path,
    index: Path,
    first: list[dict[str, Any]],
    second: list[dict[str, Any]],
    verdicts: list[dict[str, Any]] | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, float]]:
    """First half added, the verdicts given (None: none), second half added; the decisions of each half
    and the decision points the verdicts moved."""
    from twinflag import Detector

    def decide(detector: Detector, posts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for decision in detector.scan(posts):
            if isinstance(decision, Exception):
                raise decision
            out.append(decision.model_dump(mode="json"))
        return out

    with Detector.open(model, index) as detector:
        before = decide(detector, first)
        points = detector.review_many(verdicts) if verdicts else {}
        after = decide(detector, second)
    return before, after, points


def retrain(
    live: Path, verdicts: Path, documents: Path, out: Path, data_dir: Path, budget: float
) -> dict[str, Any]:
    """``python -m trainer retrain``, its output echoed and kept: ``promoted`` (a candidate at ``out``),
    ``refused`` (exit 3: not better) or ``failed`` (any other exit)."""
    command = [sys.executable, "-m", "trainer", "retrain", "--model", str(live), "--verdicts", str(verdicts)]
    command += ["--documents", str(documents), "--out", str(out), "--data-dir", str(data_dir)]
    command += ["--budget-minutes", str(budget), "--no-progress"]
    started, lines = time.monotonic(), []
    with subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            print(f"  retrain | {line}", end="", flush=True)
            lines.append(line.rstrip("\n"))
    code = process.returncode
    status = "promoted" if code == 0 else "refused" if code == 3 else "failed"
    wall_s = round(time.monotonic() - started, 1)
    return {"status": status, "exit": code, "wall_s": wall_s, "message": why(lines), "output": lines[-12:]}


def why(lines: Sequence[str]) -> str:
    """The reason retrain gives for refusing (its log event's ``why``), else its last line."""
    for line in reversed(lines):
        if line.startswith("{") and '"why"' in line:
            return str(json.loads(line)["why"])
    return next((line for line in reversed(lines) if line.strip()), "")


def table(rows: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'run':<28} {'P':>6} {'R':>6} {'F1':>6} {'flags':>6}  learned points"]
    for name, r in rows.items():
        points = ", ".join(f"{t} {p:.4f}" for t, p in sorted(r.get("points", {}).items())) or "-"
        lines.append(
            f"{name:<28} {r['precision']:>6.3f} {r['recall']:>6.3f} {r['f1']:>6.3f} {r['flags']:>6}  {points}"
        )
    return "\n".join(lines)


def requirements(runs: dict[str, Any], unseen: dict[str, Any], promoted: bool) -> dict[str, Any]:
    """The issue's two figures: F1 on the second half with the loop against without it, and precision on
    the unseen stream, candidate against live (when no candidate ships, the live model stays)."""
    loop = runs["c. retrain + promotion" if promoted else "b. suppression + points"]
    live_p = unseen["live"]["precision"]
    cand_p = unseen["candidate"]["precision"] if promoted else live_p
    return {
        "f1_raised": {
            "holds": loop["f1"] > runs["a. no feedback"]["f1"],
            "without": runs["a. no feedback"]["f1"],
            "with_loop": loop["f1"],
            "loop_run": "c" if promoted else "b (no candidate shipped)",
        },
        "unseen_precision_kept": {"holds": cand_p >= live_p, "live": live_p, "candidate": cand_p},
    }


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    stream = generate(args.n, args.seed)
    posts, truth = [dict(p) for p in stream.posts], [dict(t) for t in stream.truth]
    first, second = halves(posts)
    second_ids = {p["id"] for p in second}
    runs: dict[str, dict[str, Any]] = {}

    def scored(name: str, decisions: list[dict[str, Any]], points: dict[str, float]) -> None:
        runs[name] = half_score(decisions, truth, second_ids) | {"points": points}
        print(f"{name}: {json.dumps(runs[name])}", flush=True)

    print(f"stream: {args.n} posts, seed {args.seed}; halves of {len(first)} and {len(second)}", flush=True)
    decided, after, _ = session(args.model, work / "a", first, second, None)
    scored("a. no feedback", after, {})
    reviewed_half = half_score(decided, truth, {p["id"] for p in first})
    print(f"first half, live model (what the reviewer judges): {json.dumps(reviewed_half)}", flush=True)
    seen = review(first, decided, truth, near=args.near, missed=args.missed, seed=args.seed)
    labels = Counter(v["verdict"] for v in seen.verdicts)
    print(f"reviewer: {len(seen.verdicts)} verdicts {dict(labels)} from {seen.sources}", flush=True)
    _, after, points = session(args.model, work / "b", first, second, seen.verdicts)
    scored("b. suppression + points", after, points)

    verdicts_file, documents_file, candidate = work / "verdicts.jsonl", work / "first.jsonl", work / "cand"
    write_jsonl(verdicts_file, seen.verdicts)
    write_jsonl(documents_file, first)
    print(f"retrain: --budget-minutes {args.budget_minutes}", flush=True)
    trained = retrain(
        args.model, verdicts_file, documents_file, candidate, args.data_dir, args.budget_minutes
    )
    promoted = trained["status"] == "promoted"
    if promoted:
        _, after, points = session(candidate, work / "c", first, second, seen.verdicts)
        scored("c. retrain + promotion", after, points)
    else:
        print(f"retrain {trained['status']} (exit {trained['exit']}): {trained['message']}", flush=True)

    unseen_stream = generate(args.unseen_n, args.unseen_seed)
    unseen_posts = [dict(p) for p in unseen_stream.posts]
    unseen_truth = [dict(t) for t in unseen_stream.truth]
    every = {p["id"] for p in unseen_posts}
    unseen: dict[str, Any] = {}
    for name, model in (("live", args.model), ("candidate", candidate if promoted else None)):
        if model is not None:
            _, decisions, _ = session(model, work / f"unseen-{name}", [], unseen_posts, None)
            unseen[name] = half_score(decisions, unseen_truth, every)
            print(f"unseen {name}: {json.dumps(unseen[name])}", flush=True)
    return {
        "stream": {"n": args.n, "seed": args.seed, "halves": [len(first), len(second)]},
        "first_half": reviewed_half,
        "review": {"verdicts": len(seen.verdicts), "answers": dict(labels), "sources": seen.sources},
        "runs": runs,
        "retrain": trained,
        "unseen": {"n": args.unseen_n, "seed": args.unseen_seed, **unseen},
        "requirements": requirements(runs, unseen, promoted),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.feedback", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MODEL, help="the live model")
    parser.add_argument("--n", type=int, default=4000, help="posts in the session's stream")
    parser.add_argument("--seed", type=int, default=21, help="the session's stream")
    parser.add_argument("--unseen-n", type=int, default=2000, help="posts in the unseen stream")
    parser.add_argument("--unseen-seed", type=int, default=22)
    parser.add_argument("--near", type=int, default=100, help="unflagged posts reviewed below the point")
    parser.add_argument("--missed", type=int, default=50, help="missed reposts reported to the reviewer")
    parser.add_argument("--data-dir", type=Path, default=DATA, help="pair files, for retrain")
    parser.add_argument("--budget-minutes", type=float, default=4.0, help="retrain's training budget")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "feedback.json")
    args = parser.parse_args(argv)
    if not (args.model / "manifest.json").is_file():
        print(f"no live model at {rel(args.model)}: build it with `make model`", file=sys.stderr)
        sys.exit(2)
    started = time.monotonic()
    result = {"command": argv_command("bench.feedback", sys.argv[1:] if argv is None else argv)}
    with tempfile.TemporaryDirectory(prefix="twinflag-feedback-") as tmp:
        result |= run(args, Path(tmp))
    result["wall_s"] = round(time.monotonic() - started, 1)
    dump(result, args.json)
    print(f"\n{result['command']}\nsecond half of the session's stream:\n{table(result['runs'])}")
    if result["retrain"]["status"] != "promoted":
        trained = result["retrain"]
        print(f"c. retrain + promotion: {trained['status']} (exit {trained['exit']}): {trained['message']}")
    for name, figures in result["unseen"].items():
        if isinstance(figures, dict):
            print(f"unseen stream, {name:<9} P {figures['precision']:.3f} R {figures['recall']:.3f}")
    for name, check in result["requirements"].items():
        print(f"{name}: {'holds' if check['holds'] else 'DOES NOT HOLD'} {json.dumps(check)}")


if __name__ == "__main__":
    main()
