"""Training end to end on a few dozen synthetic pairs: train → export → reload in the worker's runtime.

Tiny models (a bilstm, a randomly initialised 2-layer BERT) and a handful of steps: this checks the
plumbing, not the quality (that is ``bench/train_quality.py``).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from structlog.testing import capture_logs

import trainer.train as train_module
from tests.unit.test_model import tiny_sentence_transformer
from trainer.augment import EDITS, drop_word, spam_edit
from trainer.batches import pair_batch_for
from trainer.checkpoint import snapshot
from trainer.cli import main, parser, train_settings
from trainer.data import Pair
from trainer.evaluate import DEFAULT_THRESHOLD
from trainer.recipes import find_pair_files
from trainer.schedule import epoch_examples, lr_at
from trainer.settings import TrainSettings
from trainer.step import forward_by_length
from trainer.train import train
from worker.model.encode import TorchEncoder, embed_texts

TOPICS = ["python", "pizza", "the moon", "taxes", "chess", "guitar", "running", "coffee", "a visa", "cats"]


def write_pairs(path: Path, seed: int, dev: bool = False) -> Path:
    """Paraphrase pairs about topics, labelled non-duplicates across topics."""
    rng = random.Random(seed)
    rows = ["text_a\ttext_b\tlabel"]
    for topic in TOPICS:
        for verb in ("learn", "enjoy", "understand"):
            rows.append(f"how do i {verb} {topic}\twhat is the best way to {verb} {topic}\t1")
            if dev or rng.random() < 0.5:
                other = rng.choice([t for t in TOPICS if t != topic])
                rows.append(f"how do i {verb} {topic}\thow do i {verb} {other}\t0")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _logs_stay_unconfigured(monkeypatch: pytest.MonkeyPatch) -> None:
    """``main`` would bind structlog to this test's captured stderr for the rest of the session."""
    monkeypatch.setattr("trainer.cli.configure", lambda *_args, **_kwargs: None)


@pytest.fixture
def pair_files(tmp_path: Path) -> tuple[Path, Path]:
    return write_pairs(tmp_path / "train.tsv", 0), write_pairs(tmp_path / "dev.tsv", 1, dev=True)


def settings_for(tmp_path: Path, files: tuple[Path, Path], **overrides: object) -> TrainSettings:
    base: dict[str, object] = {
        "train": [files[0]],
        "dev": files[1],
        "out": tmp_path / "model",
        "run_dir": tmp_path / "run",
        "arch": "bilstm",
        "bilstm": {"vocab_size": 200, "embedding_dim": 16, "hidden_size": 16, "dim": 16},
        "epochs": 2,
        "batch_size": 8,
        "mine_pool": 40,
        "augment": 0.3,
        "checkpoint_every": 2,
    }
    base.update(overrides)
    return TrainSettings(**base)  # type: ignore[arg-type]


def test_bilstm_trains_exports_and_reloads_with_the_same_embeddings(
    tmp_path: Path, pair_files: tuple[Path, Path]
) -> None:
    result = train(settings_for(tmp_path, pair_files), progress=False)
    texts = ["how do i learn chess", "what is the best way to learn chess", "pizza", ""]
    in_memory = embed_texts(result.module, result.tokenizer, texts, pad_token_id=0, device="cpu")
    reloaded = TorchEncoder(result.out, device="cpu").embed(texts)
    np.testing.assert_allclose(reloaded, in_memory, atol=1e-6)
    manifest = json.loads((result.out / "manifest.json").read_text())
    assert manifest["version"] == result.manifest.version
    assert manifest["thresholds"]["calibrated_on"] == "dev.tsv"
    assert manifest["training"]["steps"] == result.manifest.training["steps"] > 0
    assert manifest["training_data"][0]["sha256"]
    assert manifest["dev_data"]["rows"] > 0
    assert set(manifest["dev_metrics"]) >= {"average_precision", "roc_auc", "best_f1", "recall_at_p90"}
    assert (tmp_path / "run" / "checkpoint" / "state.json").is_file()
    assert not list((tmp_path / "run").rglob("*.pt"))


