"""The live model taught by moderators' verdicts, written only if better (``python -m trainer retrain``).

1. Read the verdicts (``trainer.verdicts``: the last per key, texts from the verdict or the documents),
   hold back a fixed fifth by key for the gate; the rest become labelled pairs, each seen ``copies``
   times (rejected flags as hard negatives of spam-edited copies, confirmed pairs as positives).
2. Mix them with a sample of the default recipe's own pairs (``recipes.find_pair_files``: each
   training file and the trained half of the dev file, never their held-out parts) so the model keeps
   what it knew; the verdict pairs are about ``VERDICT_SHARE`` of the positive examples.
3. Train with the ordinary loop (``trainer.train``) from the live model's weights, gently (``lr``),
   within the budget: selection on the dev file's untrained half and each file's selection slice, the
   verdicts' included; the threshold calibrated as ``make model`` does, on that half at the live
   model's target precision.
4. The gate (``trainer.compare.gate``): the candidate must beat the live model's average precision on
   the held-back verdicts and lose at most ``max_ap_drop`` on each of the recipe's held-out sets. Only
   then is ``out`` written (``save_model_dir``; the manifest's ``training.retrained_from`` and the
   model card say from which model and on how many verdicts); otherwise ``GateRefused``, nothing written.

Originals come without their held-out tenth (hash buckets below ``HOLDOUT``), so with ``holdout`` 0 the
selection slice ``select_split`` (buckets below 0.15) takes the recipe's 5% of them (0.10-0.15) and 15%
of the verdict pairs.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import JsonValue

from trainer.compare import VERDICT_SET, GateRefused, ModelScores, gate, score_model, table, verdict_set
from trainer.data import FileReport, Pair, read_pairs
from trainer.evaluate import calibrate
from trainer.recipes import (
    DEV_TRAIN_SPLIT,
    HOLDOUT,
    default_settings,
    dev_half_name,
    find_pair_files,
    held_out_sets,
)
from trainer.schedule import MIN_CALIBRATE_PAIRS
from trainer.splits import is_held_out, sample_pairs, split_dev
from trainer.verdicts import VerdictPair, VerdictReport, read_verdicts, split_held_back, training_pairs
from worker.core.logs import get_logger
from worker.model.directory import check_model_dir, read_manifest
from worker.model.manifest import CONFIG_FILE, Manifest, ModelFormatError

log = get_logger("trainer.retrain")

VERDICT_SHARE = 1 / 3  # of the positive examples: the verdicts matter, the recipe's pairs are not forgotten
MIN_ORIGINALS_PER_FILE = 500
SELECT_SPLIT = 0.15  # see the module docstring


@dataclass(frozen=True)
class RetrainRecipe:
    budget_s: float = 300.0  # training, calibration and the candidate's export; the checks come after
    copies: int = 4  # how often each verdict is seen per epoch (oversampling, as spam-edited variants)
    lr: float = 2e-5  # gentle: the live model is already fine-tuned
    max_pairs: int = 2000  # per check set
    max_ap_drop: float = 0.005
    seed: int = 0
    device: str = "auto"


def _write(path: Path, pairs: Sequence[Pair]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = (json.dumps({"text_a": p.text_a, "text_b": p.text_b, "label": p.label}) for p in pairs)
    path.write_text("".join(f"{row}\n" for row in rows), encoding="utf-8")
    return path


def write_training_files(
    work: Path, data_dir: Path, verdict_pairs: Sequence[Pair], seed: int
) -> tuple[list[Path], Path, list[FileReport], FileReport]:
    """The run's pair files under ``work``: a sample of each recipe file, the verdict pairs, and the
    dev file's untrained half (the dev set). Returns them with reports of the original files (``used``:
    the rows sampled), which the manifest names instead of the samples."""
    train_files, dev = find_pair_files(data_dir)
    if dev is None:
        raise ValueError(f"{data_dir}: no dev.* pair file to select and calibrate on")
    verdict_positives = sum(p.label for p in verdict_pairs)
    per_file = max(
        MIN_ORIGINALS_PER_FILE,
        round(verdict_positives * (1 - VERDICT_SHARE) / VERDICT_SHARE / (len(train_files) + 1)),
    )
    files, reports = [], []
    for number, path in enumerate(train_files):
        pairs, report = read_pairs(path)
        kept = sample_pairs([p for p in pairs if not is_held_out(p, HOLDOUT)], per_file, seed)
        report.used = len(kept)
        files.append(_write(work / path.parent.name / f"{number}-{path.stem}.jsonl", kept))
        reports.append(report)
    dev_pairs, dev_report = read_pairs(dev)
    trained, untrained = split_dev(dev_pairs, DEV_TRAIN_SPLIT)
    trained = sample_pairs(trained, per_file, seed)
    files.append(_write(work / dev.parent.name / "dev-trained-half.jsonl", trained))
    reports.append(dataclasses.replace(dev_report, used=len(trained)))
    dev_report.used = len(untrained)
    files.append(_write(work / "verdicts" / "verdicts.jsonl", verdict_pairs))
    return files, _write(work / dev.parent.name / "dev.jsonl", untrained), reports, dev_report


def retrain(
    live: Path,
    verdicts: Sequence[Path],
    documents: Path | None,
    out: Path,
    data_dir: Path,
    recipe: RetrainRecipe,
    *,
    progress: bool = True,
) -> Manifest:
    """See the module docstring. Raises ``GateRefused`` (nothing written) when the candidate is not better,
    ``ValueError`` when the verdicts or the data cannot judge it."""
    from trainer.card import model_readme
    from trainer.train import train
    from worker.model.directory import save_model_dir

    started = time.monotonic()
    live_manifest = read_manifest(check_model_dir(live))
    if live_manifest.precision != "float32" or live_manifest.architecture not in ("transformer", "bilstm"):
        raise ModelFormatError(f"{live}: only a float32 transformer or bilstm model can be retrained")
    _, pairs, report = read_verdicts(verdicts, documents)
    log.info("verdicts_read", **report.summary())
    trained_on, held = split_held_back(pairs)
    if len({p.label for p in held}) < 2:
        raise ValueError(
            f"the held-back verdicts ({len(held)} of {len(pairs)} with both texts) need both a confirmed"
            " and a rejected pair to judge a model; more verdicts are needed"
        )
    if not trained_on:
        raise ValueError("no verdict with both texts is left to train on")
    check_sets = [verdict_set(held), *held_out_sets(data_dir, recipe.max_pairs)]
    if len(check_sets) == 1:
        raise ValueError(f"{data_dir}: no held-out pairs to check that the model forgets nothing")
    examples = training_pairs(trained_on, recipe.copies, recipe.seed)
    with tempfile.TemporaryDirectory(prefix="twinflag-retrain-") as tmp:
        work = Path(tmp)
        files, dev, reports, dev_report = write_training_files(work, data_dir, examples, recipe.seed)
        settings = default_settings(
            data_dir,
            work / "candidate",
            recipe.budget_s,
            train=files,
            dev=dev,
            init=live,
            run_dir=work / "run",
            holdout=0.0,
            select_split=SELECT_SPLIT,
            dev_train_split=0.0,
            lr=recipe.lr,
            epochs=3,
            examples_per_epoch=None,
            eval_every=50,
            dev_max_pairs=300,  # selection runs often in a short run: a smaller sample of each set
            calibrate_max_pairs=MIN_CALIBRATE_PAIRS,  # the threshold is chosen after, on the gate's sample
            checkpoint_every=10**9,  # a short run: no checkpoints
            target_precision=live_manifest.thresholds.target_precision or 0.95,
            seed=recipe.seed,
            device=recipe.device,
        )
        result = train(settings, progress=progress)
        scores = score_model(live, check_sets), score_model(result.out, check_sets)
        # the recipe's threshold rule on the gate's own, larger sample of the dev file's untrained half
        calibrated_on = dev_half_name(Path(dev_report.name))
        thresholds, metrics = result.manifest.thresholds, None
        if calibrated_on in scores[1].raw:  # absent only when that half holds one label
            thresholds, metrics = calibrate(
                *scores[1].raw[calibrated_on], settings.target_precision, calibrated_on
            )
            scores = scores[0], scores[1].at(thresholds.decision)
        print(table(*scores))
        failures = gate(*scores, recipe.max_ap_drop)
        if failures:
            raise GateRefused("; ".join(failures))
        record = _retrained(live_manifest, report, trained_on, held, scores, time.monotonic() - started)
        manifest = result.manifest.model_copy(
            update={
                "training": {**result.manifest.training, **record},
                "training_data": [r.fingerprint() for r in [*reports, *report.files]],
                "dev_data": dev_report.fingerprint(),
                "thresholds": thresholds,
                "dev_metrics": metrics.as_dict() if metrics else result.manifest.dev_metrics,
            }
        )
        config = result.out / CONFIG_FILE  # the transformer's; a bilstm has none
        extra: dict[str, str | bytes] = {CONFIG_FILE: config.read_text("utf-8")} if config.is_file() else {}
        final = save_model_dir(out, manifest, result.module, result.tokenizer, extra, readme=model_readme)
    log.info("retrained", out=str(out), version=final.version, retrained_from=live_manifest.version)
    return final


def _retrained(
    live: Manifest,
    report: VerdictReport,
    trained_on: Sequence[VerdictPair],
    held: Sequence[VerdictPair],
    scores: tuple[ModelScores, ModelScores],
    wall_s: float,
) -> dict[str, JsonValue]:
    """The manifest's record of where the model came from and why it was let through."""
    before, after = (s.get(VERDICT_SET) for s in scores)
    return {
        "recipe": "trainer retrain: the live model continued on moderators' verdicts and a sample of the"
        " default recipe's pairs",
        "retrained_from": live.version,
        "verdicts": {
            "kept": report.verdicts,
            "trained_on": len(trained_on),
            "held_back": len(held),
            "cannot_become_a_training_pair": sum(report.untrainable.values()),
        },
        "gate": {
            "held_back_average_precision": {
                "live": before.average_precision,
                "candidate": after.average_precision,
            },
            "held_out_average_precision": {
                s.name: {"live": scores[0].get(s.name).average_precision, "candidate": s.average_precision}
                for s in scores[1].sets
                if s.name != VERDICT_SET
            },
        },
        "retrain_wall_s": round(wall_s, 1),
    }
