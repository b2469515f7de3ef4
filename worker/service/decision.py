"""What the batch step decides with, from settings: the model directory's encoder and threshold, the
decision it asks for (its calibration, its verifier) and the ``StepConfig`` over them. The stream,
``serve`` and ``twinflag.Detector`` build theirs here alike.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from worker.core.errors import FatalError
from worker.core.messages import DEFAULT_DEAD_LETTER_BYTES
from worker.core.policy import DecisionPlan, Policy
from worker.core.ports import Encoder
from worker.core.step import StepConfig
from worker.model.manifest import ModelFormatError, calibrated_policy
from worker.service.settings import WorkerSettings

if TYPE_CHECKING:
    from worker.model.encode import DirectoryEncoder


def load_model(settings: WorkerSettings, model_dir: Path | None = None) -> tuple[DirectoryEncoder, float]:
    """The encoder the model directory asks for (``encode.load_encoder``: torch, ONNX Runtime for int8,
    numpy for a static model) and the manifest's decision threshold. A missing, unsafe or unreadable
    model directory is a ``FatalError`` naming the path."""
    from worker.model.encode import limit_kernel_cache, load_encoder

    path = model_dir if model_dir is not None else settings.model.path
    model = settings.model
    try:
        limit_kernel_cache(model.cpu_kernel_cache)
        encoder = load_encoder(path, model.device, model.max_batch_tokens, model.max_batch_size)
    except (ModelFormatError, FileNotFoundError) as error:  # UnsafeModelError is a ModelFormatError
        raise FatalError(f"model directory refused: {error}") from error
    return encoder, encoder.manifest.thresholds.decision


def decision_of(
    settings: WorkerSettings, encoder: DirectoryEncoder, threshold: float | None = None
) -> DecisionPlan:
    """The model's own decision (its calibration, its verifier), unless a threshold is forced (the
    argument, else ``TWINFLAG_MODEL__THRESHOLD``): then the cosine decides alone. torch is imported
    only for a verifier: an int8 or static model runs without it."""
    model, manifest = settings.model, encoder.manifest
    forced = threshold if threshold is not None else model.threshold
    points = model.tenant_thresholds
    policy = None if forced is not None else calibrated_policy(manifest, points, verify=model.verifier)
    if policy is None:
        cosine = forced if forced is not None else manifest.thresholds.decision
        return DecisionPlan(Policy(cosine, tenant_points=points))
    section = manifest.verifier
    if not policy.verifies or section is None:
        return DecisionPlan(policy)
    from worker.model.verify import TorchVerifier

    try:
        verifier = TorchVerifier(
            encoder.root, section, encoder.tokenizer, manifest.pad_token_id, device=model.device
        )
    except (ModelFormatError, FileNotFoundError) as error:
        raise FatalError(f"model directory refused: {error}") from error
    return DecisionPlan(policy, verifier, section.keep_text)


def step_config(
    settings: WorkerSettings,
    encoder: Encoder,
    threshold: float,
    dead_letter_bytes: int = DEFAULT_DEAD_LETTER_BYTES,
    decision: DecisionPlan | None = None,
) -> StepConfig:
    return StepConfig(
        threshold=threshold,
        model_version=encoder.version,
        top_k=settings.top_k,
        max_message_bytes=settings.max_message_bytes,
        max_dead_letter_bytes=dead_letter_bytes,
        tombstones=settings.tombstones,
        policy=None if decision is None else decision.policy,
        keep_text=0 if decision is None else decision.keep_text,
    )


def stream_config(settings: WorkerSettings, config: StepConfig) -> StepConfig:
    """``config`` with the retention (``TWINFLAG_INDEX__RETENTION_DAYS``): the stream's alone, as only
    the loop expires points, and a check (at the largest timestamp) would see nothing through it."""
    return replace(config, retention=settings.index.retention())
