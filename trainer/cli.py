"""``python -m trainer {train,evaluate,score,export,default,verifier,quantize,distill,retrain,compare}``: the
command line.

stdout carries results only (metrics, scores); logs and progress go to stderr. Exit status 2 for bad
input (a missing or unreadable file, a refused model directory, a setting out of range), 3 when
``retrain``'s candidate is not better than the live model (nothing written), 1 for anything
unexpected. The ``train`` flags are generated from ``TrainSettings`` (a flag wins over its
``TWINFLAG_TRAIN_*`` variable, which wins over the default). Torch is imported only once a command
runs, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

from pydantic_settings import CliSettingsSource

from trainer.data import Columns, DataError
from trainer.recipes import DEFAULT_DATA_DIR
from trainer.settings import TrainSettings
from worker import __version__
from worker.core.logs import configure, get_logger
from worker.model.manifest import ModelFormatError

DEVICES = ["auto", "cpu", "cuda"]


def add_train_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``train``: one flag per ``TrainSettings`` field (``--batch-size``, ``--bilstm.dim``...), generated
    by pydantic-settings, whose source ``train_settings`` reads them back with. Booleans are toggles
    (``--resume``, ``--no-mine``)."""
    # conflict_handler="resolve": the hand-written flags below replace the generated ones they name
    train = sub.add_parser("train", help="train a twin encoder on pair files", conflict_handler="resolve")
    source = CliSettingsSource[argparse.ArgumentParser](
        TrainSettings, root_parser=train, cli_kebab_case=True, cli_implicit_flags="toggle"
    )
    # Written by hand where the generated flag would break a spelling in use: several files after one
    # flag (generated, it takes one value: ``--train a --train b`` or ``--train a,b``) ...
    train.add_argument(
        "--train",
        nargs="+",
        action="extend",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help=TrainSettings.model_fields["train"].description,
    )
    # ... and a name that says what turning batch_by_source off does (generated: --no-batch-by-source).
    train.add_argument(
        "--mixed-batches",
        "--no-batch-by-source",
        dest="batch_by_source",
        action="store_false",
        default=argparse.SUPPRESS,
        help="Fill batches from all training files (default: one file per batch).",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(settings_source=source)


def train_settings(args: argparse.Namespace) -> TrainSettings:
    """The command line over the environment (``TWINFLAG_TRAIN_*``) over the defaults."""
    given = {k: v for k, v in vars(args).items() if k.split(".")[0] in TrainSettings.model_fields}
    if "train" in given:  # as JSON: a list of strings would be split again at commas in file names
        given["train"] = json.dumps(given["train"])
    source: CliSettingsSource[argparse.ArgumentParser] = args.settings_source
    # BaseSettings.__init__ takes the source; mypy, without pydantic's plugin, sees only the fields
    return TrainSettings(_cli_settings_source=source(parsed_args=given))  # type: ignore[call-arg]


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m trainer", description=__doc__.splitlines()[0])
    root.add_argument("--version", action="version", version=f"twinflag trainer {__version__}")
    root.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = root.add_subparsers(dest="command", required=True)

    add_train_command(sub)

    for name, helptext in (
        ("evaluate", "metrics of a model on labelled pairs"),
        ("score", "one similarity per pair on stdout"),
    ):
        command = sub.add_parser(name, help=helptext)
        command.add_argument("--model", type=Path, required=True, help="model directory")
        command.add_argument("--pairs", type=Path, required=True, help="pair file (label optional for score)")
        command.add_argument("--device", default="auto", choices=DEVICES)
        command.add_argument(
            "--columns",
            type=Columns.parse,
            help="the file's columns (JSON keys) for the two texts and the label: A,B[,LABEL]"
            " (default: text_a,text_b,label, or GLUE, QQP and MRPC names)",
        )
    evaluate = sub.choices["evaluate"]
    evaluate.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    evaluate.add_argument("--report", type=Path, help="write report.md and PNG plots into this directory")
    evaluate.add_argument("--max-pairs", type=int, help="evaluate on a fixed random subset")
    evaluate.add_argument("--target-precision", type=float, default=0.95)

    export = sub.add_parser("export", help="sentence-transformers directory → model directory (no training)")
    export.add_argument("--from-pretrained", type=Path, required=True, help="sentence-transformers directory")
    export.add_argument("--out", type=Path, required=True, help="model directory to write")
    export.add_argument("--dev", type=Path, help="calibrate the threshold on these pairs")
    export.add_argument("--dev-max-pairs", type=int, help="calibrate on a fixed random subset (speed)")
    export.add_argument("--target-precision", type=float, default=0.95)
    export.add_argument("--device", default="auto", choices=DEVICES)
    export.add_argument(
        "--onnx",
        action="store_true",
        help="also write onnx/encoder.onnx: input_ids, attention_mask (from tokenizer.json) → unit vectors",
    )

    default = sub.add_parser("default", help="build models/default: fine-tune on a data directory")
    default.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="pair files (default ../shared/data)"
    )
    default.add_argument("--out", type=Path, default=Path("models/default"))
    default.add_argument(
        "--budget-minutes", type=float, default=28.0, help="wall-clock budget for the whole build"
    )
    default.add_argument("--device", default="auto", choices=DEVICES)
    default.add_argument("--no-progress", action="store_true", help="no progress bar")

    verifier = sub.add_parser(
        "verifier",
        help="train a verifier and ship a decision calibrated on a simulated repost stream into a model",
    )
    verifier.add_argument("--model", type=Path, default=Path("models/default"), help="model directory")
    verifier.add_argument("--out", type=Path, help="where to write it (default: the model directory itself)")
    verifier.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="pair files (default ../shared/data)"
    )
    verifier.add_argument(
        "--budget-minutes", type=float, default=12.0, help="the verifier's training time (the rest: ~3 min)"
    )
    verifier.add_argument("--layers", type=int, default=6, help="encoder layers the verifier starts from")
    verifier.add_argument("--target-precision", type=float, default=0.90)
    verifier.add_argument("--max-share", type=float, default=0.3, help="most posts the verifier judges")
    verifier.add_argument("--no-verifier", action="store_true", help="calibrate the decision only")
    verifier.add_argument("--threads", type=int, help="torch CPU threads")
    verifier.add_argument("--device", default="auto", choices=DEVICES)

    quantize = sub.add_parser(
        "quantize", help="an int8 copy of a transformer model directory, run by ONNX Runtime (CPU)"
    )
    quantize.add_argument(
        "--model", type=Path, default=Path("models/default"), help="float32 model directory"
    )
    quantize.add_argument("--out", type=Path, default=Path("models/int8"))
    quantize.add_argument(
        "--data-dir",
        type=Path,
        help="check average precision against the float32 model on the held-out pairs here first",
    )
    quantize.add_argument("--max-pairs", type=int, default=2000, help="pairs per check set")
    quantize.add_argument("--max-ap-drop", type=float, default=0.005, help="refuse to write past this loss")

    distill = sub.add_parser(
        "distill", help="a fast static encoder (numpy at run time) taught by a trained model directory"
    )
    distill.add_argument("--teacher", type=Path, default=Path("models/default"), help="model directory")
    distill.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="pair files (default ../shared/data)"
    )
    distill.add_argument("--out", type=Path, default=Path("models/fast"))
    distill.add_argument(
        "--budget-minutes",
        type=float,
        default=12.0,
        help="wall-clock budget: a third for the teacher's vectors (cached in --cache), the rest training",
    )
    distill.add_argument("--semantic-dim", type=int, default=192, help="columns of the WordPiece part")
    distill.add_argument("--lexical-dim", type=int, default=128, help="columns of the character n-gram part")
    distill.add_argument("--teacher-texts", type=int, default=16_000, help="texts the teacher embeds")
    distill.add_argument("--cache", type=Path, default=Path("runs/distill-cache"), help="teacher vectors")
    distill.add_argument("--seed", type=int, default=0)
    distill.add_argument(
        "--calibration-posts",
        type=Path,
        help="a labelled stream of posts (JSONL: id, text, tenant) whose "
        "best-F1 cosine becomes the threshold (default: a stream simulated from held-out pairs)",
    )
    distill.add_argument("--calibration-truth", type=Path, help="its truth (JSONL: id, duplicate_of, kind)")
    distill.add_argument(
        "--calibrate-only",
        action="store_true",
        help="recalibrate the model at --out on that stream, no training",
    )
    distill.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_retrain_commands(sub)
    return root


