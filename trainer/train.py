"""Pairs → a trained twin encoder → a model directory. Reads top to bottom: ``train`` is the whole story.

1. Load the pair files (bad rows counted), hold out a fixed fraction, add the trained part of the dev
   file (``dev_train_split``), build duplicate clusters (``trainer.splits``, ``trainer.batches``).
2. Build the encoder: the transformer from a sentence-transformers (or model) directory, or the
   bilstm from scratch with a WordPiece vocabulary learnt from the training texts (``trainer.model``).
3. Score the starting point on the dev sample: fine-tuning must beat it to be kept.
4. Each epoch: mine hard negatives with the current model, lay out batches (in-batch negatives +
   hard negatives + optional spam-edited positives; with ``pair_loss_weight``, also labelled pairs of
   one file for the pair ranking term), step with AdamW under the LR schedule, evaluate
   on the dev sample (also every ``eval_every`` steps), keep the best weights, checkpoint.
5. Restore the best weights, calibrate the threshold on the dev set (without one: on the training
   files' selection slices), write the model directory.

One forward pass per step embeds the anchors and all candidates together (``trainer.step``). On CUDA
it runs under bf16 autocast (fp16 with a gradient scaler where bf16 is missing). On CPU a run with a
seed and no time budget is reproducible.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn
from tqdm import tqdm

from trainer import schedule
from trainer.augment import augment_batch
from trainer.batches import build_training_set, group_by_source, labelled_pools, make_batches, pair_batch_for
from trainer.card import model_card, model_readme, training_record
from trainer.checkpoint import RunState, has_checkpoint, load_checkpoint, save_checkpoint, snapshot
from trainer.losses import LOSSES
from trainer.mine import mine_for_epoch
from trainer.model import autocast_dtype_for, clone_tokenizer, freeze, init_model
from trainer.selection import Selection, final_thresholds
from trainer.settings import TrainSettings
from trainer.splits import plan_data
from trainer.step import PairTerm, train_step
from worker.core.logs import get_logger
from worker.model.directory import save_model_dir
from worker.model.encode import pick_device
from worker.model.manifest import Manifest
from worker.model.tokenizer import pad_token_id

log = get_logger("trainer")


@dataclass
class TrainResult:
    """The manifest written, and the trained module and tokenizer still in memory (CPU, eval mode)."""

    manifest: Manifest
    out: Path
    history: list[dict[str, float]]
    module: nn.Module
    tokenizer: Tokenizer


def train(settings: TrainSettings, *, progress: bool = True) -> TrainResult:
    """Train, select on dev, calibrate, export. See the module docstring for the steps."""
    started = time.monotonic()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    random.seed(settings.seed)
    np.random.seed(settings.seed)  # any library code that draws from numpy's global RNG
    torch.manual_seed(settings.seed)
    device = pick_device(settings.device)
    autocast_dtype = autocast_dtype_for(device)

    # 1. data
    plan = plan_data(settings)
    data = build_training_set(plan.pairs, plan.sources)
    if not data.examples:
        raise ValueError("the training files hold no duplicate pairs")
    pair_weight = settings.effective_pair_loss_weight
    pools = labelled_pools(plan.pairs, plan.sources) if pair_weight > 0 else []
    log.info(
        "training_set",
        distinct_posts=len(data.texts),
        examples=len(data.examples),
        clusters_with_hard_negatives=len(data.hard_negatives),
        conflicts=data.conflicts,
        labelled_pools=[len(pool) for pool in pools],
    )

    # 2. model
    initial = init_model(settings, data)
    module = initial.module.to(device)
    freeze(module, settings.freeze_layers)
    module.train()
    train_tokenizer = clone_tokenizer(initial.tokenizer, min(settings.train_max_tokens, initial.max_tokens))
    eval_tokenizer = clone_tokenizer(initial.tokenizer, initial.max_tokens)
    pad_id = pad_token_id(initial.tokenizer)
    trainable = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.effective_lr, weight_decay=settings.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype == torch.float16)
    loss = LOSSES[settings.loss]
    margin = settings.margin if settings.margin is not None else loss.margin
    run_dir = settings.effective_run_dir
    settings_json = settings.model_dump_json()

    state = RunState()
    best: dict[str, torch.Tensor] | None = None
    if settings.resume and has_checkpoint(run_dir):
        state, best = load_checkpoint(run_dir, module, optimizer)
        log.info("resumed", run_dir=str(run_dir), step=state.step, epoch=state.epoch)

    selection = Selection(plan.select_sets)

    def evaluate_now(label: str) -> None:
        nonlocal best
        if selection.evaluate(module, eval_tokenizer, device, autocast_dtype, state, label):
            best = snapshot(module)

    # 3. the starting point is a candidate too: a fine-tune that does not beat it is not kept
    if state.step == 0 and initial.pretrained:
        evaluate_now("start")

    # 4. epochs, within the time left: a deadline keeps room for the final calibration and export
    budget_s = schedule.training_budget(
        settings, time.monotonic() - started, plan.calibrate_pairs, selection.speed
    )
    mine_pool = schedule.mine_pool_within(settings, budget_s, selection.speed)
    planned = schedule.planned_steps(settings, len(data.examples))
    bar = tqdm(
        total=planned,
        initial=state.step,
        disable=None if progress else True,  # None: a bar only on a terminal
        file=sys.stderr,
        unit="step",
        dynamic_ncols=True,
    )
    clock = time.monotonic() - state.elapsed_s

    def progress_now() -> float:
        return schedule.progress(state.step, planned, time.monotonic() - clock, budget_s)

    stop = False
    while state.epoch < settings.epochs and not stop:
        if progress_now() >= 1.0:
            stop = True
            break
        if schedule.mine_due(settings, initial.pretrained, state.epoch, state.mined_epoch):
            state.mined = mine_for_epoch(
                module, eval_tokenizer, data, settings, mine_pool, state.epoch, device, autocast_dtype
            )
            state.mined_epoch = state.epoch
        order = schedule.epoch_examples(
            len(data.examples), settings.seed, state.epoch, settings.examples_per_epoch
        )
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
                group["lr"] = schedule.lr_at(fraction, settings.effective_lr, settings.warmup)
            pair_batch = pair_batch_for(
                pools, settings.pair_batch_size, f"{settings.seed}:{state.epoch}:{index}"
            )
            pair_term = PairTerm(pair_batch, pair_weight, settings.pair_scale) if pair_batch else None
            tick = time.monotonic()
            value = train_step(
                module,
                train_tokenizer,
                pad_id,
                batch,
                loss,
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
                loss=f"{value:.4f}",
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
    calibrate_pairs = schedule.calibration_pairs_within(
        plan.calibrate_pairs, settings.deadline_s, time.monotonic() - started, selection.speed
    )
    thresholds, metrics = final_thresholds(
        module,
        eval_tokenizer,
        plan.calibrate_on,
        plan.calibrate_name,
        calibrate_pairs,
        settings.target_precision,
        settings.seed,
        device,
        autocast_dtype,
    )
    manifest = model_card(
        architecture=settings.arch,
        params=initial.params,
        dim=initial.dim,
        max_tokens=initial.max_tokens,
        tokenizer=initial.tokenizer,
        thresholds=thresholds,
        base_model=initial.base_model,
        training_data=[r.fingerprint() for r in plan.reports],
        dev_data=plan.dev_report.fingerprint() if plan.dev_report else None,
        dev_metrics=metrics.as_dict() if metrics else {},
        training=training_record(settings, margin, state, plan.select_sets, time.monotonic() - started),
        pooling=getattr(module, "pooling", None),  # a transformer keeps its base model's pooling
    )
    final = save_model_dir(
        settings.out, manifest, module.cpu(), initial.tokenizer, initial.extra_files, readme=model_readme
    )
    log.info(
        "model_written",
        out=str(settings.out),
        version=final.version,
        steps=state.step,
        best_step=state.best_step,
        threshold=thresholds.decision,
        dev_average_precision=round(metrics.average_precision, 4) if metrics else None,
        wall_s=round(time.monotonic() - started, 1),
    )
    return TrainResult(final, settings.out, state.history, module, initial.tokenizer)
