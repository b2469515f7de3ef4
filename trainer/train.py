"""Pairs → a trained twin encoder → a model directory. Reads top to bottom: ``train`` is the whole story.

1. Load the pair files (bad rows counted), hold out a fixed fraction, add the trained part of the dev
   file (``dev_train_split``), build duplicate clusters.
2. Build the encoder: the transformer from a sentence-transformers (or model) directory, or the
   bilstm from scratch with a WordPiece vocabulary learnt from the training texts.
3. Score the starting point on the dev sample: fine-tuning must beat it to be kept.
4. Each epoch: mine hard negatives with the current model, lay out batches (in-batch negatives +
   hard negatives + optional spam-edited positives; with ``pair_loss_weight``, also labelled pairs of
   one file for the pair ranking term), step with AdamW under the LR schedule, evaluate
   on the dev sample (also every ``eval_every`` steps), keep the best weights, checkpoint.
5. Restore the best weights, calibrate the threshold on the dev set (without one: on the training
   files' selection slices), write the model directory.

One forward pass per step embeds the anchors and all candidates together. On CUDA it runs under
bf16 autocast (fp16 with a gradient scaler where bf16 is missing). On CPU a run with a seed and no
time budget is reproducible.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import nn
from tqdm import tqdm

from trainer.augment import spam_edit
from trainer.data import (
    Batch,
    FileReport,
    Pair,
    TrainingSet,
    build_training_set,
    group_by_source,
    labelled_pools,
    make_batches,
    read_pairs,
    sample_pairs,
    split_dev,
    split_holdout,
    split_selection,
)
from trainer.evaluate import Metrics, choose_threshold, evaluate_scores, score_pairs
from trainer.losses import DEFAULT_MARGINS, LOSSES, negative_mask, pair_ranking_loss
from trainer.mine import mine_hard_negatives
from trainer.settings import TrainSettings
from trainer.vocab import train_wordpiece
from worker import __version__
from worker.core.logs import get_logger
from worker.model.directory import load_model_dir, save_model_dir, state_tensors
from worker.model.encode import embed_texts, pick_device
from worker.model.manifest import CONFIG_FILE, BiLSTMParams, Manifest, Thresholds, TransformerParams
from worker.model.modules import BiLSTMEncoder, TransformerEncoder
from worker.model.pretrained import from_sentence_transformer
from worker.model.tokenizer import configure_tokenizer

log = get_logger("trainer")


# ---------------------------------------------------------------------------------------------
# Pure pieces


def lr_at(progress: float, base_lr: float, warmup: float) -> float:
    """Linear warm-up over the first ``warmup`` fraction, then linear decay to 0 at progress 1."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return base_lr * progress / warmup
    return base_lr * max(0.0, 1.0 - progress) / (1.0 - warmup)


def epoch_examples(n_examples: int, seed: int, epoch: int, per_epoch: int | None) -> list[int]:
    """The examples of one epoch: a full permutation, or the ``epoch``-th slice of ``per_epoch`` taken
    from an endless sequence of permutations (so short epochs still cover all the data in turn)."""
    if per_epoch is None:
        return _permutation(n_examples, seed, epoch)
    start = epoch * per_epoch
    out: list[int] = []
    cycle, offset = divmod(start, n_examples)
    while len(out) < per_epoch:
        perm = _permutation(n_examples, seed, cycle)
        out += perm[offset : offset + per_epoch - len(out)]
        cycle, offset = cycle + 1, 0
    return out


def _permutation(n: int, seed: int, cycle: int) -> list[int]:
    order = list(range(n))
    random.Random(f"{seed}:{cycle}").shuffle(order)  # noqa: S311 - shuffling, not secrets
    return order


def augment_batch(batch: Batch, fraction: float, rng: random.Random) -> Batch:
    """Add rows ``anchor ~ spam_edit(anchor)`` for about ``fraction`` of the rows (same cluster)."""
    if fraction <= 0:
        return batch
    rows = len(batch.anchors)
    chosen = [i for i in range(rows) if rng.random() < fraction]
    if not chosen:
        return batch
    anchors = batch.anchors + [batch.anchors[i] for i in chosen]
    edited = [spam_edit(batch.anchors[i], rng) for i in chosen]
    clusters = batch.anchor_clusters + [batch.anchor_clusters[i] for i in chosen]
    return Batch(
        anchors=anchors,
        candidates=batch.candidates[:rows] + edited + batch.candidates[rows:],
        anchor_clusters=clusters,
        candidate_clusters=clusters + batch.candidate_clusters[rows:],
    )


