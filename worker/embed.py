"""Texts → L2-normalised vectors, in batches bounded by a token budget.

CONTRACT (owned by the model helper; the protocol is fixed). The torch implementation
(``TorchEncoder``) is built from a model directory (see ``worker/model.py``): it fixes device and dtype
at construction, runs under ``torch.inference_mode()``, uses autocast on CUDA, sorts texts by length and
cuts batches by ``max_batch_tokens`` as well as ``max_batch_size``, truncates to the manifest's
``max_tokens``. Its output for one text does not depend on the other texts of the batch beyond float
rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class Encoder(Protocol):
    """What the batch step needs from a model."""

    @property
    def dim(self) -> int: ...

    @property
    def version(self) -> str:
        """Model version from the manifest; stamped on flags and index points."""

    @property
    def max_tokens(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 array (len(texts), dim), each row L2-normalised; empty input → (0, dim)."""

    def health(self) -> bool: ...
