"""The verifier: a cross-encoder that reads a post and an earlier one together and scores the pair.

``PairClassifier`` is a BERT over ``[CLS] later [SEP] earlier [SEP]`` (the base model's tokenizer and,
usually, its first layers), attention-masked mean pooling and one linear unit: a logit, higher for a
duplicate. It sees both texts at once, so it can tell "60 cm" from "45 cm" and "from A to B" from
"from B to A", which a cosine of two separately embedded posts cannot. ``TorchVerifier`` runs it for
the worker (``worker.core.ports.Verifier``), from the files a model directory names in its manifest's
``verifier`` section. safetensors and JSON only, like every file of a model directory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from worker.model.bert import BertConfig, BertModel
from worker.model.encode import pick_device, token_batches
from worker.model.manifest import ModelFormatError, VerifierSection
from worker.model.modules import mean_pool, pad_batch

VERIFIER_WEIGHTS = "verifier.safetensors"
VERIFIER_CONFIG = "verifier_config.json"
CHARS_PER_SIDE = 2_000
"""Characters of each post the verifier reads: far more than its token budget takes."""


class PairClassifier(nn.Module):
    """BERT over a pair → masked mean pooling → one logit."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.bert = BertModel(config)
        self.head = nn.Linear(config.hidden_size, 1)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.bert(input_ids, attention_mask, token_type_ids)
        logits: torch.Tensor = self.head(mean_pool(hidden, attention_mask).float()).squeeze(-1)
        return logits


def pair_tokenizer(tokenizer: Tokenizer, max_tokens: int) -> Tokenizer:
    """A copy of ``tokenizer`` that truncates a pair to ``max_tokens`` together (longest side first)."""
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_padding()
    copy.enable_truncation(max_length=max_tokens, strategy="longest_first")
    return copy


def encode_pairs(tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """(ids, type ids) of each pair, each side cut to ``CHARS_PER_SIDE`` characters first."""
    rows = tokenizer.encode_batch([(a[:CHARS_PER_SIDE], b[:CHARS_PER_SIDE]) for a, b in pairs])
    return [(row.ids, row.type_ids) for row in rows]


def pair_logits(
    module: PairClassifier,
    encoded: Sequence[tuple[list[int], list[int]]],
    *,
    pad_token_id: int,
    device: str,
    max_batch_tokens: int = 16384,
    max_batch_size: int = 64,
    grad: bool = False,
) -> torch.Tensor:
    """Logits of encoded pairs, in their order, run in batches of similar length."""
    out: list[torch.Tensor] = []
    order: list[int] = []
    context = torch.enable_grad() if grad else torch.inference_mode()
    with context:
        for batch in token_batches([len(ids) for ids, _ in encoded], max_batch_tokens, max_batch_size):
            ids, mask = pad_batch([encoded[i][0] for i in batch], pad_token_id)
            types, _ = pad_batch([encoded[i][1] for i in batch], 0)
            out.append(module(ids.to(device), mask.to(device), types.to(device)).float())
            order += batch
    if not out:
        return torch.zeros(0)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return torch.cat(out)[inverse.to(out[0].device)]


def verifier_scores(
    module: PairClassifier,
    tokenizer: Tokenizer,
    pairs: Sequence[tuple[str, str]],
    *,
    pad_token_id: int,
    device: str,
) -> np.ndarray:
    """The logit of each (later post, earlier post) pair, float64, in order; ``tokenizer`` is a
    ``pair_tokenizer``. The one scoring path of the worker and the trainer's calibration."""
    if not pairs:
        return np.zeros(0, dtype=np.float64)
    logits = pair_logits(module, encode_pairs(tokenizer, pairs), pad_token_id=pad_token_id, device=device)
    return logits.cpu().numpy().astype(np.float64)


def verifier_version(weights: bytes) -> str:
    """``verifier-<12 hex of the weights' sha256>``."""
    return "verifier-" + hashlib.sha256(weights).hexdigest()[:12]


class TorchVerifier:
    """The verifier of a model directory, run by torch on a fixed device: the worker's ``Verifier``."""

    def __init__(
        self,
        root: Path,
        section: VerifierSection,
        tokenizer: Tokenizer,
        pad_token_id: int,
        device: str = "auto",
    ) -> None:
        from safetensors.torch import load_file

        from worker.model.directory import required_file

        weights = required_file(root, VERIFIER_WEIGHTS)
        if verifier_version(weights.read_bytes()) != section.version:
            raise ModelFormatError(f"{root}: verifier version {section.version!r} does not match its weights")
        try:
            config = BertConfig.from_json_file(required_file(root, VERIFIER_CONFIG))
        except (ValueError, TypeError, OSError) as error:
            raise ModelFormatError(
                f"{root}: {VERIFIER_CONFIG} is not a BERT configuration: {error}"
            ) from error
        if config.num_hidden_layers != section.layers or config.vocab_size < tokenizer.get_vocab_size():
            raise ModelFormatError(f"{root}: {VERIFIER_CONFIG} does not fit the manifest's verifier section")
        self.device = pick_device(device)
        module = PairClassifier(config)
        try:
            module.load_state_dict(load_file(str(weights), device="cpu"), strict=True)
        except (RuntimeError, OSError) as error:
            raise ModelFormatError(f"{root}: verifier weights do not fit: {error}") from error
        self.module = module.to(self.device).eval()
        self.tokenizer = pair_tokenizer(tokenizer, section.max_tokens)
        self.pad_token_id = pad_token_id
        self.section = section

    @property
    def version(self) -> str:
        return self.section.version

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        return verifier_scores(
            self.module, self.tokenizer, pairs, pad_token_id=self.pad_token_id, device=self.device
        )