def test_tiny_transformer_trains_and_reloads(tmp_path: Path, pair_files: tuple[Path, Path]) -> None:
    init = tiny_sentence_transformer(tmp_path / "base")
    settings = settings_for(tmp_path, pair_files, arch="transformer", init=init, max_steps=4, lr=1e-3)
    result = train(settings, progress=False)
    texts = ["how do i learn chess", "what is the best way to enjoy cats"]
    in_memory = embed_texts(result.module, result.tokenizer, texts, pad_token_id=0, device="cpu")
    np.testing.assert_allclose(TorchEncoder(result.out, device="cpu").embed(texts), in_memory, atol=1e-6)
    assert result.manifest.architecture == "transformer"
    assert result.manifest.max_tokens == 32
    assert (result.out / "config.json").is_file()


def test_model_selection_averages_the_dev_set_and_each_training_files_slice(
    tmp_path: Path, pair_files: tuple[Path, Path]
) -> None:
    second = write_pairs(tmp_path / "more.tsv", 5, dev=True)
    settings = settings_for(tmp_path, pair_files, train=[pair_files[0], second], select_split=0.4)
    result = train(settings, progress=False)
    entry = result.history[-1]
    slices = {k for k in entry if k.startswith("ap ") and "selection slice" in k}
    assert len(slices) == 2  # each labelled training file contributed a slice
    per_set = [v for k, v in entry.items() if k.startswith("ap ")]
    assert entry["selection_score"] == pytest.approx(sum(per_set) / len(per_set))
    assert "selection slice" in result.manifest.training["selection"]
    best = max(h["selection_score"] for h in result.history)
    assert result.manifest.training["best_step"] == next(
        h["step"] for h in result.history if h["selection_score"] == best
    )


def test_labelled_pairs_and_the_trained_part_of_dev_reach_training(
    tmp_path: Path, pair_files: tuple[Path, Path]
) -> None:
    plain_settings = settings_for(tmp_path / "plain", pair_files, dev_train_split=0.5, pair_loss_weight=0.0)
    plain = train(plain_settings, progress=False)
    with_pairs = settings_for(tmp_path / "pairs", pair_files, dev_train_split=0.5, pair_loss_weight=1.0)
    result = train(with_pairs, progress=False)
    manifest = result.manifest
    assert manifest.version != plain.manifest.version  # the pair term moved the weights
    assert manifest.dev_data is not None
    trained_dev = manifest.training_data[-1]
    assert trained_dev.name == str(pair_files[1])
    assert trained_dev.used_rows
    assert manifest.dev_data.used_rows
    assert trained_dev.used_rows + manifest.dev_data.used_rows == manifest.dev_data.rows
    # the threshold is calibrated on the part of dev the model never trained on, and only that part
    assert manifest.dev_metrics["pairs"] == manifest.dev_data.used_rows
    assert manifest.training["pair_loss_weight"] == 1.0
    assert manifest.training["dev_train_split"] == 0.5


def test_a_small_labelled_file_gets_as_many_pair_batches_as_a_large_one() -> None:
    large = [Pair(f"a{i}", f"b{i}", i % 2) for i in range(100)]
    small = [Pair("c", "d", 1), Pair("e", "f", 0)]
    assert pair_batch_for([large, small], 8, "0:0:3") == pair_batch_for([large, small], 8, "0:0:3")
    picks = [pair_batch_for([large, small], 8, f"0:0:{i}") for i in range(2000)]
    assert all(len(batch) == 8 for batch in picks if batch[0] in large)
    share = sum(batch in (small, small[::-1]) for batch in picks) / len(picks)
    assert 0.45 < share < 0.55  # by size it would be 2 %
    assert pair_batch_for([], 8, "0:0:0") == []