def code_version() -> str:
    """twinflag's version and, inside a git checkout, the commit (``-dirty`` with local changes)."""
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty"],  # noqa: S607 - git from PATH, read-only
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+{described}" if described else __version__


# ---------------------------------------------------------------------------------------------
# Model set-up


@dataclass
class Initial:
    """An encoder ready to train, and what its manifest will say about where it came from."""

    module: nn.Module
    tokenizer: Tokenizer
    params: TransformerParams | BiLSTMParams
    dim: int
    max_tokens: int
    base_model: str | None
    extra_files: dict[str, str | bytes] = field(default_factory=dict)
    pretrained: bool = True


def init_model(settings: TrainSettings, data: TrainingSet) -> Initial:
    """The encoder to start from: see the module docstring, step 2."""
    if settings.arch == "bilstm":
        if settings.init is not None:
            return _from_model_dir(settings.init)
        sizes = settings.bilstm
        tokenizer = train_wordpiece(data.texts, vocab_size=sizes.vocab_size)
        params = BiLSTMParams(
            vocab_size=tokenizer.get_vocab_size(),
            embedding_dim=sizes.embedding_dim,
            hidden_size=sizes.hidden_size,
            num_layers=sizes.num_layers,
            dropout=sizes.dropout,
        )
        module = BiLSTMEncoder(params, sizes.dim, pad_token_id=0)
        return Initial(module, tokenizer, params, sizes.dim, 128, None, pretrained=False)
    from worker.model.pretrained import default_base_model

    source = settings.init if settings.init is not None else default_base_model()
    if (source / "manifest.json").is_file():
        return _from_model_dir(source)
    parts = from_sentence_transformer(source)
    return Initial(
        parts.module,
        parts.tokenizer,
        parts.params,
        parts.params.hidden_size,
        parts.max_tokens,
        parts.base_model,
        {CONFIG_FILE: parts.config_json},
    )


def _from_model_dir(path: Path) -> Initial:
    manifest, module, tokenizer = load_model_dir(path)
    extra: dict[str, str | bytes] = {}
    if manifest.architecture == "transformer":
        extra[CONFIG_FILE] = (path / CONFIG_FILE).read_text(encoding="utf-8")
    return Initial(
        module,
        tokenizer,
        manifest.hyperparameters,
        manifest.dim,
        manifest.max_tokens,
        manifest.version,
        extra,
    )


def freeze(module: nn.Module, layers: int) -> None:
    """Transformer only: freeze the embeddings and the first ``layers`` layers (-1 freezes nothing).

    Saves CPU time (no gradient below the first trainable layer, no Adam state for the 30k×384
    word embeddings) and keeps a gentle fine-tune from drifting far from the base model.
    """
    if not isinstance(module, TransformerEncoder) or layers < 0:
        return
    module.bert.embeddings.requires_grad_(False)
    encoder_layers = module.bert.encoder.layer
    for layer in encoder_layers[: min(layers, len(encoder_layers) - 1)]:  # the top layer always trains
        layer.requires_grad_(False)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the weights on CPU (``state_dict`` alone aliases the live parameters on CPU)."""
    return {name: value.detach().to("cpu", copy=True) for name, value in module.state_dict().items()}


def clone_tokenizer(tokenizer: Tokenizer, max_tokens: int) -> Tokenizer:
    return configure_tokenizer(Tokenizer.from_str(tokenizer.to_str()), max_tokens)


# ---------------------------------------------------------------------------------------------
# Checkpoints: safetensors for tensors, JSON for the rest (nothing pickled)


@dataclass
class RunState:
    """Where a run is; what a checkpoint restores besides tensors."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    elapsed_s: float = 0.0
    examples_seen: int = 0
    best_score: float = -math.inf
    best_step: int = -1
    history: list[dict[str, float]] = field(default_factory=list)
    mined: dict[int, list[int]] = field(default_factory=dict)
    mined_epoch: int = -1


