"""The student of ``trainer.distill``: texts as the worker's own features, its starting tables (the
teacher's token vectors, model2vec's start) and the training loop that keeps the best tables.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from trainer.augment import spam_edit
from trainer.data import Pair
from trainer.splits import DataPlan
from worker.model.manifest import StaticParams
from worker.model.static import features

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

    from trainer.distill import DistillRecipe

BagTensors = tuple["torch.Tensor", "torch.Tensor", "torch.Tensor", "torch.Tensor"]


class Bags:
    """Texts → (WordPiece rows, offsets, n-gram rows, offsets) for two ``nn.EmbeddingBag``s, from the
    worker's own ``features``; the features of texts that recur (training texts, not their random
    spam edits) are kept, so a step featurises only what it has not seen."""

    def __init__(self, tokenizer: Tokenizer, params: StaticParams, max_tokens: int) -> None:
        self.tokenizer, self.params, self.max_tokens = tokenizer, params, max_tokens
        self.kept: dict[str, tuple[NDArray[np.int64], NDArray[np.int64]]] = {}

    def split(self, texts: Sequence[str]) -> list[tuple[NDArray[np.int64], NDArray[np.int64]]]:
        rows, offsets = features(texts, self.tokenizer, self.params, self.max_tokens)
        out = []
        for i in range(len(texts)):
            own = rows[offsets[i] : offsets[i + 1]]
            word = own < self.params.vocab_size
            out.append((own[word], own[~word] - self.params.vocab_size))
        return out

    def __call__(self, texts: Sequence[str], keep: bool = True) -> BagTensors:
        import torch

        missing = list(dict.fromkeys(t for t in texts if t not in self.kept))
        found = dict(zip(missing, self.split(missing), strict=True)) if missing else {}
        if keep:
            self.kept.update(found)
        parts = [self.kept[t] if t in self.kept else found[t] for t in texts]
        tensors = []
        for k in (0, 1):
            counts = np.fromiter((len(part[k]) for part in parts), dtype=np.int64, count=len(parts))
            rows = np.concatenate([part[k] for part in parts]) if parts else np.zeros(0, np.int64)
            tensors += [torch.from_numpy(rows), torch.from_numpy(np.r_[0, np.cumsum(counts)[:-1]])]
        return tensors[0], tensors[1], tensors[2], tensors[3]


def initial_tables(
    params: StaticParams,
    token_vectors: dict[int, NDArray[np.float32]],
    frequency: NDArray[np.float64],
    seed: int,
    sif: float = 1e-3,
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """(WordPiece rows: each token's projected teacher vector × its SIF weight a/(a + p), model2vec's
    start; n-gram rows: random unit-norm directions, a random projection of the n-gram counts)."""
    rng = np.random.default_rng(seed)
    semantic_dim = params.embedding_dim - params.lexical_dim
    words = rng.normal(0.0, 0.01, size=(params.vocab_size, semantic_dim))
    p = frequency / max(frequency.sum(), 1.0)
    weight = sif / (sif + p)
    for token, vector in token_vectors.items():
        words[token] = vector * weight[token]
    grams = rng.normal(0.0, 1.0 / np.sqrt(params.lexical_dim), size=(params.buckets, params.lexical_dim))
    return words.astype(np.float32), grams.astype(np.float32)


def full_table(words: NDArray[np.float32], grams: NDArray[np.float32]) -> NDArray[np.float32]:
    """The one table the worker reads: WordPiece rows in the first columns, n-gram rows in the last."""
    table = np.zeros((len(words) + len(grams), words.shape[1] + grams.shape[1]), dtype=np.float32)
    table[: len(words), : words.shape[1]] = words
    table[len(words) :, words.shape[1] :] = grams
    return table


@dataclass
class Progress:
    step: int = 0
    best_step: int = 0
    best_score: float = -1.0
    history: list[dict[str, float]] = field(default_factory=list)


def train_tables(
    start: tuple[NDArray[np.float32], NDArray[np.float32]],
    bags: Bags,
    taught: tuple[list[str], NDArray[np.float32]],
    plan: DataPlan,
    select: Callable[[NDArray[np.float32], NDArray[np.float32]], float],
    recipe: DistillRecipe,
    seconds: float,
    *,
    progress: bool,
) -> tuple[tuple[NDArray[np.float32], NDArray[np.float32]], Progress]:
    """The training loop (``trainer.distill``, step 4); the best tables by ``select`` and how it went."""
    import torch
    import torch.nn.functional as F  # noqa: N812 - the usual name
    from torch import nn

    from trainer.losses import pair_ranking_loss

    rng = random.Random(recipe.seed)  # noqa: S311 - sampling, not secrets
    torch.manual_seed(recipe.seed)
    texts, targets = taught
    target = torch.from_numpy(targets)
    words = nn.EmbeddingBag.from_pretrained(torch.from_numpy(start[0]), freeze=False, mode="sum", sparse=True)
    grams = nn.EmbeddingBag.from_pretrained(torch.from_numpy(start[1]), freeze=False, mode="sum", sparse=True)
    optimizer = torch.optim.SparseAdam([words.weight, grams.weight], lr=recipe.lr)
    by_file: dict[int, list[Pair]] = {}
    for pair, source in zip(plan.pairs, plan.sources, strict=True):
        by_file.setdefault(source, []).append(pair)
    labelled = [pairs for pairs in by_file.values() if {p.label for p in pairs} == {0, 1}]
    duplicates = [p for p in plan.pairs if p.label == 1]
    w = recipe.train_lexical_weight

    def encode(batch: Sequence[str], keep: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(semantic part, unit; the fused vector the worker compares)."""
        word_rows, word_offsets, gram_rows, gram_offsets = bags(batch, keep)
        semantic = F.normalize(words(word_rows, word_offsets), dim=-1)
        lexical = F.normalize(grams(gram_rows, gram_offsets), dim=-1)
        return semantic, torch.cat([semantic * (1 - w) ** 0.5, lexical * w**0.5], dim=-1)

    def encode_mixed(batch: Sequence[str], edited: Sequence[bool]) -> torch.Tensor:
        """The semantic part of a batch whose edited texts are featurised but not kept."""
        plain = [i for i, e in enumerate(edited) if not e]
        spam = [i for i, e in enumerate(edited) if e]
        out = torch.empty(len(batch), words.embedding_dim)
        if plain:
            out[plain] = encode([batch[i] for i in plain])[0]
        if spam:
            out[spam] = encode([batch[i] for i in spam], keep=False)[0]
        return out

    def snapshot() -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        return words.weight.detach().numpy().copy(), grams.weight.detach().numpy().copy()

    def evaluate(loss: float) -> None:
        current = snapshot()
        score = select(*current)
        state.history.append({"step": state.step, "selection_score": score, "loss": loss})
        if score > state.best_score:
            state.best_score, state.best_step = score, state.step
            best[:] = [current]

    state = Progress()
    best: list[tuple[NDArray[np.float32], NDArray[np.float32]]] = [snapshot()]
    evaluate(float("nan"))
    started = time.monotonic()
    with tqdm(total=int(seconds), desc="distill", unit="s", disable=not progress) as bar:
        while time.monotonic() - started < seconds:
            pick = rng.sample(range(len(texts)), min(recipe.batch_size, len(texts)))
            edited = [rng.random() < recipe.edit_share for _ in pick]
            batch = [spam_edit(texts[i], rng) if e else texts[i] for i, e in zip(pick, edited, strict=True)]
            student = encode_mixed(batch, edited)
            teacher = target[pick]
            loss = recipe.distill_weight * (1 - (student * teacher).sum(-1)).mean()
            loss = loss + recipe.relation_weight * F.mse_loss(student @ student.T, teacher @ teacher.T)
            if labelled and recipe.pair_weight > 0:
                pool = rng.choice(labelled)
                pairs = rng.sample(pool, min(recipe.pair_batch_size, len(pool)))
                a, b = encode([p.text_a for p in pairs])[1], encode([p.text_b for p in pairs])[1]
                labels = torch.tensor([p.label for p in pairs])
                loss = loss + recipe.pair_weight * pair_ranking_loss((a * b).sum(-1), labels, recipe.scale)
            if duplicates and recipe.mnr_weight > 0:
                pairs = rng.sample(duplicates, min(recipe.pair_batch_size, len(duplicates)))
                left = [p.text_a for p in pairs]
                right = [spam_edit(p.text_a, rng) if rng.random() < 0.25 else p.text_b for p in pairs]
                logits = encode(left)[1] @ encode(right, keep=False)[1].T * recipe.scale
                loss = loss + recipe.mnr_weight * F.cross_entropy(logits, torch.arange(len(pairs)))
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves backward unannotated
            optimizer.step()  # type: ignore[no-untyped-call]
            state.step += 1
            bar.update(int(time.monotonic() - started) - bar.n)
            if state.step % recipe.eval_every == 0:
                evaluate(loss.item())
                bar.set_postfix(ap=f"{state.history[-1]['selection_score']:.4f}", loss=f"{loss.item():.3f}")
    evaluate(float("nan"))
    return best[0], state
