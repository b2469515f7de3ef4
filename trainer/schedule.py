"""When things happen in a run: pure functions of the step, the epoch, the seed and the clock readings.

- the learning rate at a point of training (``lr_at``), and how far training is (``progress``);
- which examples an epoch visits, in which order (``epoch_examples``), and whether it mines first;
- the time budget: with a deadline for the whole run, training ends in time for the final calibration
  and export, measured by the evaluation speed (texts/s) seen so far. Mining gets a tenth of each
  epoch's time, and the calibration sample shrinks rather than miss the deadline.

Everything is fixed by ``(seed, epoch)``, so a resumed run replays the same order.
"""

from __future__ import annotations

import math
import random

from trainer.settings import TrainSettings

MIN_MINE_POOL = 500  # texts: a deadline never cuts the mining pool below this
MIN_CALIBRATE_PAIRS = 500  # nor the final calibration sample below this


def lr_at(progress: float, base_lr: float, warmup: float) -> float:
    """Linear warm-up over the first ``warmup`` fraction, then linear decay to 0 at progress 1."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return base_lr * progress / warmup
    return base_lr * max(0.0, 1.0 - progress) / (1.0 - warmup)


def planned_steps(settings: TrainSettings, n_examples: int) -> int:
    """Steps of the whole run: every epoch's batches, or ``max_steps`` when that comes first."""
    per_epoch = settings.examples_per_epoch or n_examples
    planned = settings.epochs * math.ceil(per_epoch / settings.batch_size)
    return planned if settings.max_steps is None else min(planned, settings.max_steps)


def progress(step: int, planned: int, trained_s: float, budget_s: float | None) -> float:
    """Fraction of training done: by steps, or by the time budget when that runs out first."""
    fraction = step / planned
    if budget_s is not None:
        fraction = max(fraction, trained_s / max(budget_s, 1e-9))
    return fraction


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


def mine_due(settings: TrainSettings, pretrained: bool, epoch: int, mined_epoch: int) -> bool:
    """Mine before every epoch once the model knows something: from epoch 0 when it starts pretrained."""
    if not settings.mine or settings.hard_negatives == 0 or settings.mine_pool == 0:
        return False
    if mined_epoch == epoch:
        return False  # resumed mid-epoch: the checkpoint carries this epoch's negatives
    return epoch >= (0 if pretrained else 1)


def final_cost(pairs: int, speed: float) -> float:
    """Seconds the final calibration (two texts a pair, with a third of slack) and export take."""
    return 2 * pairs / max(speed, 1.0) * 1.3 + 30.0


def training_budget(
    settings: TrainSettings, elapsed_s: float, calibrate_pairs: int, speed: float
) -> float | None:
    """Seconds training may take: ``time_budget_s``, cut so a deadline leaves room for the final steps."""
    budget = settings.time_budget_s
    if settings.deadline_s is not None:
        left = settings.deadline_s - elapsed_s - final_cost(calibrate_pairs, speed)
        budget = max(0.0, left if budget is None else min(budget, left))
    return budget


def mine_pool_within(settings: TrainSettings, budget_s: float | None, speed: float) -> int:
    """Texts to embed for mining each epoch: ``mine_pool``, or what a tenth of an epoch's time allows."""
    if budget_s is None:
        return settings.mine_pool
    return min(settings.mine_pool, max(MIN_MINE_POOL, int(0.1 * budget_s / settings.epochs * speed)))


def calibration_pairs_within(pairs: int, deadline_s: float | None, elapsed_s: float, speed: float) -> int:
    """Pairs the final calibration may score and still meet the deadline (no fewer than the minimum)."""
    if deadline_s is None:
        return pairs
    left = deadline_s - elapsed_s - final_cost(0, speed)
    return min(pairs, max(MIN_CALIBRATE_PAIRS, int(left * speed / 2 / 1.3)))
