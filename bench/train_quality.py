"""Detection quality of the trainer's models against the zero-shot base model and a Jaccard baseline.

Evaluation sets (never trained on): ``qqp/dev.tsv`` and the held-out tenth (by ``text_a`` hash, the
trainer's own ``--holdout`` rule) of every training file — ``twitter/train.tsv`` above all. Prints:

1. average precision of character n-gram Jaccard, zero-shot all-MiniLM-L6-v2, the fine-tuned
   transformer (``--model``, or one trained here on a budget) and the bilstm, per evaluation set;
2. CPU embedding speed of the bilstm against the transformer (texts/s, same texts, same threads);
3. the table of losses tried: each trained for the same number of steps from the base model, with
   its dev average precision (the selection metric, on a fixed dev sample).

    python -m bench.train_quality --quick                       # ≤ 30 min on 2 CPU cores
    python -m bench.train_quality --model models/default        # full sets, 150-step loss runs

Figures go to stdout as Markdown and to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.report import machine
from bench.report_format import provenance
from bench.stream_quality import BILSTM
from devkit.baselines import char_jaccard
from trainer.data import Pair, read_pairs
from trainer.evaluate import average_precision, score_pairs
from trainer.export import export_pretrained
from trainer.losses import LOSSES
from trainer.recipes import DEV_TRAIN_SPLIT, default_settings, find_pair_files
from trainer.settings import TrainSettings
from trainer.splits import sample_pairs, split_dev, split_holdout
from trainer.train import train
from worker.model.encode import TorchEncoder
from worker.model.pretrained import default_base_model

HOLDOUT = 0.1
UNTRAINED = "untrained part"  # the part of the dev file the default recipe keeps as dev


def evaluation_sets(data_dir: Path, max_pairs: int | None) -> dict[str, list[Pair]]:
    """qqp dev, the part of it the default recipe never trains on, and the held-out tenth of each
    training file, each capped at ``max_pairs``."""
    train_files, dev = find_pair_files(data_dir)
    sets: dict[str, list[Pair]] = {}
    if dev is not None:
        name = f"{dev.parent.name}/{dev.name}"
        sets[name] = read_pairs(dev)[0]
        sets[f"{name} {UNTRAINED}"] = split_dev(sets[name], DEV_TRAIN_SPLIT)[1]
    for path in train_files:
        _, held = split_holdout(read_pairs(path)[0], HOLDOUT)
        if {p.label for p in held} == {0, 1}:
            sets[f"{path.parent.name}/{path.name} held-out"] = held
    return {name: sample_pairs(pairs, max_pairs, seed=7) for name, pairs in sets.items()}


def ap_of(score: Callable[[list[Pair]], np.ndarray], sets: dict[str, list[Pair]]) -> dict[str, float]:
    return {name: average_precision(score(pairs), [p.label for p in pairs]) for name, pairs in sets.items()}


def jaccard_scorer(n: int) -> Callable[[list[Pair]], np.ndarray]:
    return lambda pairs: np.array([char_jaccard(p.text_a, p.text_b, n) for p in pairs])


def model_scorer(model_dir: Path) -> Callable[[list[Pair]], np.ndarray]:
    encoder = TorchEncoder(model_dir, device="auto")
    return lambda pairs: score_pairs(encoder.embed, [p.text_a for p in pairs], [p.text_b for p in pairs])


def embed_speed(model_dir: Path, texts: Sequence[str], repeats: int = 2) -> float:
    """Texts per second on CPU (best of ``repeats``, after a warm-up)."""
    encoder = TorchEncoder(model_dir, device="cpu")
    encoder.embed(list(texts[:64]))
    best = 0.0
    for _ in range(repeats):
        tick = time.perf_counter()
        encoder.embed(list(texts))
        best = max(best, len(texts) / (time.perf_counter() - tick))
    return best


#: The runs of the loss table: (loss, settings that differ from the default recipe).
LOSS_RUNS: list[tuple[str, dict[str, Any]]] = [
    ("triplet", {}),
    ("batch_hard", {}),
    ("euclidean", {}),
    ("contrastive", {}),
    ("mnr", {}),
    ("mnr", {"batch_by_source": False}),
    ("mnr", {"hard_negatives": 0, "mine": False}),
    ("mnr", {"augment": 0.0}),
    ("mnr", {"pair_loss_weight": 1.0}),
    ("triplet", {"pair_loss_weight": 1.0}),
]


def run_label(overrides: dict[str, Any]) -> str:
    """How a loss run differs from the recipe: the first part of its ``settings`` cell, also the key
    by which ``--losses-from`` finds a run already made."""
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "default recipe"


def _row_key(row: dict[str, Any]) -> tuple[str, str]:
    """(loss, run label) of a loss row, as ``run_label`` wrote it into the settings cell."""
    return row["loss"], row["settings"].split(";")[0]


def loss_runs(
    data_dir: Path,
    work: Path,
    runs: Sequence[tuple[str, dict[str, Any]]],
    steps: int,
    lr: float,
    sets: dict[str, list[Pair]],
) -> list[dict[str, Any]]:
    """Each run from the base model for ``steps`` steps, the default recipe's other settings unless
    overridden; its *last* weights (no selection) scored on every evaluation set."""
    rows = []
    for number, (loss, overrides) in enumerate(runs):
        out = work / f"loss-{number}"
        settings = default_settings(
            data_dir,
            out,
            budget_s=1e9,
            **{
                "loss": loss,
                "lr": lr,
                "dev": None,
                "select_split": 0.0,  # no selection: the table shows what each run's last weights give
                "deadline_s": None,
                "max_steps": steps,
                "epochs": 1,
                "examples_per_epoch": None,
                "run_dir": work / f"run-{number}",
                "checkpoint_every": 10**9,
                "pair_loss_weight": 0.0,  # off unless a row turns it on: the table compares the losses
                **overrides,
            },
        )
        tick = time.monotonic()
        train(settings, progress=False)
        aps = ap_of(model_scorer(out), sets)
        changed = run_label(overrides)
        rows.append(
            {
                "loss": loss,
                "settings": f"{changed}; margin/scale {LOSSES[loss].margin}, lr {lr:g}, batch "
                f"{settings.batch_size}, {settings.hard_negatives} hard neg/row",
                "steps": steps,
                "average_precision": aps,
                "minutes": round((time.monotonic() - tick) / 60, 1),
            }
        )
        print(f"  {loss} ({changed}): " + ", ".join(f"{k} {v:.4f}" for k, v in aps.items()), flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--model", type=Path, help="fine-tuned model directory (default: train one here)")
    parser.add_argument("--quick", action="store_true", help="samples and short runs: ≤ 30 min on 2 cores")
    parser.add_argument(
        "--losses", nargs="*", default=sorted(LOSSES), help="losses for the table (none: skip)"
    )
    parser.add_argument("--loss-steps", type=int, help="steps per loss run (default 200, quick 60)")
    parser.add_argument("--loss-pairs", type=int, default=1000, help="pairs per evaluation set in the table")
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--skip-bilstm", action="store_true")
    parser.add_argument(
        "--losses-from",
        type=Path,
        help="reuse the loss runs of an earlier report (JSON); only runs it lacks are made",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/train_quality.json"))
    parser.add_argument("--markdown", type=Path, default=Path("bench/TRAINING.md"), help="the report page")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    if not args.data_dir.is_dir():
        print(f"no data at {args.data_dir}: nothing to measure")
        return 0
    quick = args.quick
    sets = evaluation_sets(args.data_dir, 1500 if quick else None)
    report: dict[str, Any] = {"quick": quick, "sets": {k: len(v) for k, v in sets.items()}}
    print("evaluation sets:", report["sets"], flush=True)

    with tempfile.TemporaryDirectory(prefix="twinflag-bench-") as tmp:
        work = Path(tmp)
        models: dict[str, dict[str, float]] = {
            "char 3-gram Jaccard": ap_of(jaccard_scorer(3), sets),
            "char 5-gram Jaccard": ap_of(jaccard_scorer(5), sets),
        }
        export_pretrained(default_base_model(), work / "zero-shot", device="auto")
        models["zero-shot all-MiniLM-L6-v2"] = ap_of(model_scorer(work / "zero-shot"), sets)
        print("zero-shot done", flush=True)

        fine_tuned = args.model
        if fine_tuned is None or not (fine_tuned / "manifest.json").is_file():
            fine_tuned = work / "fine-tuned"
            minutes = 8 if quick else 27
            train(default_settings(args.data_dir, fine_tuned, minutes * 60.0), progress=False)
        models["fine-tuned transformer"] = ap_of(model_scorer(fine_tuned), sets)
        report["fine_tuned_manifest"] = json.loads((fine_tuned / "manifest.json").read_text())["training"]
        print("fine-tuned done", flush=True)

        if not args.skip_bilstm:
            bilstm_dir = BILSTM  # kept: the pair and stream benchmarks compare it too
            train_files, dev = find_pair_files(args.data_dir)
            bilstm = TrainSettings(
                train=train_files, dev=dev, out=bilstm_dir, arch="bilstm", holdout=HOLDOUT, epochs=4,
                batch_size=64, time_budget_s=(4 if quick else 12) * 60.0, dev_max_pairs=1000,
                calibrate_max_pairs=2000, run_dir=work / "run-bilstm", threads=2,
            )  # fmt: skip
            train(bilstm, progress=False)
            models["bilstm"] = ap_of(model_scorer(bilstm_dir), sets)
            texts = [p.text_a for pairs in sets.values() for p in pairs][:2000]
            speed = {"transformer": embed_speed(fine_tuned, texts), "bilstm": embed_speed(bilstm_dir, texts)}
            report["cpu_texts_per_s"] = speed
            report["bilstm_speedup"] = speed["bilstm"] / speed["transformer"]
            print("bilstm done", flush=True)

        report["average_precision"] = models
        steps = args.loss_steps or (60 if quick else 200)
        runs = [(loss, overrides) for loss, overrides in LOSS_RUNS if loss in args.losses]
        small = {name: sample_pairs(pairs, args.loss_pairs, seed=7) for name, pairs in sets.items()}
        made: list[dict[str, Any]] = []
        baseline: dict[str, float] = {}
        if args.losses_from is not None:  # reuse the runs an earlier report made; run only the new ones
            earlier = json.loads(args.losses_from.read_text(encoding="utf-8"))
            wanted = {(loss, run_label(overrides)) for loss, overrides in runs}
            origin = {"command": earlier["command"], "machine": earlier["machine"]}
            made = [{"made_by": origin, **row} for row in earlier["losses"] if _row_key(row) in wanted]
            done = {_row_key(row) for row in made}
            runs = [(loss, o) for loss, o in runs if (loss, run_label(o)) not in done]
            baseline = earlier["losses_baseline"]
        fresh = loss_runs(args.data_dir, work, runs, steps, args.lr, small) if runs else []
        report["losses"] = made + fresh
        report["losses_baseline"] = ap_of(model_scorer(work / "zero-shot"), small) if runs else baseline

    command = "python -m bench.train_quality " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    report["command"] = command
    report["machine"] = machine()
    page = markdown(report)
    print(page)
    args.markdown.write_text(page + "\n", encoding="utf-8")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


def machine_line(info: dict[str, Any]) -> str:
    return f"{info.get('date', '?')}, {info.get('cpu', '?')}, {info.get('cores', '?')} cores"


def _origin(row: dict[str, Any]) -> str | None:
    """The earlier run a reused loss row came from, as the page names it (None: run for this page)."""
    if "made_by" not in row:
        return None
    return f"`{row['made_by']['command']}` ({machine_line(row['made_by']['machine'])})"


def _mark(row: dict[str, Any], origins: list[str]) -> str:
    origin = _origin(row)
    return "" if origin is None else f" *{origins.index(origin) + 1}"


def _ap(aps: dict[str, float], name: str) -> str:
    """A cell: a table reused from an earlier run may lack a set added since (shown as –)."""
    return f"{aps[name]:.4f}" if name in aps else "–"


def markdown(report: dict[str, Any]) -> str:
    names = list(report["sets"])
    sizes = ", ".join(f"{name}: {size} pairs" for name, size in report["sets"].items())
    lines = [
        "# Training quality: the fine-tuned encoder against zero-shot all-MiniLM-L6-v2 and baselines",
        "",
        f"Written by `python -m bench.train_quality`. Evaluation sets: {sizes}. A held-out tenth of each "
        "training file is chosen by a hash of `text_a` (the trainer's `--holdout` rule), so no held-out "
        "anchor text is seen in training.",
        *(
            [
                "",
                "The default recipe also trains on part of the dev file (`dev_train_split`, by the "
                f"same hash) and keeps the rest as its dev set. The `{UNTRAINED}` column is that rest, never "
                "trained on by any model here: compare models there. The whole-file column is kept for "
                "comparison with earlier pages; for a model made by the default recipe it includes pairs it "
                "trained on.",
            ]
            if any(UNTRAINED in name for name in names)
            else []
        ),
        "",
        "## Average precision",
        "",
        "| model | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for model, aps in report["average_precision"].items():
        lines.append(f"| {model} | " + " | ".join(_ap(aps, n) for n in names) + " |")
    if "cpu_texts_per_s" in report:
        speed = report["cpu_texts_per_s"]
        lines += ["", f"CPU embedding speed: transformer {speed['transformer']:.0f} texts/s, bilstm "
                  f"{speed['bilstm']:.0f} texts/s ({report['bilstm_speedup']:.1f}×)"]  # fmt: skip
    if report["losses"]:
        header = "| loss | settings | steps | " + " | ".join(names) + " | minutes |"
        lines += ["", "## Losses tried (last weights, no selection)", ""]
        origins = list(dict.fromkeys(o for o in map(_origin, report["losses"]) if o is not None))
        lines += [f"Rows marked *{k} come from an earlier run, {o}." for k, o in enumerate(origins, 1)]
        lines += [
            "Rows are reused with `--losses-from`; unmarked rows were run for this page. The pair ranking "
            "term is off unless a row names `pair_loss_weight`.",
            "",
        ]
        lines.append(header)
        lines.append("|---" * (len(names) + 4) + "|")
        base = report.get("losses_baseline") or {}
        if base:
            lines.append(
                "| (zero-shot) | no training | 0 | " + " | ".join(_ap(base, n) for n in names) + " | |"
            )
        for row in report["losses"]:
            aps = row["average_precision"]
            lines.append(
                f"| {row['loss']}{_mark(row, origins)} | {row['settings']} | {row['steps']} | "
                + " | ".join(_ap(aps, n) for n in names)
                + f" | {row['minutes']} |"
            )
    if "command" in report:
        lines += provenance(report)
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
