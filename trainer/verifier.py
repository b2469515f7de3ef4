"""The verifier: a pair classifier trained to tell a repost from a look-alike, for the encoder's
uncertain band.

Training pairs, both orders of each:

- labelled pairs of every training file (minus the held-out tenth and the selection slice, as for the
  encoder), the trained half of each dev file (``dev_train_split``: QQP's non-duplicates, PAWS's word
  swaps);
- made here from the training texts: ``text`` ~ ``spam_edit(text)`` (a duplicate: typos, casing,
  emoji, links, homoglyphs...) and ``text`` ~ ``fact_change(text)`` (not one: a number, a name, a day,
  a negation, who did what to whom), and the fact change spam-edited too, so a near miss in a
  reposter's clothes is still a near miss.

The model is the base model's first ``layers`` layers with a linear unit on the mean of the pair's
token vectors (``worker.model.verify.PairClassifier``), trained with binary cross-entropy under a
time budget. Calibration and the band are ``trainer.stream``'s.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import nn
from tqdm import tqdm

from trainer.augment import spam_edit
from trainer.data import Pair, read_pairs
from trainer.facts import fact_change, proper_names
from trainer.schedule import lr_at
from trainer.splits import split_dev, split_holdout, split_selection
from worker.core.logs import get_logger
from worker.model.modules import TransformerEncoder
from worker.model.tokenizer import pad_token_id
from worker.model.verify import PairClassifier, encode_pairs, pair_logits, pair_tokenizer

log = get_logger("trainer.verifier")


@dataclass(frozen=True)
class VerifierRecipe:
    """How a verifier is trained; the defaults are the shipped recipe."""

    layers: int = 6
    max_tokens: int = 128
    batch_size: int = 32
    lr: float = 4e-5
    warmup: float = 0.1
    weight_decay: float = 0.01
    budget_s: float = 600.0
    max_steps: int | None = None
    labelled_per_file: int = 6000  # labelled pairs drawn from each file, at most
    synthetic: int = 6000  # texts that each give a spam edit and a fact change
    holdout: float = 0.1
    select_split: float = 0.05
    dev_train_split: float = 0.5
    seed: int = 0
    threads: int | None = None


@dataclass
class VerifierData:
    """Training pairs (text, text, label), and where they came from."""

    pairs: list[Pair]
    counts: dict[str, int] = field(default_factory=dict)


def training_pairs(
    train_files: Sequence[Path], dev_files: Sequence[Path], recipe: VerifierRecipe
) -> VerifierData:
    """The labelled and the made pairs, shuffled (see the module docstring)."""
    rng = random.Random(f"{recipe.seed}:verifier")  # noqa: S311 - sampling, not secrets
    labelled: list[Pair] = []
    counts: dict[str, int] = {}
    texts: list[str] = []
    for path in train_files:
        pairs, _ = read_pairs(path)
        kept, _ = split_holdout(pairs, recipe.holdout)
        kept, _ = split_selection(kept, recipe.holdout, recipe.select_split)
        chosen = rng.sample(kept, min(len(kept), recipe.labelled_per_file))
        labelled += chosen
        counts[f"{path.parent.name}/{path.name}"] = len(chosen)
        texts += [p.text_a for p in kept]
    for path in dev_files:
        pairs, _ = read_pairs(path)
        trained, _ = split_dev(pairs, recipe.dev_train_split)
        chosen = rng.sample(trained, min(len(trained), recipe.labelled_per_file))
        labelled += chosen
        counts[f"{path.parent.name}/{path.name} (trained half)"] = len(chosen)
    names = proper_names(texts)
    made: list[Pair] = []
    for text in rng.sample(texts, min(len(texts), recipe.synthetic)):
        made.append(Pair(text, spam_edit(text, rng), 1))
        changed = fact_change(text, rng, names)
        if changed is not None:
            made.append(Pair(text, changed, 0))
            made.append(Pair(spam_edit(text, rng), spam_edit(changed, rng), 0))
    counts["spam edits (duplicates)"] = sum(p.label for p in made)
    counts["fact changes (not duplicates)"] = sum(1 - p.label for p in made)
    both = labelled + made
    both += [Pair(p.text_b, p.text_a, p.label) for p in both]  # both orders: later ~ earlier either way
    rng.shuffle(both)
    return VerifierData(both, counts)


def from_encoder(encoder: TransformerEncoder, layers: int) -> PairClassifier:
    """A pair classifier whose BERT is the encoder's first ``layers`` layers (and its embeddings)."""
    import dataclasses

    config = encoder.bert.config
    config = dataclasses.replace(config, num_hidden_layers=min(layers, config.num_hidden_layers))
    model = PairClassifier(config)
    state = {
        name: tensor
        for name, tensor in encoder.bert.state_dict().items()
        if not name.startswith("encoder.layer.") or int(name.split(".")[2]) < config.num_hidden_layers
    }
    model.bert.load_state_dict(state, strict=True)
    nn.init.normal_(model.head.weight, std=0.02)
    nn.init.zeros_(model.head.bias)
    return model


def train_verifier(
    encoder: TransformerEncoder,
    tokenizer: Tokenizer,
    data: VerifierData,
    recipe: VerifierRecipe,
    *,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[PairClassifier, dict[str, float]]:
    """Train a verifier on ``data`` within ``recipe.budget_s``; returns it (eval mode, CPU) and figures."""
    if recipe.threads is not None:
        torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    model = from_encoder(encoder, recipe.layers).to(device).train()
    pairs_tok = pair_tokenizer(tokenizer, recipe.max_tokens)
    pad = pad_token_id(tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps = len(data.pairs) // recipe.batch_size
    if recipe.max_steps is not None:
        steps = min(steps, recipe.max_steps)
    loss_fn = nn.BCEWithLogitsLoss()
    started, seen, loss_sum = time.monotonic(), 0, 0.0
    bar = tqdm(total=steps, disable=None if progress else True, file=sys.stderr, unit="step")
    done = 0  # steps taken: the loop may stop early at the budget
    for step in range(steps):
        elapsed = time.monotonic() - started
        fraction = max(step / max(steps, 1), elapsed / recipe.budget_s)
        if fraction >= 1.0:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr_at(fraction, recipe.lr, recipe.warmup)
        batch = data.pairs[step * recipe.batch_size : (step + 1) * recipe.batch_size]
        logits = pair_logits(
            model,
            encode_pairs(pairs_tok, [(p.text_a, p.text_b) for p in batch]),
            pad_token_id=pad,
            device=device,
            grad=True,
        )
        labels = torch.tensor([float(p.label) for p in batch], device=logits.device)
        loss = loss_fn(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        seen += len(batch)
        done += 1
        loss_sum += float(loss.detach())
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
    bar.close()
    model.eval().cpu()
    figures = {
        "steps": float(done),
        "pairs_seen": float(seen),
        "mean_loss": round(loss_sum / max(done, 1), 4),
        "train_s": round(time.monotonic() - started, 1),
    }
    log.info("verifier_trained", **figures)
    return model, figures