def save_checkpoint(
    run_dir: Path,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: RunState,
    best: dict[str, torch.Tensor] | None,
    settings_json: str,
) -> None:
    """Write ``run_dir/checkpoint`` atomically: weights, optimizer, best weights, RNG, state."""
    tmp = run_dir / "checkpoint.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(state_tensors(module), str(tmp / "model.safetensors"))
    if best is not None:
        save_file(best, str(tmp / "best.safetensors"))
    opt = optimizer.state_dict()
    tensors = {
        f"{index}.{key}": value.detach().cpu().contiguous()
        for index, slot in opt["state"].items()
        for key, value in slot.items()
        if isinstance(value, torch.Tensor)
    }
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    meta = {
        "state": {**state.__dict__, "mined": {str(k): v for k, v in state.mined.items()}},
        "param_groups": opt["param_groups"],
        "settings": json.loads(settings_json),
    }
    (tmp / "state.json").write_text(json.dumps(meta), encoding="utf-8")
    final = run_dir / "checkpoint"
    if final.exists():
        old = run_dir / "checkpoint.old"
        final.rename(old)
        tmp.rename(final)
        for file in old.iterdir():
            file.unlink()
        old.rmdir()
    else:
        tmp.rename(final)


def load_checkpoint(
    run_dir: Path, module: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[RunState, dict[str, torch.Tensor] | None]:
    """Restore what ``save_checkpoint`` wrote; returns the run state and the best weights."""
    folder = run_dir / "checkpoint"
    meta = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    module.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    tensors = load_file(str(folder / "optimizer.safetensors"))
    torch.set_rng_state(tensors.pop("rng.torch"))
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        slots.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": slots, "param_groups": meta["param_groups"]})
    raw = meta["state"]
    raw["mined"] = {int(k): v for k, v in raw["mined"].items()}
    best_file = folder / "best.safetensors"
    best = load_file(str(best_file)) if best_file.is_file() else None
    return RunState(**raw), best


# ---------------------------------------------------------------------------------------------
# Evaluation on the dev set


def dev_metrics(
    module: nn.Module,
    tokenizer: Tokenizer,
    pairs: Sequence[Pair],
    device: str,
    autocast_dtype: torch.dtype | None,
) -> tuple[Metrics, np.ndarray]:
    """Metrics (and the scores) of the module on labelled pairs; the module is left in train mode."""
    module.eval()
    scores = score_pairs(
        lambda texts: embed_texts(
            module,
            tokenizer,
            texts,
            pad_token_id=_pad_id(tokenizer),
            device=device,
            autocast_dtype=autocast_dtype,
        ),
        [p.text_a for p in pairs],
        [p.text_b for p in pairs],
    )
    module.train()
    return evaluate_scores(scores, [p.label for p in pairs]), scores


def _pad_id(tokenizer: Tokenizer) -> int:
    pad = tokenizer.token_to_id("[PAD]")
    return 0 if pad is None else int(pad)


def calibrate(
    scores: np.ndarray,
    labels: Sequence[int],
    target_precision: float,
    name: str,
) -> tuple[Thresholds, Metrics]:
    """Thresholds for the manifest from dev scores: the target-precision one decides."""
    metrics = evaluate_scores(scores, labels)
    choice = choose_threshold(scores, labels, target_precision)
    if not choice.met:
        log.warning("target precision not reached", target=target_precision, precision=choice.precision)
    thresholds = Thresholds(
        decision=round(choice.threshold, 6),
        target_precision=target_precision,
        precision=choice.precision,
        recall=choice.recall,
        best_f1=metrics.best_f1,
        best_f1_threshold=metrics.best_f1_threshold,
        calibrated_on=name,
    )
    return thresholds, metrics


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class TrainResult:
    """The manifest written, and the trained module and tokenizer still in memory (CPU, eval mode)."""

    manifest: Manifest
    out: Path
    history: list[dict[str, float]]
    module: nn.Module
    tokenizer: Tokenizer


def load_training_pairs(
    settings: TrainSettings,
) -> tuple[list[Pair], list[FileReport], list[int], dict[str, list[Pair]]]:
    """Training pairs of every file minus its held-out fraction and selection slice, the file index of
    each pair, reports that say how many were used, and the selection slices (labelled ones only)."""
    pairs: list[Pair] = []
    reports: list[FileReport] = []
    sources: list[int] = []
    selection: dict[str, list[Pair]] = {}
    for number, path in enumerate(settings.train):
        more, report = read_pairs(path)
        kept, _ = split_holdout(more, settings.holdout)
        if settings.select_split > 0:
            kept, chosen = split_selection(kept, settings.holdout, settings.select_split)
            if {p.label for p in chosen} == {0, 1}:  # AP needs both kinds
                selection[f"{path.parent.name}/{path.name} selection slice"] = chosen
        report.used = len(kept)
        pairs += kept
        sources += [number] * len(kept)
        reports.append(report)
        log.info(
            "pairs read",
            file=report.name,
            rows=report.rows,
            bad_rows=report.bad_rows,
            bad=dict(report.bad),
            used=len(kept),
        )
    return pairs, reports, sources, selection


def train(settings: TrainSettings, *, progress: bool = True) -> TrainResult:
    """Train, select on dev, calibrate, export. See the module docstring for the steps."""
    started = time.monotonic()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    random.seed(settings.seed)
    np.random.seed(settings.seed)  # any library code that draws from numpy's global RNG
    torch.manual_seed(settings.seed)
    device = pick_device(settings.device)
    autocast_dtype = None
    if device == "cuda":
        autocast_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    # 1. data
    if not settings.train:
        raise ValueError("no training files given")
    pairs, reports, sources, selection = load_training_pairs(settings)
    dev_pairs: list[Pair] = []
    dev_report: FileReport | None = None
    if settings.dev is not None:
        dev_pairs, dev_report = read_pairs(settings.dev)
        if settings.dev_train_split > 0:
            trained, dev_pairs = split_dev(dev_pairs, settings.dev_train_split)
            pairs += trained
            sources += [len(reports)] * len(trained)
            reports.append(dataclasses.replace(dev_report, used=len(trained)))
            dev_report.used = len(dev_pairs)
            log.info("dev pairs trained on", file=dev_report.name, trained=len(trained), kept=len(dev_pairs))
    data = build_training_set(pairs, sources)
    if not data.examples:
        raise ValueError("the training files hold no duplicate pairs")
    pair_weight = settings.effective_pair_loss_weight
    pools = labelled_pools(pairs, sources) if pair_weight > 0 else []
    log.info(
        "training set",
        distinct_posts=len(data.texts),
        examples=len(data.examples),
        clusters_with_hard_negatives=len(data.hard_negatives),
        conflicts=data.conflicts,
        labelled_pools=[len(pool) for pool in pools],
    )
    dev_name = Path(dev_report.name).name if dev_report is not None and dev_pairs else None
    # model selection: the dev set and each training file's selection slice, best mean AP wins
    select_sets = {dev_name: dev_pairs} if dev_name is not None else {}
    select_sets.update(selection)
    select_sets = {k: sample_pairs(v, settings.dev_max_pairs, settings.seed) for k, v in select_sets.items()}
    select_pairs = [p for pairs_of_set in select_sets.values() for p in pairs_of_set]
    select_texts = len({t for p in select_pairs for t in (p.text_a, p.text_b)})
    # the threshold's pairs: the dev set; without one, the selection slices (never trained on either)
    if dev_name is not None:
        calibrate_on, calibrate_name = dev_pairs, dev_name
    else:
        calibrate_on = [p for pairs_of_set in selection.values() for p in pairs_of_set]
        calibrate_name = " + ".join(selection)
    calibrate_pairs = min(len(calibrate_on), settings.calibrate_max_pairs or len(calibrate_on))

    # 2. model
    initial = init_model(settings, data)
    module = initial.module.to(device)
    freeze(module, settings.freeze_layers)
    module.train()
    train_tokenizer = clone_tokenizer(initial.tokenizer, min(settings.train_max_tokens, initial.max_tokens))
    eval_tokenizer = clone_tokenizer(initial.tokenizer, initial.max_tokens)
    pad_id = _pad_id(initial.tokenizer)
    trainable = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.effective_lr, weight_decay=settings.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype == torch.float16)
    loss_fn = LOSSES[settings.loss]
    margin = settings.margin if settings.margin is not None else DEFAULT_MARGINS[settings.loss]
    run_dir = settings.effective_run_dir
    settings_json = settings.model_dump_json()

    state = RunState()
    best: dict[str, torch.Tensor] | None = None
    if settings.resume and (run_dir / "checkpoint" / "state.json").is_file():
        state, best = load_checkpoint(run_dir, module, optimizer)
        log.info("resumed", run_dir=str(run_dir), step=state.step, epoch=state.epoch)

    speed = 100.0  # texts/s of evaluation, measured at every dev evaluation; sizes the time budgets

    def evaluate_now(label: str) -> None:
        nonlocal best, speed
        if not select_pairs:
            return
        tick = time.monotonic()
        per_set = {
            name: dev_metrics(module, eval_tokenizer, pairs_of_set, device, autocast_dtype)[0]
            for name, pairs_of_set in select_sets.items()
        }
        speed = select_texts / max(time.monotonic() - tick, 1e-3)
        score = float(np.mean([m.primary for m in per_set.values()]))
        first = next(iter(per_set.values()))
        entry: dict[str, float] = {"step": state.step, "epoch": state.epoch, **first.as_dict()}
        if len(per_set) > 1:
            entry["selection_score"] = score
            entry.update({f"ap {name}": m.average_precision for name, m in per_set.items()})
        state.history.append(entry)
        improved = score > state.best_score
        if improved:
            state.best_score, state.best_step = score, state.step
            best = snapshot(module)
        log.info(
            "dev",
            at=label,
            step=state.step,
            selection_score=round(score, 4),
            average_precision={name: round(m.average_precision, 4) for name, m in per_set.items()},
            kept=improved,
        )

    # 3. the starting point is a candidate too: a fine-tune that does not beat it is not kept
    if state.step == 0 and initial.pretrained:
        evaluate_now("start")

    # 4. epochs, within the time left: a deadline keeps room for the final calibration and export
    time_budget = settings.time_budget_s
    if settings.deadline_s is not None:
        left = settings.deadline_s - (time.monotonic() - started) - _final_cost(calibrate_pairs, speed)
        time_budget = max(0.0, left if time_budget is None else min(time_budget, left))
    mine_pool = settings.mine_pool
    if time_budget is not None:  # mining may take a tenth of each epoch's time
        mine_pool = min(mine_pool, max(500, int(0.1 * time_budget / settings.epochs * speed)))
    per_epoch = settings.examples_per_epoch or len(data.examples)
    steps_per_epoch = math.ceil(per_epoch / settings.batch_size)
    planned = settings.epochs * steps_per_epoch
    if settings.max_steps is not None:
        planned = min(planned, settings.max_steps)
    bar = tqdm(
        total=planned,
        initial=state.step,
        disable=not progress,
        file=sys.stderr,
        unit="step",
        dynamic_ncols=True,
    )
    clock = time.monotonic() - state.elapsed_s
    stop = False

    def progress_now() -> float:
        """Fraction of training done: by steps, or by the time budget when that runs out first."""
        fraction = state.step / planned
        if time_budget is not None:
            fraction = max(fraction, (time.monotonic() - clock) / max(time_budget, 1e-9))
        return fraction

    while state.epoch < settings.epochs and not stop:
        if progress_now() >= 1.0:
            stop = True
            break
        if _mine_due(settings, initial.pretrained, state):
            state.mined = mine_for_epoch(
                module, eval_tokenizer, data, settings, mine_pool, state.epoch, device, autocast_dtype
            )
            state.mined_epoch = state.epoch
        order = epoch_examples(len(data.examples), settings.seed, state.epoch, settings.examples_per_epoch)
        if settings.batch_by_source:
            runs_seed = f"{settings.seed}:{state.epoch}:runs"
            order = group_by_source(order, data.sources, settings.batch_size, runs_seed)
        batch_rng = random.Random(f"{settings.seed}:{state.epoch}:batches")  # noqa: S311 - not secrets
        batches = make_batches(
            data, order, settings.batch_size, batch_rng, settings.hard_negatives, state.mined
        )
        for index in range(state.batch_in_epoch, len(batches)):
            aug_rng = random.Random(f"{settings.seed}:{state.epoch}:{index}:aug")  # noqa: S311 - not secrets
            batch = augment_batch(batches[index], settings.augment, aug_rng)
            fraction = progress_now()
            if fraction >= 1.0:
                stop = True
                break
            for group in optimizer.param_groups:
                group["lr"] = lr_at(fraction, settings.effective_lr, settings.warmup)
            pair_seed = f"{settings.seed}:{state.epoch}:{index}"
            pair_batch = pair_batch_for(pools, settings.pair_batch_size, pair_seed)
            pair_term = PairTerm(pair_batch, pair_weight, settings.pair_scale) if pair_batch else None
            tick = time.monotonic()
            loss = train_step(
                module,
                train_tokenizer,
                pad_id,
                batch,
                loss_fn,
                margin,
                optimizer,
                scaler,
                device,
                autocast_dtype,
                pair_term,
            )
            state.step += 1
            state.batch_in_epoch = index + 1
            state.examples_seen += len(batch.anchors)
            bar.update(1)
            bar.set_postfix(
                loss=f"{loss:.4f}",
                ex_s=f"{len(batch.anchors) / (time.monotonic() - tick):.1f}",
                epoch=state.epoch,
            )
            if settings.eval_every and state.step % settings.eval_every == 0:
                evaluate_now("step")
            if state.step % settings.checkpoint_every == 0:
                state.elapsed_s = time.monotonic() - clock
                save_checkpoint(run_dir, module, optimizer, state, best, settings_json)
        else:
            state.epoch += 1
            state.batch_in_epoch = 0
            evaluate_now("epoch")
    bar.close()
    if stop and (not state.history or state.history[-1]["step"] != state.step):
        evaluate_now("stop")
    state.elapsed_s = time.monotonic() - clock
    if settings.checkpoint_every <= state.step:
        save_checkpoint(run_dir, module, optimizer, state, best, settings_json)

    # 5. best weights, threshold, export
    if best is not None:
        module.load_state_dict(best)
    module.eval()
    if settings.deadline_s is not None:  # shrink the calibration sample rather than miss the deadline
        left = settings.deadline_s - (time.monotonic() - started) - _final_cost(0, speed)
        calibrate_pairs = min(calibrate_pairs, max(500, int(left * speed / 2 / 1.3)))
    thresholds, metrics = _final_thresholds(
        module,
        eval_tokenizer,
        calibrate_on,
        calibrate_name,
        calibrate_pairs,
        settings.target_precision,
        settings.seed,
        device,
        autocast_dtype,
    )
    manifest = Manifest(
        architecture=settings.arch,
        hyperparameters=initial.params,
        dim=initial.dim,
        max_tokens=initial.max_tokens,
        pooling="mean" if settings.arch == "transformer" else "mean_max",
        pad_token_id=pad_id,
        thresholds=thresholds,
        base_model=initial.base_model,
        training_data=[r.fingerprint() for r in reports],
        dev_data=dev_report.fingerprint() if dev_report else None,
        dev_metrics=metrics.as_dict() if metrics else {},
        training={
            "loss": settings.loss,
            "margin": margin,
            "lr": settings.effective_lr,
            "batch_size": settings.batch_size,
            "batch_by_source": settings.batch_by_source,
            "hard_negatives": settings.hard_negatives,
            "mine": settings.mine,
            "augment": settings.augment,
            "pair_loss_weight": pair_weight,
            "pair_batch_size": settings.pair_batch_size,
            "pair_scale": settings.pair_scale,
            "dev_train_split": settings.dev_train_split,
            "epochs": settings.epochs,
            "steps": state.step,
            "examples_seen": state.examples_seen,
            "best_step": state.best_step,
            "holdout": settings.holdout,
            "seed": settings.seed,
            "train_max_tokens": settings.train_max_tokens,
            "freeze_layers": settings.freeze_layers,
            "selection": "mean average precision over "
            + ", ".join(f"{name} ({len(v)} pairs)" for name, v in select_sets.items()),
            "select_split": settings.select_split,
            "history": [dict(h) for h in state.history],
            "wall_s": round(time.monotonic() - started, 1),
        },
        code_version=code_version(),
    )
    final = save_model_dir(settings.out, manifest, module.cpu(), initial.tokenizer, initial.extra_files)
    log.info(
        "model written",
        out=str(settings.out),
        version=final.version,
        steps=state.step,
        best_step=state.best_step,
        threshold=thresholds.decision,
        dev_average_precision=round(metrics.average_precision, 4) if metrics else None,
        wall_s=round(time.monotonic() - started, 1),
    )
    return TrainResult(final, settings.out, state.history, module, initial.tokenizer)


