"""An int8 model directory run by ONNX Runtime: the same ``Encoder`` as ``TorchEncoder``, without torch.

``trainer quantize`` writes such a directory (``precision: int8`` in the manifest, ``model.onnx``
beside the tokenizer): BERT with its attention fused by ONNX Runtime's transformer optimiser, weights
quantised to int8 per output channel, activations quantised on the fly. On this project's 2-core CPU
it embeds 1.45-1.75x as fast as float32 torch, losing at most 0.0023 average precision on the held-out
pairs (0.012 on PAWS; ``python -m bench.speed``). Tokenising, batching and truncation are
``worker.model.encode``'s, so a text is cut and grouped exactly as the float32 model would. The process
never imports torch for it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from worker.model.encode import (
    ManifestEncoder,
    clip_for_tokenizer,
    is_unit_probe,
    known_texts,
    pad_ids,
    token_batches,
)

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from worker.model.manifest import Manifest

INPUTS = ("input_ids", "attention_mask")
"""The graph's inputs (int64, ``(n, length)``); its one output is ``(n, dim)`` L2-normalised float32."""


def session_options(threads: int | None = None) -> Any:
    """One session per process, on this process's CPUs (``threads`` or all of them), logging errors only."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


class OnnxEncoder(ManifestEncoder):
    """A ``precision: int8`` model directory behind the worker's ``Encoder`` port (CPU only)."""

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "auto",
        max_batch_tokens: int = 16384,
        max_batch_size: int = 128,
        threads: int | None = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as error:
            raise ImportError(
                f"{model_dir} is an int8 model, run by ONNX Runtime: pip install 'twinflag[onnx]'"
            ) from error

        from worker.model.directory import check_model_dir, checked_weights, load_tokenizer, read_manifest
        from worker.model.manifest import ModelFormatError

        if device == "cuda":
            raise RuntimeError("an int8 model runs on the CPU; use the float32 model on CUDA")
        if max_batch_tokens < 1 or max_batch_size < 1:
            raise ValueError("max_batch_tokens and max_batch_size must be positive")
        self.device = "cpu"
        self.root = check_model_dir(Path(model_dir))
        self.manifest: Manifest = read_manifest(self.root)
        if self.manifest.precision != "int8":
            raise ModelFormatError(f"{model_dir}: not an int8 model (precision {self.manifest.precision})")
        weights = checked_weights(self.root, self.manifest)
        self.tokenizer: Tokenizer = load_tokenizer(self.root, self.manifest)
        try:
            self.session = ort.InferenceSession(
                str(weights), session_options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # ONNX Runtime raises its own exception types for a bad graph
            raise ModelFormatError(f"{model_dir}: {weights.name} does not load: {error}") from error
        names = tuple(node.name for node in self.session.get_inputs())
        outputs = self.session.get_outputs()
        if sorted(names) != sorted(INPUTS) or len(outputs) != 1 or outputs[0].shape[-1] != self.manifest.dim:
            raise ModelFormatError(
                f"{model_dir}: {weights.name} is not a {self.manifest.dim}-d encoder graph"
            )
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Float32 unit rows in input order; batching as ``encode.embed_texts`` does it."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        ids = [row.ids for row in self.tokenizer.encode_batch(clip_for_tokenizer(texts, self.tokenizer))]
        for batch in token_batches([len(row) for row in ids], self.max_batch_tokens, self.max_batch_size):
            input_ids, mask = pad_ids([ids[i] for i in batch], self.manifest.pad_token_id)
            (vectors,) = self.session.run(None, {"input_ids": input_ids, "attention_mask": mask})
            vectors = np.asarray(vectors, dtype=np.float32)
            # Quantised arithmetic leaves the norm a hair off 1: the index's scores assume unit rows.
            out[batch] = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return out

    def known(self, texts: Sequence[str]) -> list[bool]:
        return known_texts(self.tokenizer, texts)

    def health(self) -> bool:
        return is_unit_probe(self.embed(["health check"]), self.dim)
