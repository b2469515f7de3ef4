"""A float32 transformer model directory → its int8 copy for ONNX Runtime (``python -m trainer quantize``).

Three steps, each a standard tool: export the encoder (BERT, mean pooling, L2 normalisation) to ONNX
with dynamic batch and length, attention written out as the reference BERT does so that ONNX Runtime's
transformer optimiser fuses it (and the layer norms, the GELUs); quantise the weights of every MatMul and
fused Attention to int8 per output channel (activations dynamically, per batch; the embedding tables
stay float32). In separate processes on this CPU: 1.45-1.75x float32 torch's texts/s (1.45x before the
attention was fused). Torch's
own dynamic int8 (``torch.ao``, deprecated) was measured 1.3x here with a worst cosine to float32 of
0.88 (in one process, which flatters it); ONNX Runtime's per-channel int8 worst cosine 0.986.

The copy keeps the manifest (thresholds, calibrated decision, verifier) and the tokenizer, and gets
its own version (``transformer-int8-<hash>``): its vectors are close to the float32 ones, not equal, so
an index built with one is not searched with the other. ``--check`` embeds pairs with both and
refuses to write the copy when average precision drops by more than ``--max-ap-drop``.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from trainer.card import model_readme
from trainer.recipes import PairSet
from worker.core.logs import get_logger
from worker.model.directory import (
    README_FILE,
    check_model_dir,
    quantized_version,
    read_manifest,
    replace_dir,
)
from worker.model.manifest import (
    CONFIG_FILE,
    MANIFEST_FILE,
    ONNX_FILE,
    TOKENIZER_FILE,
    Manifest,
    ModelFormatError,
    Thresholds,
)
from worker.model.verify import VERIFIER_CONFIG, VERIFIER_WEIGHTS

log = get_logger("trainer.quantize")

OPSET = 17


@dataclass(frozen=True)
class Check:
    """Average precision of the float32 model and of its int8 copy on one labelled pair set."""

    name: str
    pairs: int
    float32: float
    int8: float
    gated: bool = True

    @property
    def drop(self) -> float:
        return self.float32 - self.int8


def export_onnx(model_dir: Path, out: Path) -> None:
    """The float32 encoder as an ONNX graph: ``(input_ids, attention_mask) → (n, dim)`` unit rows, the
    ids from the directory's ``tokenizer.json`` (its folds and truncation included)."""
    import torch

    from worker.model.directory import load_model_dir

    manifest, module, _ = load_model_dir(model_dir)
    tmp = out.with_name(f".{out.name}.tmp")
    ids = torch.tensor([[1, 2, 3, 2], [1, 2, 3, 2]], dtype=torch.long)  # any ids: the shapes are dynamic
    ids[1, 3] = manifest.pad_token_id
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.long)
    axes = {"input_ids": {0: "n", 1: "length"}, "attention_mask": {0: "n", 1: "length"}, "vectors": {0: "n"}}
    with warnings.catch_warnings():
        # The TorchScript exporter is the one whose graph ONNX Runtime's BERT optimiser fuses; torch
        # calls it legacy and says so on every call.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module.eval(),
            (ids, mask),
            str(tmp),
            input_names=["input_ids", "attention_mask"],
            output_names=["vectors"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    tmp.replace(out)  # never a half-written graph under the final name


def quantize_onnx(source: Path, out: Path, manifest: Manifest) -> None:
    """Fuse (ONNX Runtime's BERT optimiser), then quantise weights to int8 per channel."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    params = manifest.hyperparameters
    heads = getattr(params, "num_attention_heads", 0)
    fused = source.with_name("fused.onnx")
    optimize_model(
        str(source), model_type="bert", num_heads=heads, hidden_size=manifest.dim
    ).save_model_to_file(str(fused))
    quantize_dynamic(
        str(fused),
        str(out),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=[
            "MatMul",
            "Attention",
        ],  # the embedding tables stay float32: a lookup gains nothing
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def quantize(
    model_dir: Path,
    out: Path,
    check_sets: Sequence[PairSet] = (),
    max_ap_drop: float = 0.005,
    report_sets: Sequence[PairSet] = (),
    calibration: PairSet | None = None,
) -> tuple[Manifest, list[Check]]:
    """Write the int8 copy of ``model_dir`` at ``out`` (atomically); return its manifest and the checks.

    Both models score each of ``check_sets`` and ``report_sets`` first; nothing is written when the
    average precision on one of ``check_sets`` drops by more than ``max_ap_drop``. ``report_sets`` are
    measured and returned (``Check.gated`` False), never a reason to refuse. With ``calibration`` (the
    pairs the float32 threshold was chosen on), the copy's threshold is chosen again there, at the same
    target precision: int8 moves cosines by up to a few thousandths, and a threshold near 0.97 feels it.
    A calibrated decision (the manifest's ``stream``) is kept as it is.
    """
    root = check_model_dir(model_dir)
    manifest = read_manifest(root)
    if manifest.architecture != "transformer" or manifest.precision != "float32":
        raise ModelFormatError(f"{model_dir}: only a float32 transformer can be quantised")
    started = time.perf_counter()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        with tempfile.TemporaryDirectory() as work:
            exported = Path(work) / "float32.onnx"
            export_onnx(root, exported)
            quantize_onnx(exported, staging / ONNX_FILE, manifest)
        for name in (TOKENIZER_FILE, CONFIG_FILE, VERIFIER_WEIGHTS, VERIFIER_CONFIG):
            if (root / name).is_file():
                shutil.copyfile(root / name, staging / name)
        final = Manifest.model_validate(
            {
                **manifest.model_dump(),
                "precision": "int8",
                "version": quantized_version(manifest.architecture, staging / ONNX_FILE),
                "training": {**manifest.training, "quantized_from": manifest.version},
            }
        )
        (staging / MANIFEST_FILE).write_text(final.model_dump_json(indent=2) + "\n", encoding="utf-8")
        for file in staging.iterdir():
            file.chmod(0o644)
        checks, int8_scores = _checks(root, staging, check_sets, report_sets)  # the copy loads now
        if calibration is not None:  # its own threshold, then the manifest again
            thresholds = _recalibrate(staging, manifest, calibration, int8_scores.get(calibration[0]))
            final = Manifest.model_validate(final.model_copy(update={"thresholds": thresholds}).model_dump())
            (staging / MANIFEST_FILE).write_text(final.model_dump_json(indent=2) + "\n", encoding="utf-8")
        (staging / README_FILE).write_text(model_readme(final), encoding="utf-8")
        (staging / README_FILE).chmod(0o644)
        failed = [c for c in checks if c.gated and c.drop > max_ap_drop]
        if failed:
            worst = max(failed, key=lambda c: c.drop)
            raise QualityError(
                f"int8 loses {worst.drop:.4f} average precision on {worst.name}"
                f" (limit {max_ap_drop}); not written"
            )
        replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info(
        "quantized",
        model=final.version,
        source=manifest.version,
        seconds=round(time.perf_counter() - started, 1),
    )
    return final, checks


class QualityError(ValueError):
    """The int8 copy ranks pairs worse than allowed."""


def _recalibrate(
    int8_dir: Path, manifest: Manifest, pairs: PairSet, scores: NDArray[np.float64] | None
) -> Thresholds:
    """The float32 model's threshold rule on the copy's ``scores`` of ``pairs`` (scored here if the
    checks did not already)."""
    from trainer.evaluate import calibrate, score_pairs
    from worker.model.onnx import OnnxEncoder

    name, text_a, text_b, labels = pairs
    if scores is None:
        scores = score_pairs(OnnxEncoder(int8_dir).embed, text_a, text_b)
    target = manifest.thresholds.target_precision or 0.95
    thresholds, _ = calibrate(scores, labels, target, manifest.thresholds.calibrated_on or name)
    log.info("quantize_recalibrated", before=manifest.thresholds.decision, after=thresholds.decision, on=name)
    return thresholds


def _checks(
    float32_dir: Path, int8_dir: Path, check_sets: Sequence[PairSet], report_sets: Sequence[PairSet]
) -> tuple[list[Check], dict[str, NDArray[np.float64]]]:
    """Average precision of both models on every set (each model loaded once; report sets ungated),
    and the copy's scores by set."""
    if not check_sets and not report_sets:
        return [], {}
    from sklearn.metrics import average_precision_score

    from trainer.evaluate import score_pairs
    from worker.model.encode import TorchEncoder
    from worker.model.onnx import OnnxEncoder

    reference = TorchEncoder(float32_dir, device="cpu")
    quantized = OnnxEncoder(int8_dir)
    checks, int8_scores = [], {}
    sets = [(pairs, True) for pairs in check_sets] + [(pairs, False) for pairs in report_sets]
    for (name, text_a, text_b, labels), gated in sets:
        y = np.asarray(labels)
        int8_scores[name] = score_pairs(quantized.embed, text_a, text_b)
        full = float(average_precision_score(y, score_pairs(reference.embed, text_a, text_b)))
        int8 = float(average_precision_score(y, int8_scores[name]))
        log.info("quantize_check", set=name, pairs=len(labels), float32=round(full, 4), int8=round(int8, 4))
        checks.append(Check(name, len(labels), full, int8, gated))
    return checks, int8_scores