def _mine_due(settings: TrainSettings, pretrained: bool, state: RunState) -> bool:
    """Mine before every epoch once the model knows something: from epoch 0 when it starts pretrained."""
    if not settings.mine or settings.hard_negatives == 0 or settings.mine_pool == 0:
        return False
    if state.mined_epoch == state.epoch:
        return False  # resumed mid-epoch: the checkpoint carries this epoch's negatives
    return state.epoch >= (0 if pretrained else 1)


def _final_cost(pairs: int, speed: float) -> float:
    """Seconds the final calibration (two texts a pair, with a third of slack) and export take."""
    return 2 * pairs / max(speed, 1.0) * 1.3 + 30.0


def _final_thresholds(
    module: nn.Module,
    tokenizer: Tokenizer,
    calibrate_on: Sequence[Pair],
    name: str,
    max_pairs: int,
    target_precision: float,
    seed: int,
    device: str,
    autocast_dtype: torch.dtype | None,
) -> tuple[Thresholds, Metrics | None]:
    if not calibrate_on:
        log.warning(
            "no dev set or selection slice: shipping the uncalibrated default threshold",
            threshold=DEFAULT_THRESHOLD,
        )
        return Thresholds(decision=DEFAULT_THRESHOLD), None
    pairs = sample_pairs(calibrate_on, max_pairs, seed + 1)
    metrics, scores = dev_metrics(module, tokenizer, pairs, device, autocast_dtype)
    module.eval()
    labels = [p.label for p in pairs]
    return calibrate(scores, labels, target_precision, name)[0], metrics


