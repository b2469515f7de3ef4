"""The model group of the worker's settings (``TWINFLAG_MODEL__*``): which model directory, run how.

Read once by ``worker.service.settings.WorkerSettings``; ``worker.service.decision`` loads the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ModelSettings(BaseModel):
    """The model directory the trainer exports, and how to run it."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    path: Path = Field(
        default=Path("models/default"), description="Model directory (manifest.json + safetensors)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="`auto`: CUDA when present, else CPU."
    )
    max_batch_tokens: int = Field(default=16_384, ge=1, description="Token budget of one forward pass.")
    max_batch_size: int = Field(default=128, ge=1, description="Most texts in one forward pass.")
    cpu_kernel_cache: int = Field(
        default=64,
        ge=0,
        description="Compiled CPU kernels (oneDNN primitives) kept for reuse, one per batch shape. A "
        "stream's batches come in many shapes: with oneDNN's own default (1024), embedding 27k posts in "
        "stream-sized batches grew the process by 800 MiB; 64 holds it flat at about 6% less speed, 0 "
        "keeps the least memory at about 10% less.",
    )
    threshold: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Decision threshold on the cosine; set, it decides alone (no calibration, no verifier). "
        "Unset: the model's own decision (its calibrated decision point, or its threshold).",
    )
    tenant_thresholds: dict[str, float] = Field(
        default_factory=dict,
        description='Decision points per tenant, as JSON (`{"forum-a": 0.8}`): a probability for a '
        "calibrated model, a cosine otherwise (or with `threshold` set). Other tenants get the model's.",
    )
    verifier: bool = Field(
        default=True, description="Run the model's verifier, if it has one, on candidates in its band."
    )
