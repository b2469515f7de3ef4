"""What each subcommand of ``python -m trainer`` does, given its parsed arguments (``trainer.cli``).

Results go to stdout (metrics, scores), logs to stderr. A command either finishes or raises; the
command line turns bad input into exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from trainer.data import Columns, Pair, read_pairs, read_rows
from trainer.evaluate import evaluate_scores, score_pairs
from trainer.export import export_pretrained
from trainer.recipes import build_default
from trainer.report import write_report
from trainer.settings import TrainSettings
from trainer.splits import sample_pairs
from trainer.train import train
from worker.core.logs import get_logger
from worker.model.encode import load_encoder

if TYPE_CHECKING:
    from worker.model.encode import DirectoryEncoder

log = get_logger("trainer")


def run_train(settings: TrainSettings, *, progress: bool) -> None:
    train(settings, progress=progress)


def run_default(data_dir: Path, out: Path, budget_minutes: float, *, device: str, progress: bool) -> None:
    build_default(data_dir, out, budget_minutes * 60.0, device=device, progress=progress)


def run_export(
    source: Path,
    out: Path,
    dev: Path | None,
    *,
    target_precision: float,
    dev_max_pairs: int | None,
    device: str,
    onnx: bool = False,
) -> None:
    export_pretrained(
        source, out, dev, target_precision=target_precision, dev_max_pairs=dev_max_pairs, device=device
    )
    if onnx:
        from trainer.quantize import export_onnx

        (out / "onnx").mkdir(exist_ok=True)
        export_onnx(out, out / "onnx" / "encoder.onnx")
        print(f"wrote {out / 'onnx' / 'encoder.onnx'}")


def final_scores(
    encoder: DirectoryEncoder, text_a: list[str], text_b: list[str], device: str = "cpu"
) -> NDArray[np.float64]:
    """What the worker decides a pair on: the cosine, or, for a model with a calibrated decision, the
    calibrated probability (the verifier's, for a cosine in its band)."""
    from worker.model.manifest import calibrated_policy
    from worker.model.verify import TorchVerifier

    cosines = score_pairs(encoder.embed, text_a, text_b)
    policy = calibrated_policy(encoder.manifest)
    if policy is None or policy.encoder is None:
        return cosines
    rounded = [round(float(s), 6) for s in cosines]
    out = np.array([policy.encoder(s) for s in rounded], dtype=np.float64)
    band = [i for i, s in enumerate(rounded) if policy.in_band(s)]
    section = encoder.manifest.verifier
    if section is not None and policy.verifier is not None:
        verifier = TorchVerifier(
            encoder.root, section, encoder.tokenizer, encoder.manifest.pad_token_id, device=device
        )
        verified = verifier.score([(text_b[i], text_a[i]) for i in band])  # (later post, earlier post)
        for i, score in zip(band, verified.tolist(), strict=True):
            out[i] = policy.verifier(rounded[i], score)
    return out


def _encoder_scores(
    model: Path, pairs_file: Path, device: str, max_pairs: int | None, columns: Columns | None
) -> tuple[DirectoryEncoder, list[Pair], NDArray[np.float64]]:
    pairs, report = read_pairs(pairs_file, columns)  # the input is checked before the model loads
    if report.bad_rows or report.columns is None or report.columns.label is None:
        log.warning("pairs_read", **report.summary())
    encoder = load_encoder(model, device)
    pairs = sample_pairs(pairs, max_pairs)
    scores = final_scores(encoder, [p.text_a for p in pairs], [p.text_b for p in pairs], device)
    return encoder, pairs, scores


def run_evaluate(
    model: Path,
    pairs_file: Path,
    *,
    device: str,
    max_pairs: int | None,
    as_json: bool,
    report: Path | None,
    target_precision: float,
    columns: Columns | None = None,
) -> None:
    """Metrics of a model on labelled pairs: a table, or one JSON object; a report page on request."""
    encoder, pairs, scores = _encoder_scores(model, pairs_file, device, max_pairs, columns)
    labels = [p.label for p in pairs]
    metrics = evaluate_scores(scores, labels)
    if report is not None:
        write_report(
            report,
            scores,
            labels,
            metrics,
            title=f"{encoder.version} on {pairs_file.name}",
            threshold=encoder.threshold,
            target_precision=target_precision,
        )
    if as_json:
        print(json.dumps({"model": encoder.version, "pairs_file": str(pairs_file), **metrics.as_dict()}))
    else:
        print(f"model {encoder.version} on {pairs_file}")
        print(f"  pairs (duplicates)           {metrics.pairs} ({metrics.duplicates})")
        print(f"  average precision (primary)  {metrics.average_precision:.4f}")
        print(f"  ROC-AUC                      {metrics.roc_auc:.4f}")
        print(f"  best F1                      {metrics.best_f1:.4f}")
        print(f"  best F1 threshold            {metrics.best_f1_threshold:.4f}")
        print(f"  recall at precision 0.90     {metrics.recall_at_p90:.4f}")
        print(f"  recall at precision 0.99     {metrics.recall_at_p99:.4f}")


def run_score(model: Path, pairs_file: Path, *, device: str, columns: Columns | None = None) -> None:
    """One score per data row, in input order (``final_scores``: the cosine, or the calibrated
    probability of a model with a calibrated decision); ``nan`` for a row that cannot be read (logged)."""
    rows, report = read_rows(pairs_file, allow_empty=True, columns=columns)
    if report.bad_rows:
        log.warning("unreadable_rows_scored_nan", **report.summary())
    encoder = load_encoder(model, device)
    good = [row for row in rows if row is not None]
    scores = iter(final_scores(encoder, [p.text_a for p in good], [p.text_b for p in good], device).tolist())
    sys.stdout.write("".join("nan\n" if row is None else f"{next(scores):.6f}\n" for row in rows))


def run_verifier(
    model: Path,
    out: Path,
    data_dir: Path,
    *,
    budget_s: float,
    layers: int,
    target_precision: float,
    max_share: float,
    with_verifier: bool,
    threads: int | None,
    device: str,
) -> None:
    from trainer.ship import ShipRecipe, ship
    from trainer.verifier import VerifierRecipe

    recipe = ShipRecipe(
        verifier=VerifierRecipe(layers=layers, budget_s=budget_s, threads=threads),
        with_verifier=with_verifier,
        target_precision=target_precision,
        max_share=max_share,
    )
    ship(model, data_dir, out, recipe, device=device)


def run_quantize(
    model: Path, out: Path, data_dir: Path | None, *, max_pairs: int, max_ap_drop: float
) -> None:
    """``trainer quantize``: the int8 copy, checked on held-out pairs when a data directory is given."""
    from trainer.quantize import quantize
    from trainer.recipes import dev_half_name, find_pair_files, held_out_sets, other_dev_sets

    gated = held_out_sets(data_dir, max_pairs) if data_dir is not None else []
    reported = other_dev_sets(data_dir, max_pairs) if data_dir is not None else []
    # the default recipe chose its threshold on the untrained half of the dev file
    dev = find_pair_files(data_dir)[1] if data_dir is not None and data_dir.is_dir() else None
    calibration = next((s for s in gated if dev is not None and s[0] == dev_half_name(dev)), None)
    manifest, checks = quantize(
        model, out, gated, max_ap_drop=max_ap_drop, report_sets=reported, calibration=calibration
    )
    print(f"wrote {out} ({manifest.version})")
    if reported:
        print(
            f"  (AP must stay within {max_ap_drop} on the recipe's held-out pairs; other dev files: reported)"
        )
    for check in checks:
        print(
            f"  {check.name:<28} AP float32 {check.float32:.4f}  int8 {check.int8:.4f}"
            f"  drop {check.drop:+.4f}"
        )


def run_retrain(args: argparse.Namespace) -> None:
    """``trainer retrain``: the candidate's figures against the live model's, and where it was written."""
    from trainer.retrain import RetrainRecipe, retrain

    recipe = RetrainRecipe(
        budget_s=args.budget_minutes * 60.0,
        copies=args.copies,
        max_pairs=args.max_pairs,
        max_ap_drop=args.max_ap_drop,
        seed=args.seed,
        device=args.device,
    )
    progress = not args.no_progress
    manifest = retrain(
        args.model, args.verdicts, args.documents, args.out, args.data_dir, recipe, progress=progress
    )
    print(f"wrote {args.out} ({manifest.version}, threshold {manifest.thresholds.decision:.4f})")


def run_compare(args: argparse.Namespace) -> None:
    """``trainer compare``: the table on stdout (and JSON on request)."""
    from trainer.compare import compare

    compare(
        args.live,
        args.candidate,
        args.verdicts,
        args.documents,
        args.data_dir,
        max_pairs=args.max_pairs,
        json_out=args.json,
        device=args.device,
    )
