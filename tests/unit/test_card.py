"""The model card (``README.md`` of a model directory): written from the manifest, it says what a user
must know before using the weights: the terms the training data impose, the decision, how to use it."""

from __future__ import annotations

from pathlib import Path

from tests.unit.test_model import tiny_sentence_transformer
from trainer.card import model_readme
from trainer.export import export_pretrained
from worker.model.manifest import DataFingerprint, Manifest, Thresholds, TransformerParams

PARAMS = TransformerParams(
    hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, vocab_size=100
)


def manifest(**changes: object) -> Manifest:
    base = Manifest(
        version="transformer-0123456789ab",
        architecture="transformer",
        hyperparameters=PARAMS,
        dim=16,
        max_tokens=32,
        pooling="mean",
        thresholds=Thresholds(decision=0.91, target_precision=0.95, precision=0.95, recall=0.4),
    )
    return base.model_copy(update=changes)


def data(name: str) -> DataFingerprint:
    return DataFingerprint(name=name, sha256="ab" * 32, rows=10, used_rows=9)


def test_a_model_trained_on_quora_pairs_says_it_is_for_non_commercial_use() -> None:
    card = model_readme(manifest(training_data=[data("../shared/data/qqp/duplicates.tsv")]))
    assert "license: other" in card
    assert "non-commercial" in card
    assert "The training data restrict use of this model" in card
    assert "transformer-0123456789ab" in card
    assert "at least 0.9100" in card
    assert "precision 0.950, recall 0.400" in card


def test_a_model_trained_on_ones_own_pairs_names_no_public_terms() -> None:
    card = model_readme(manifest(training_data=[data("my/pairs.tsv")]))
    assert "your own pairs" in card
    assert "restrict use" not in card
    assert "non-commercial" not in card


def test_every_exported_directory_has_its_card(tmp_path: Path) -> None:
    export_pretrained(tiny_sentence_transformer(tmp_path / "st"), tmp_path / "m", device="cpu")
    card = (tmp_path / "m" / "README.md").read_text()
    version = Manifest.model_validate_json((tmp_path / "m" / "manifest.json").read_text()).version
    assert f"# twinflag model `{version}`" in card
    assert "(uncalibrated)" in card
    assert "SentenceTransformer(" in card


def test_only_a_float32_bert_directory_says_it_loads_in_sentence_transformers() -> None:
    assert "library_name: sentence-transformers" in model_readme(manifest())
    assert "SentenceTransformer(" in model_readme(manifest())
    for other in (
        manifest(hyperparameters=PARAMS.model_copy(update={"model_type": "mpnet"})),  # BERT's weight names
        manifest(hyperparameters=PARAMS.model_copy(update={"model_type": "xlm-roberta"})),
        manifest(precision="int8"),
    ):
        card = model_readme(other)
        assert "library_name: twinflag" in card
        assert "SentenceTransformer(" not in card