DEFAULT_THRESHOLD = 0.8  # shipped only when there are no labelled pairs kept out of training


def mine_for_epoch(
    module: nn.Module,
    tokenizer: Tokenizer,
    data: TrainingSet,
    settings: TrainSettings,
    pool_size: int,
    epoch: int,
    device: str,
    autocast_dtype: torch.dtype | None,
) -> dict[int, list[int]]:
    """Embed a pool (this epoch's anchors and positives, then random texts) and mine negatives for it."""
    tick = time.monotonic()
    order = epoch_examples(len(data.examples), settings.seed, epoch, settings.examples_per_epoch)
    pool: dict[int, None] = {}
    anchors: list[int] = []
    for k in order:
        if len(pool) + 2 > pool_size:
            break
        a, p = data.examples[k]
        pool.setdefault(a)
        pool.setdefault(p)
        anchors.append(k)
    rng = random.Random(f"{settings.seed}:{epoch}:pool")  # noqa: S311 - sampling, not secrets
    others = [
        t
        for t in rng.sample(range(len(data.texts)), min(len(data.texts), settings.mine_pool))
        if t not in pool
    ]
    for t in others[: max(0, pool_size - len(pool))]:
        pool.setdefault(t)
    rows = list(pool)
    row_of = {t: i for i, t in enumerate(rows)}
    module.eval()
    vectors = embed_texts(
        module,
        tokenizer,
        [data.texts[t] for t in rows],
        pad_token_id=_pad_id(tokenizer),
        device=device,
        autocast_dtype=autocast_dtype,
    )
    module.train()
    anchor_rows = [row_of[data.examples[k][0]] for k in anchors]
    positive_rows = [row_of[data.examples[k][1]] for k in anchors]
    positive_scores = (vectors[anchor_rows] * vectors[positive_rows]).sum(1)
    found = mine_hard_negatives(
        vectors,
        [data.clusters[t] for t in rows],
        anchor_rows,
        positive_scores.tolist(),
        k=settings.mine_k,
        max_relative=settings.mine_max_relative,
    )
    mined = {cluster: [rows[i] for i in found_rows] for cluster, found_rows in found.items()}
    log.info(
        "mined", epoch=epoch, pool=len(rows), clusters=len(mined), seconds=round(time.monotonic() - tick, 1)
    )
    return mined


