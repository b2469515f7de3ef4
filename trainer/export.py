"""A sentence-transformers directory → a model directory, without training (the zero-shot model).

With ``--dev`` the threshold is calibrated on it (and the dev metrics recorded); without, the manifest
carries the uncalibrated default and says so (``thresholds.calibrated_on`` is null).
"""

from __future__ import annotations

import time
from pathlib import Path

from trainer.data import read_pairs, sample_pairs
from trainer.train import DEFAULT_THRESHOLD, calibrate, code_version
from worker.core.logs import get_logger
from worker.model.directory import save_model_dir
from worker.model.encode import embed_texts, pick_device
from worker.model.manifest import CONFIG_FILE, Manifest, Thresholds
from worker.model.pretrained import from_sentence_transformer

log = get_logger("trainer.export")


def export_pretrained(
    source: Path,
    out: Path,
    dev: Path | None = None,
    *,
    target_precision: float = 0.95,
    dev_max_pairs: int | None = None,
    device: str = "auto",
    seed: int = 0,
) -> Manifest:
    """Write ``out`` from the sentence-transformers directory ``source``; calibrate on ``dev`` if given."""
    from trainer.evaluate import score_pairs

    tick = time.monotonic()
    parts = from_sentence_transformer(source)
    thresholds = Thresholds(decision=DEFAULT_THRESHOLD)
    dev_metrics: dict[str, float] = {}
    dev_data = None
    if dev is not None:
        pairs, report = read_pairs(dev)
        pairs = sample_pairs(pairs, dev_max_pairs, seed + 1)
        dev_data = report.fingerprint()
        target = pick_device(device)
        module = parts.module.to(target)
        scores = score_pairs(
            lambda texts: embed_texts(module, parts.tokenizer, texts, pad_token_id=0, device=target),
            [p.text_a for p in pairs],
            [p.text_b for p in pairs],
        )
        module.cpu()
        thresholds, metrics = calibrate(scores, [p.label for p in pairs], target_precision, Path(dev).name)
        dev_metrics = metrics.as_dict()
    else:
        log.warning("no dev set: shipping the uncalibrated default threshold", threshold=DEFAULT_THRESHOLD)
    manifest = Manifest(
        architecture="transformer",
        hyperparameters=parts.params,
        dim=parts.params.hidden_size,
        max_tokens=parts.max_tokens,
        pooling="mean",
        pad_token_id=0,
        thresholds=thresholds,
        base_model=parts.base_model,
        dev_data=dev_data,
        dev_metrics=dev_metrics,
        training={"recipe": "zero-shot export, no training"},
        code_version=code_version(),
    )
    final = save_model_dir(out, manifest, parts.module, parts.tokenizer, {CONFIG_FILE: parts.config_json})
    log.info(
        "model exported",
        out=str(out),
        version=final.version,
        threshold=thresholds.decision,
        dev_average_precision=dev_metrics.get("average_precision"),
        wall_s=round(time.monotonic() - tick, 1),
    )
    return final
