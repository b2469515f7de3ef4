"""Texts → L2-normalised vectors, in batches bounded by a token budget: the worker's ``Encoder``.

``TorchEncoder`` implements ``worker.core.ports.Encoder`` over a model directory
(``worker.model.directory``): it fixes device and dtype at construction, runs under
``torch.inference_mode()``, uses autocast on CUDA, sorts texts by length and cuts batches by
``max_batch_tokens`` as well as ``max_batch_size``, truncates to the manifest's ``max_tokens``. Its
output for one text does not depend on the other texts of the batch beyond float rounding. torch is
imported lazily: importing this module (for ``token_batches``, say) must not pay for it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import numpy as np
from numpy.typing import NDArray

from worker.model.tokenizer import UNK_TOKEN

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

    from worker.model.manifest import Manifest
    from worker.model.onnx import OnnxEncoder


def pick_device(device: str) -> str:
    """``auto`` → CUDA when present, else CPU; asking for CUDA without one is an error, not a fallback."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for, but torch sees no CUDA device")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {device!r}")
    return device


def token_batches(lengths: Sequence[int], max_batch_tokens: int, max_batch_size: int) -> list[list[int]]:
    """Indices grouped so that each padded batch (count × longest) stays within the token budget.

    Texts are taken shortest first, so padding is small and similar lengths travel together. A text
    longer than the whole budget still gets a batch of its own.
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


def pad_ids(ids: Sequence[Sequence[int]], pad_token_id: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Right-padded ids and their mask, both int64 ``(n, longest)``: the one padding, for ONNX Runtime
    as it is and for torch through ``modules.pad_batch``."""
    longest = max((len(row) for row in ids), default=0)
    input_ids = np.full((len(ids), longest), pad_token_id, dtype=np.int64)
    mask = np.zeros((len(ids), longest), dtype=np.int64)
    for row, tokens in enumerate(ids):
        input_ids[row, : len(tokens)] = tokens
        mask[row, : len(tokens)] = 1
    return input_ids, mask


CHARS_PER_TOKEN = 32
"""The tokenizer reads at most ``max_tokens × CHARS_PER_TOKEN`` characters of a text (8,192 for 256
tokens): far more than ``max_tokens`` tokens take in any real post, where a token is 4-5 characters on
average, and it bounds the tokenizer's time on a hostile one (a 1 MB post of "a a a ..." took 1.2 s
to tokenise only to be cut at the 256th token; 8,192 characters that NFKC expands eighteenfold take
0.25 s)."""


def clip_for_tokenizer(texts: Sequence[str], tokenizer: Tokenizer) -> list[str]:
    """Each text cut to what the tokenizer can use before it truncates (see ``CHARS_PER_TOKEN``)."""
    truncation = tokenizer.truncation
    if not truncation:
        return list(texts)
    limit = int(truncation["max_length"]) * CHARS_PER_TOKEN
    return [text[:limit] for text in texts]


def embed_texts(
    module: torch.nn.Module,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    *,
    pad_token_id: int,
    device: str,
    autocast_dtype: torch.dtype | None = None,
    max_batch_tokens: int = 16384,
    max_batch_size: int = 128,
) -> np.ndarray:
    """The one embedding path, shared by the worker and the trainer's evaluation and mining.

    Tokenises once (the tokenizer truncates; it is given no more characters than it can use: see
    ``CHARS_PER_TOKEN``), batches by ``token_batches``, runs the module under
    ``inference_mode`` (and autocast when a dtype is given), and returns float32 rows in input order.
    The module should be in eval mode.
    """
    import contextlib

    import torch

    from worker.model.modules import output_dim, pad_batch

    dim = output_dim(module)
    out = np.zeros((len(texts), dim), dtype=np.float32)
    if not texts:
        return out
    ids = [encoding.ids for encoding in tokenizer.encode_batch(clip_for_tokenizer(texts, tokenizer))]
    with torch.inference_mode():
        for batch in token_batches([len(row) for row in ids], max_batch_tokens, max_batch_size):
            input_ids, mask = pad_batch([ids[i] for i in batch], pad_token_id)
            autocast = (
                torch.autocast(torch.device(device).type, dtype=autocast_dtype)
                if autocast_dtype is not None
                else contextlib.nullcontext()
            )
            with autocast:
                vectors = module(input_ids.to(device), mask.to(device))
            out[batch] = vectors.float().cpu().numpy()
    return out