def add_retrain_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``retrain`` (the live model taught by verdicts, written only if better) and ``compare``."""
    retrain = sub.add_parser(
        "retrain",
        help="continue the live model on moderators' verdicts; write it only if it beats the live model"
        " (exit status 3 and nothing written otherwise)",
    )
    compare = sub.add_parser(
        "compare", help="two models side by side on the held-back verdicts and the dev sets"
    )
    for command, model_flags in ((retrain, ("--model",)), (compare, ("--live",))):
        command.add_argument(*model_flags, type=Path, required=True, help="the live model directory")
        command.add_argument(
            "--verdicts",
            type=Path,
            nargs="+",
            action="extend",
            required=True,
            metavar="FILE",
            help="verdicts, one JSON message of the verdicts topic per line; the last per key wins",
        )
        command.add_argument(
            "--documents",
            type=Path,
            help="posts (JSONL: id, text, tenant) for verdicts without their texts",
        )
        command.add_argument(
            "--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="pair files (default ../shared/data)"
        )
        command.add_argument("--max-pairs", type=int, default=2000, help="pairs per dev set checked")
        command.add_argument("--device", default="auto", choices=DEVICES)
    retrain.add_argument("--out", type=Path, required=True, help="model directory to write if it is better")
    retrain.add_argument(
        "--budget-minutes",
        type=float,
        default=5.0,
        help="training, calibration and export (the checks after it take a few minutes more)",
    )
    retrain.add_argument("--seed", type=int, default=0)
    retrain.add_argument("--copies", type=int, default=4, help="how often each verdict is seen per epoch")
    retrain.add_argument(
        "--max-ap-drop", type=float, default=0.005, help="AP a held-out dev set may lose (else refused)"
    )
    retrain.add_argument("--no-progress", action="store_true", help="no progress bar")
    compare.add_argument("--candidate", type=Path, required=True, help="the candidate model directory")
    compare.add_argument("--json", type=Path, metavar="OUT", help="also write the comparison as JSON")


def run(args: argparse.Namespace) -> None:
    """Do what the parsed command line asks (``trainer.commands``)."""
    from trainer import commands  # torch and the model code load here, after parsing

    match args.command:
        case "train":
            commands.run_train(train_settings(args), progress=not args.no_progress)
        case "evaluate":
            commands.run_evaluate(
                args.model,
                args.pairs,
                device=args.device,
                max_pairs=args.max_pairs,
                as_json=args.json,
                report=args.report,
                target_precision=args.target_precision,
                columns=args.columns,
            )
        case "score":
            commands.run_score(args.model, args.pairs, device=args.device, columns=args.columns)
        case "export":
            commands.run_export(
                args.from_pretrained,
                args.out,
                args.dev,
                target_precision=args.target_precision,
                dev_max_pairs=args.dev_max_pairs,
                device=args.device,
                onnx=args.onnx,
            )
        case "verifier":
            commands.run_verifier(
                args.model,
                args.out or args.model,
                args.data_dir,
                budget_s=args.budget_minutes * 60.0,
                layers=args.layers,
                target_precision=args.target_precision,
                max_share=args.max_share,
                with_verifier=not args.no_verifier,
                threads=args.threads,
                device=args.device,
            )
        case "quantize":
            commands.run_quantize(
                args.model, args.out, args.data_dir, max_pairs=args.max_pairs, max_ap_drop=args.max_ap_drop
            )
        case "distill":
            from trainer.distill import distill, recipe_for_budget
            from trainer.static_model import recalibrate

            if args.calibrate_only:
                if args.calibration_posts is None or args.calibration_truth is None:
                    raise ValueError("--calibrate-only needs --calibration-posts and --calibration-truth")
                recalibrate(args.out, args.calibration_posts, args.calibration_truth)
                return
            recipe = recipe_for_budget(
                args.budget_minutes * 60.0,
                semantic_dim=args.semantic_dim,
                lexical_dim=args.lexical_dim,
                teacher_texts=args.teacher_texts,
                cache=args.cache,
                seed=args.seed,
                calibration_posts=args.calibration_posts,
                calibration_truth=args.calibration_truth,
            )
            distill(args.teacher, args.data_dir, args.out, recipe, progress=not args.no_progress)
        case "retrain":
            commands.run_retrain(args)
        case "compare":
            commands.run_compare(args)
        case "default":
            commands.run_default(
                args.data_dir,
                args.out,
                args.budget_minutes,
                device=args.device,
                progress=not args.no_progress,
            )


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network: models come from disk
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parser().parse_args(argv)
    configure(args.log_level)
    try:
        run(args)
    except (DataError, ModelFormatError, FileNotFoundError, ValueError) as error:
        get_logger("trainer").error("refused", error=str(error))
        return 2
    except Exception as error:
        from trainer.compare import GateRefused  # already loaded: only retrain raises it

        if not isinstance(error, GateRefused):
            raise
        get_logger("trainer").error("not_better_not_written", out=str(args.out), why=str(error))
        return 3
    return 0
