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
from pathlib import Path
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


def pick_device(device: str) -> str:
    """``auto`` → CUDA when present, else CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for, but torch sees no CUDA device")
    return device


def token_batches(lengths: Sequence[int], max_batch_tokens: int, max_batch_size: int) -> list[list[int]]:
    """Indices grouped so that each padded batch (count × longest) stays within the token budget.

    Texts are taken shortest first, so padding is small and similar lengths travel together.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = max(lengths[i], 1)  # sorted ascending: the newcomer is the longest
        if current and ((len(current) + 1) * longest > max_batch_tokens or len(current) >= max_batch_size):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class TorchEncoder:
    """A model directory run by torch; device and dtype fixed at construction."""

    def __init__(self, model_dir: str | Path, device: str = "auto", max_batch_tokens: int = 16384,
                 max_batch_size: int = 128) -> None:
        import torch

        from worker.model import load_model_dir

        self._torch = torch
        self.device = pick_device(device)
        loaded = load_model_dir(model_dir, self.device)
        self.manifest = loaded.manifest
        self.module = loaded.module
        self.tokenizer = loaded.tokenizer
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.autocast_dtype = None
        if self.device == "cuda":
            self.autocast_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def max_tokens(self) -> int:
        return self.manifest.max_tokens

    @property
    def threshold(self) -> float:
        return self.manifest.thresholds.decision

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        from worker.model import tokenize

        torch = self._torch
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        self.tokenizer.enable_truncation(self.max_tokens)
        self.tokenizer.no_padding()
        lengths = [len(e.ids) for e in self.tokenizer.encode_batch(list(texts))]
        with torch.inference_mode():
            for batch in token_batches(lengths, self.max_batch_tokens, self.max_batch_size):
                ids, mask = tokenize(self.tokenizer, [texts[i] for i in batch], self.max_tokens)
                ids, mask = ids.to(self.device), mask.to(self.device)
                if self.autocast_dtype is not None:
                    with torch.autocast("cuda", dtype=self.autocast_dtype):
                        vectors = self.module(ids, mask)
                else:
                    vectors = self.module(ids, mask)
                out[batch] = vectors.float().cpu().numpy()
        return out

    def health(self) -> bool:
        probe = self.embed(["health check"])
        return bool(probe.shape == (1, self.dim) and np.isfinite(probe).all())


def load_encoder(path: str | Path, device: str = "auto", max_batch_tokens: int = 16384,
                 max_batch_size: int = 128) -> TorchEncoder:
    return TorchEncoder(path, device, max_batch_tokens, max_batch_size)
