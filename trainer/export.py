"""A sentence-transformers directory → a model directory, without training (the zero-shot model).

With ``--dev`` the threshold is calibrated on it (and the dev metrics recorded); without, the manifest
carries the uncalibrated default and says so (``thresholds.calibrated_on`` is null).
"""

from __future__ import annotations

import time
from pathlib import Path

from trainer.card import ZERO_SHOT, model_card, model_readme
from trainer.data import read_pairs
from trainer.evaluate import DEFAULT_THRESHOLD, calibrate, score_pairs
from trainer.splits import sample_pairs
from worker.core.logs import get_logger
from worker.model.directory import save_model_dir
from worker.model.encode import embed_texts, pick_device
from worker.model.manifest import CONFIG_FILE, DataFingerprint, Manifest, Thresholds
from worker.model.pretrained import from_sentence_transformer
from worker.model.tokenizer import pad_token_id

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
    tick = time.monotonic()
    parts = from_sentence_transformer(source)
    pad_id = pad_token_id(parts.tokenizer)
    thresholds = Thresholds(decision=DEFAULT_THRESHOLD)
    dev_metrics: dict[str, float] = {}
    dev_data: DataFingerprint | None = None
    if dev is not None:
        pairs, report = read_pairs(dev)
        pairs = sample_pairs(pairs, dev_max_pairs, seed + 1)
        dev_data = report.fingerprint()
        target = pick_device(device)
        module = parts.module.to(target)
        scores = score_pairs(
            lambda texts: embed_texts(module, parts.tokenizer, texts, pad_token_id=pad_id, device=target),
            [p.text_a for p in pairs],
            [p.text_b for p in pairs],
        )
        module.cpu()
        thresholds, metrics = calibrate(scores, [p.label for p in pairs], target_precision, Path(dev).name)
        dev_metrics = metrics.as_dict()
    else:
        log.warning("uncalibrated_default_threshold", reason="no dev set", threshold=DEFAULT_THRESHOLD)
    manifest = model_card(
        architecture="transformer",
        params=parts.params,
        dim=parts.params.hidden_size,
        max_tokens=parts.max_tokens,
        tokenizer=parts.tokenizer,
        thresholds=thresholds,
        base_model=parts.base_model,
        dev_data=dev_data,
        dev_metrics=dev_metrics,
        training=ZERO_SHOT,
        pooling=parts.pooling,
    )
    final = save_model_dir(
        out, manifest, parts.module, parts.tokenizer, {CONFIG_FILE: parts.config_json}, readme=model_readme
    )
    log.info(
        "model_exported",
        out=str(out),
        version=final.version,
        threshold=thresholds.decision,
        dev_average_precision=dev_metrics.get("average_precision"),
        wall_s=round(time.monotonic() - tick, 1),
    )
    return final