def test_seeded_cpu_runs_are_reproducible(tmp_path: Path, pair_files: tuple[Path, Path]) -> None:
    first = train(settings_for(tmp_path / "a", pair_files), progress=False).manifest
    second = train(settings_for(tmp_path / "b", pair_files), progress=False).manifest
    assert first.version == second.version


def test_an_interrupted_run_resumes_to_the_same_weights(
    tmp_path: Path, pair_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = train(settings_for(tmp_path / "whole", pair_files), progress=False).manifest
    real_step = train_module.train_step
    calls = 0

    def crash_on_fourth(*args: object, **kwargs: object) -> float:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(train_module, "train_step", crash_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        train(settings_for(tmp_path / "cut", pair_files), progress=False)
    monkeypatch.setattr(train_module, "train_step", real_step)
    resumed = train(settings_for(tmp_path / "cut", pair_files, resume=True), progress=False).manifest
    assert resumed.version == whole.version


def test_the_best_weights_are_a_copy_not_the_live_parameters() -> None:
    module = torch.nn.Linear(2, 2)
    kept = snapshot(module)
    with torch.no_grad():
        module.weight.add_(1.0)
    assert not torch.equal(kept["weight"], module.weight)


def test_length_chunked_forward_equals_one_padded_batch(tmp_path: Path) -> None:
    from worker.model.modules import pad_batch
    from worker.model.pretrained import from_sentence_transformer

    parts = from_sentence_transformer(tiny_sentence_transformer(tmp_path / "base"))
    texts = [f"how do i {'really ' * (i % 7)}learn {topic}" for i, topic in enumerate(TOPICS * 3)]
    ids = [e.ids for e in parts.tokenizer.encode_batch(texts)]
    with torch.no_grad():
        whole = parts.module(*pad_batch(ids, 0))
        chunked = forward_by_length(parts.module, ids, 0, "cpu", None, chunk_tokens=64)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)


def test_lr_schedule() -> None:
    assert lr_at(0.0, 1.0, 0.1) == 0.0
    assert lr_at(0.05, 1.0, 0.1) == pytest.approx(0.5)
    assert lr_at(0.1, 1.0, 0.1) == pytest.approx(1.0)
    assert lr_at(0.55, 1.0, 0.1) == pytest.approx(0.5)
    assert lr_at(1.0, 1.0, 0.1) == 0.0
    assert lr_at(2.0, 1.0, 0.0) == 0.0
    assert lr_at(0.5, 2.0, 0.0) == pytest.approx(1.0)


def test_short_epochs_walk_through_all_examples() -> None:
    seen = [i for epoch in range(5) for i in epoch_examples(10, seed=3, epoch=epoch, per_epoch=4)]
    assert sorted(seen[:10]) == list(range(10))
    assert epoch_examples(10, 3, 0, None) == epoch_examples(10, 3, 0, None)
    assert sorted(epoch_examples(10, 3, 1, None)) == list(range(10))


def test_spam_edits_change_the_text_but_not_the_post() -> None:
    rng = random.Random(0)
    text = "Limited offer: buy two coffee mugs today and get one free"
    for edit in EDITS:
        assert edit(text, random.Random(1)) != text
    assert drop_word("too short", rng) == "too short"
    edited = {spam_edit(text, random.Random(seed)) for seed in range(20)}
    assert len(edited) > 15
    assert spam_edit(text, random.Random(5)) == spam_edit(text, random.Random(5))


def test_cli_score_prints_one_line_per_pair_and_evaluate_json(
    tmp_path: Path, pair_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model = train(settings_for(tmp_path, pair_files, epochs=1, max_steps=2), progress=False).out
    pairs = tmp_path / "score.tsv"
    pairs.write_text(
        'text_a\ttext_b\nfirst\tpair\n\tempty text\n"broken\tquote\nlast\tpair\n', encoding="utf-8"
    )
    capsys.readouterr()  # the training logs above (structlog prints to stdout until configured)
    with capture_logs() as logs:
        assert main(["score", "--model", str(model), "--pairs", str(pairs), "--device", "cpu"]) == 0
    assert [e["bad"] for e in logs if e["event"] == "unreadable_rows_scored_nan"] == [{"broken_quoting": 1}]
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    assert lines[2] == "nan"
    assert all(-1.0 <= float(x) <= 1.0 for x in lines if x != "nan")
    report = tmp_path / "report"
    with capture_logs():
        assert (
            main(
                [
                    "evaluate",
                    "--model",
                    str(model),
                    "--pairs",
                    str(pair_files[1]),
                    "--json",
                    "--report",
                    str(report),
                ]
            )
            == 0
        )
    metrics = json.loads(capsys.readouterr().out)
    assert 0.0 <= metrics["average_precision"] <= 1.0
    assert (tmp_path / "report" / "report.md").is_file()
    assert (tmp_path / "report" / "pr_curve.png").is_file()


def test_cli_refuses_a_missing_model_with_status_2(tmp_path: Path) -> None:
    with capture_logs() as logs:
        assert main(["score", "--model", str(tmp_path / "none"), "--pairs", str(tmp_path / "x.tsv")]) == 2
    assert [e["event"] for e in logs] == ["refused"]


def test_default_recipe_never_trains_on_dev_files(tmp_path: Path) -> None:
    for name in ("qqp/duplicates.tsv", "qqp/dev.tsv", "paws/dev.tsv", "twitter/train.tsv", "notes/README.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("text_a\ttext_b\n")
    train_files, dev = find_pair_files(tmp_path)
    assert dev == tmp_path / "qqp" / "dev.tsv"
    assert [p.relative_to(tmp_path).as_posix() for p in train_files] == [
        "qqp/duplicates.tsv",
        "twitter/train.tsv",
    ]


# set elsewhere: nested sizes (environment), the log level (a flag before the subcommand)
NOT_ON_THE_TRAIN_COMMAND_LINE = {"bilstm", "log_level"}


def test_every_training_setting_can_be_set_on_the_command_line() -> None:
    commands = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    flags = {action.dest for action in commands.choices["train"]._actions}
    missing = set(TrainSettings.model_fields) - NOT_ON_THE_TRAIN_COMMAND_LINE - flags
    assert not missing, f"settings without a flag on `python -m trainer train`: {sorted(missing)}"


def test_command_line_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWINFLAG_TRAIN_WARMUP", "0.3")
    monkeypatch.setenv("TWINFLAG_TRAIN_MINE_K", "5")
    args = parser().parse_args(
        ["train", "--select-split", "0.05", "--warmup", "0.2", "--weight-decay", "0", "--mixed-batches"]
    )
    settings = train_settings(args)
    assert (settings.select_split, settings.warmup, settings.weight_decay) == (0.05, 0.2, 0.0)
    assert settings.batch_by_source is False
    assert settings.mine_k == 5  # not on the command line: the environment's value stands
    unset = train_settings(parser().parse_args(["train"]))
    assert (unset.batch_by_source, unset.mine, unset.resume) == (True, True, False)


def test_without_a_dev_file_the_threshold_is_calibrated_on_the_selection_slices(
    tmp_path: Path, pair_files: tuple[Path, Path]
) -> None:
    labelled = write_pairs(tmp_path / "labelled.tsv", 5, dev=True)
    settings = settings_for(tmp_path, pair_files, train=[labelled], dev=None, select_split=0.4)
    thresholds = train(settings, progress=False).manifest.thresholds
    assert thresholds.calibrated_on == f"{tmp_path.name}/labelled.tsv selection slice"
    assert thresholds.precision is not None
    assert thresholds.best_f1_threshold is not None


def test_with_nothing_kept_out_of_training_the_default_threshold_ships_and_says_so(
    tmp_path: Path, pair_files: tuple[Path, Path]
) -> None:
    thresholds = train(settings_for(tmp_path, pair_files, dev=None), progress=False).manifest.thresholds
    assert thresholds.decision == DEFAULT_THRESHOLD
    assert thresholds.calibrated_on is None