class ManifestEncoder:
    """The ``Encoder`` port's properties, answered from the model directory's manifest: written once for
    the torch, ONNX Runtime and numpy encoders."""

    manifest: Manifest

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
        """The manifest's decision threshold (the worker may override it)."""
        return self.manifest.thresholds.decision


class TorchEncoder(ManifestEncoder):
    """A model directory run by torch: the production ``Encoder``.

    Device and autocast dtype are fixed here, once (bf16 on CUDA when supported, else fp16; float32
    on CPU). ``embed`` tokenises once, truncating over-long texts at the manifest's ``max_tokens``
    (truncated, never rejected: a long post still gets a vector from its first tokens), sorts by
    length, cuts batches by ``max_batch_tokens`` and ``max_batch_size``, and returns float32 rows in
    input order.
    """

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "auto",
        max_batch_tokens: int = 16384,
        max_batch_size: int = 128,
    ) -> None:
        import torch

        from worker.model.directory import load_model_dir

        if max_batch_tokens < 1 or max_batch_size < 1:
            raise ValueError("max_batch_tokens and max_batch_size must be positive")
        self.device = pick_device(device)
        self.root = Path(model_dir)
        self.manifest, module, self.tokenizer = load_model_dir(self.root)
        self.module = module.to(self.device).eval()
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.autocast_dtype: torch.dtype | None = None
        if self.device == "cuda":
            self.autocast_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return embed_texts(
            self.module,
            self.tokenizer,
            texts,
            pad_token_id=self.manifest.pad_token_id,
            device=self.device,
            autocast_dtype=self.autocast_dtype,
            max_batch_tokens=self.max_batch_tokens,
            max_batch_size=self.max_batch_size,
        )

    def known(self, texts: Sequence[str]) -> list[bool]:
        return known_texts(self.tokenizer, texts)

    def health(self) -> bool:
        """One tiny forward pass: the model runs on its device and gives a finite unit vector."""
        return is_unit_probe(self.embed(["health check"]), self.dim)


def known_texts(tokenizer: Tokenizer, texts: Sequence[str]) -> list[bool]:
    """Whether each text has a token other than ``[UNK]`` and the special tokens (tokenising only)."""
    unknown = tokenizer.token_to_id(getattr(tokenizer.model, "unk_token", UNK_TOKEN))
    special = set(tokenizer.encode("").ids)  # what the post-processor adds: [CLS], [SEP]
    special |= {int(i) for i in tokenizer.get_added_tokens_decoder()}
    rows = tokenizer.encode_batch(clip_for_tokenizer(texts, tokenizer))
    return [any(i != unknown and i not in special for i in row.ids) for row in rows]


def is_unit_probe(probe: np.ndarray, dim: int) -> bool:
    """A health probe's vector: one finite row of the model's width and unit length."""
    return bool(
        probe.shape == (1, dim)
        and np.isfinite(probe).all()
        and abs(float(np.linalg.norm(probe[0])) - 1.0) < 1e-3
    )


def limit_kernel_cache(capacity: int) -> None:
    """Bound oneDNN's cache of compiled CPU kernels, which it keys by input shape.

    oneDNN reads ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` when it builds its first kernel, so this must run
    before the first forward pass of the process. Every batch shape a stream produces otherwise stays
    cached, up to 1024 of them: resident memory that looks like a leak in a long-running worker.
    """
    os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(capacity)


def load_encoder(
    path: str | Path, device: str = "auto", max_batch_tokens: int = 16384, max_batch_size: int = 128
) -> DirectoryEncoder:
    """The worker's and the trainer's entry point: the encoder a model directory's manifest asks for,
    importing only what it needs (a ``StaticEncoder`` for a static model and an ``OnnxEncoder`` for an
    int8 one never import torch; a ``TorchEncoder`` otherwise)."""
    from worker.model.directory import read_manifest

    manifest = read_manifest(Path(path))
    if manifest.architecture == "static":
        from worker.model.static import load_static

        return load_static(path)
    if manifest.precision == "int8":
        from worker.model.onnx import OnnxEncoder

        return OnnxEncoder(path, device, max_batch_tokens, max_batch_size)
    return TorchEncoder(path, device, max_batch_tokens, max_batch_size)


if TYPE_CHECKING:
    from worker.model.static import StaticEncoder

    # What ``load_encoder`` gives: each has ``manifest``, ``root``, ``tokenizer`` and the ``Encoder`` port.
    DirectoryEncoder: TypeAlias = TorchEncoder | OnnxEncoder | StaticEncoder
