"""``TrainSettings``: every knob of a training run, from ``TWINFLAG_TRAIN_*`` and then the command line.

Built once in ``trainer.cli`` (a flag wins over its environment variable, which wins over the default;
the ``train`` subcommand's flags are generated from these fields) and passed down; nothing else in the
trainer reads the environment. The recipe that won in ``bench/train_quality.py`` is these defaults
with the overrides of ``trainer.recipes.default_settings``: what ``python -m trainer default`` runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "TWINFLAG_TRAIN_"


class BiLSTMSettings(BaseModel):
    """Size of the bilstm encoder and of the WordPiece vocabulary learnt for it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    vocab_size: int = Field(default=16000, ge=100, description="WordPiece vocabulary size.")
    embedding_dim: int = Field(default=128, gt=0, description="Token embedding width.")
    hidden_size: int = Field(
        default=128,
        gt=0,
        description="LSTM hidden size per direction (128: 12.6× the transformer's CPU speed here, 192: 8.9×, "
        "at the same AP; bench/TRAINING.md).",
    )
    num_layers: int = Field(default=1, gt=0, description="Stacked LSTM layers.")
    dim: int = Field(default=256, gt=0, description="Output embedding dimension.")
    dropout: float = Field(default=0.1, ge=0, lt=1, description="Dropout on embeddings and pooled vector.")


class TrainSettings(BaseSettings):
    """One training run: data, model, loss, optimisation, evaluation, checkpoints, export."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", frozen=True, extra="forbid", cli_parse_args=False
    )

    # data
    train: list[Path] = Field(default_factory=list, description="Pair files to train on (tsv/csv/jsonl).")
    dev: Path | None = Field(default=None, description="Pair file for model selection and threshold.")
    columns: str | None = Field(
        default=None,
        description="Columns (JSON keys) of the texts and the label in every pair file: A,B[,LABEL] "
        "(default: text_a,text_b,label, or the GLUE, QQP and MRPC names).",
    )
    holdout: float = Field(
        default=0.0, ge=0, lt=1, description="Fraction of each training file held out (by text_a hash)."
    )
    out: Path = Field(default=Path("models/trained"), description="Model directory to write.")
    # model
    arch: Literal["transformer", "bilstm"] = Field(default="transformer", description="Encoder.")
    init: Path | None = Field(
        default=None, description="sentence-transformers or model directory to start from (transformer)."
    )
    bilstm: BiLSTMSettings = Field(default_factory=BiLSTMSettings, description="bilstm sizes.")
    train_max_tokens: int = Field(default=64, gt=2, description="Truncation while training (speed).")
    freeze_layers: int = Field(
        default=2, ge=-1, description="Transformer: freeze embeddings and the first N layers (-1: none)."
    )
    # loss and batches
    loss: str = Field(default="mnr", description="Loss, by its name in trainer/losses.py's LOSSES.")
    margin: float | None = Field(default=None, description="Margin (scale for mnr); unset: the loss's.")
    batch_size: int = Field(default=32, ge=2, description="Anchor/positive rows per step.")
    hard_negatives: int = Field(default=1, ge=0, description="Hard negatives per row (labelled or mined).")
    batch_by_source: bool = Field(
        default=True, description="Fill each batch from one training file: in-batch negatives of its kind."
    )
    pair_loss_weight: float | None = Field(
        default=None,
        ge=0,
        description="Weight of the labelled-pair ranking term (CoSENT) added to each step, which learns from "
        "non-duplicate pairs whose texts have no duplicate in the data; 0: off; unset: 1 (transformer), "
        "0 (bilstm, where it lowered AP: bench/TRAINING.md).",
    )
    pair_batch_size: int = Field(default=32, ge=2, description="Labelled pairs per step for that term.")
    pair_scale: float = Field(default=20.0, gt=0, description="Scale of the pair ranking term.")
    augment: float = Field(default=0.1, ge=0, le=1, description="Rows that get a spam-edited extra positive.")
    mine: bool = Field(default=True, description="Mine hard negatives with the current model each epoch.")
    mine_pool: int = Field(default=6000, ge=0, description="Texts embedded for mining per epoch.")
    mine_k: int = Field(default=3, ge=1, description="Mined negatives kept per cluster.")
    mine_max_relative: float = Field(
        default=0.95, gt=0, le=1, description="Skip candidates above this × the positive's score."
    )
    # optimisation
    epochs: int = Field(default=1, ge=1, description="Epochs.")
    examples_per_epoch: int | None = Field(default=None, ge=1, description="Examples per epoch (unset: all).")
    lr: float | None = Field(
        default=None, gt=0, description="Peak learning rate; unset: 2e-5 / 2e-3 (bilstm)."
    )
    warmup: float = Field(default=0.1, ge=0, lt=1, description="Fraction of training spent warming up.")
    weight_decay: float = Field(default=0.01, ge=0, description="AdamW weight decay.")
    max_steps: int | None = Field(default=None, ge=1, description="Stop after this many steps.")
    time_budget_s: float | None = Field(
        default=None, gt=0, description="Training wall-clock budget; the LR schedule ends with it."
    )
    deadline_s: float | None = Field(
        default=None, gt=0, description="Whole-run budget: training stops in time to calibrate and export."
    )
    seed: int = Field(default=0, description="Seed: runs on CPU without a time budget are reproducible.")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="`auto`: CUDA when present.")
    threads: int | None = Field(default=None, ge=1, description="torch CPU threads (unset: torch's choice).")
    # evaluation and export
    select_split: float = Field(
        default=0.0,
        ge=0,
        lt=0.5,
        description="A further fraction of each training file kept out of training for model selection "
        "(with the dev set: the best mean average precision wins).",
    )
    dev_train_split: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="A fraction of the dev file (by text_a hash) trained on as labelled pairs; the rest "
        "stays the dev set for selection and the threshold.",
    )
    dev_max_pairs: int | None = Field(default=2000, ge=10, description="Dev pairs for per-epoch selection.")
    calibrate_max_pairs: int | None = Field(
        default=None, ge=10, description="Dev pairs for the final threshold and metrics (unset: all)."
    )
    eval_every: int | None = Field(default=None, ge=1, description="Also evaluate every N steps.")
    target_precision: float = Field(
        default=0.95, gt=0, le=1, description="Precision the threshold must meet."
    )
    # checkpoints
    run_dir: Path | None = Field(default=None, description="Checkpoints (unset: runs/<out name>).")
    checkpoint_every: int = Field(default=200, ge=1, description="Checkpoint every N steps.")
    resume: bool = Field(default=False, description="Continue from the checkpoint in run_dir if present.")

    @field_validator("loss")
    @classmethod
    def _registered_loss(cls, name: str) -> str:
        from trainer.losses import LOSSES  # the registry needs torch; parsing the command line does not

        if name not in LOSSES:
            raise ValueError(f"unknown loss {name!r}: one of {', '.join(LOSSES)}")
        return name

    @property
    def effective_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return 2e-5 if self.arch == "transformer" else 2e-3

    @property
    def effective_pair_loss_weight(self) -> float:
        if self.pair_loss_weight is not None:
            return self.pair_loss_weight
        return 1.0 if self.arch == "transformer" else 0.0

    @property
    def effective_run_dir(self) -> Path:
        return self.run_dir if self.run_dir is not None else Path("runs") / self.out.name