def forward_by_length(
    module: nn.Module,
    ids: Sequence[Sequence[int]],
    pad_id: int,
    device: str,
    autocast_dtype: torch.dtype | None,
    chunk_tokens: int = 2048,
) -> torch.Tensor:
    """Embeddings (with gradients) of token id lists, in their order, run in chunks of similar length.

    One padded batch of a hundred texts wastes most of its compute on padding when lengths vary
    (tweets next to news sentences); sorted chunks cut that waste on CPU.
    """
    from worker.model.encode import token_batches
    from worker.model.modules import pad_batch

    pieces: list[torch.Tensor] = []
    order: list[int] = []
    for chunk in token_batches([len(row) for row in ids], chunk_tokens, len(ids)):
        input_ids, mask = pad_batch([ids[i] for i in chunk], pad_id)
        autocast = (
            torch.autocast("cuda", dtype=autocast_dtype)
            if autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            pieces.append(module(input_ids.to(device), mask.to(device)).float())
        order += chunk
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return torch.cat(pieces)[inverse.to(device)]


@dataclass(frozen=True)
class PairTerm:
    """Labelled pairs of one step for the pair ranking term, its weight and scale."""

    pairs: Sequence[Pair]
    weight: float
    scale: float


def pair_batch_for(pools: Sequence[Sequence[Pair]], size: int, seed: str) -> list[Pair]:
    """``size`` labelled pairs from one pool, the pool chosen uniformly: a small labelled file (the
    trained part of the dev set) weighs as much as a large one (odds ∝ √size did worse on every
    evaluation set: bench/TRAINING.md). Fixed by ``seed``, so a resumed run replays it."""
    if not pools:
        return []
    rng = random.Random(f"{seed}:pairs")  # noqa: S311 - sampling, not secrets
    pool = pools[rng.randrange(len(pools))]
    return rng.sample(pool, min(size, len(pool)))


def train_step(
    module: nn.Module,
    tokenizer: Tokenizer,
    pad_id: int,
    batch: Batch,
    loss_fn: Any,
    margin: float,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: str,
    autocast_dtype: torch.dtype | None,
    pair_term: PairTerm | None = None,
) -> float:
    """One optimisation step on one batch (and, with ``pair_term``, its labelled pairs); returns the loss."""
    texts = batch.anchors + batch.candidates
    if pair_term is not None:
        texts += [p.text_a for p in pair_term.pairs] + [p.text_b for p in pair_term.pairs]
    ids = [e.ids for e in tokenizer.encode_batch(texts)]
    vectors = forward_by_length(module, ids, pad_id, device, autocast_dtype)
    rows = len(batch.anchors)
    anchor, candidates = vectors[:rows], vectors[rows : rows + len(batch.candidates)]
    mask_neg = negative_mask(
        torch.tensor(batch.anchor_clusters, device=device),
        torch.tensor(batch.candidate_clusters, device=device),
    )
    loss = loss_fn(anchor, candidates[:rows], candidates, mask_neg, margin)
    if pair_term is not None:
        n = len(pair_term.pairs)
        left, right = vectors[-2 * n : -n], vectors[-n:]
        labels = torch.tensor([p.label for p in pair_term.pairs], device=device)
        loss = loss + pair_term.weight * pair_ranking_loss((left * right).sum(-1), labels, pair_term.scale)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.requires_grad], 1.0)
    scaler.step(optimizer)
    scaler.update()
    return float(loss.detach())
