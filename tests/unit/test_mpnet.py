"""MPNet (all-mpnet-base-v2's stack) run in plain torch: against ``transformers``' MPNetModel, and
exported from a sentence-transformers directory against ``SentenceTransformer``. Tiny random models."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from devkit.tiny import mpnet_tokenizer, write_tiny_mpnet
from tests.unit.test_model import TEXTS, embeds_without_transformers
from worker.model.bert import BertConfig
from worker.model.directory import load_model_dir
from worker.model.encode import load_encoder
from worker.model.manifest import ModelFormatError, TransformerParams
from worker.model.mpnet import MPNetModel, relative_buckets
from worker.model.pretrained import from_sentence_transformer

MAX_TOKENS = 40
POSTS = [
    *TEXTS,
    "learn python <pad> pizza",  # "<pad>" typed into a post: the pad id inside a text, not padding
    "python " * 60,  # truncated at max_tokens by both
    "",
]


def tiny_mpnet(path: Path, pooling: str = "mean") -> Path:
    return write_tiny_mpnet(
        path, mpnet_tokenizer(TEXTS * 3), hidden_size=32, max_tokens=MAX_TOKENS, seed=0, pooling=pooling
    )


def test_the_in_house_mpnet_computes_what_transformers_mpnet_does() -> None:
    transformers = pytest.importorskip("transformers")

    torch.manual_seed(0)
    values = {
        "vocab_size": 300,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 260,
    }
    reference = transformers.MPNetModel(transformers.MPNetConfig(**values), add_pooling_layer=False).eval()
    with torch.no_grad():  # initialised at zero: give the relative position bias something to do
        reference.encoder.relative_attention_bias.weight.normal_(0.0, 1.0)
    ours = MPNetModel(BertConfig.from_dict({**values, "model_type": "mpnet"})).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)  # the same parameter names
    ids = torch.randint(3, 300, (3, 200))  # offsets past 128: every bucket, the last ones shared
    ids[0, 50] = 1  # the pad id inside a text
    mask = torch.ones_like(ids)
    ids[1, 120:], mask[1, 120:] = 1, 0  # right padding with MPNet's pad id
    ids[2, 7:], mask[2, 7:] = 1, 0
    with torch.inference_mode():
        expected = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours(ids, mask)
    kept = mask.bool()
    torch.testing.assert_close(got[kept], expected[kept], atol=1e-5, rtol=1e-5)
    positions = torch.arange(300)
    theirs = transformers.models.mpnet.modeling_mpnet.MPNetEncoder.relative_position_bucket(
        positions[None, :] - positions[:, None]
    )
    assert torch.equal(relative_buckets(300, torch.device("cpu")), theirs)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny MPNet sentence-transformers directory and the model directory the CLI made of it."""
    root = tmp_path_factory.mktemp("mpnet")
    source = tiny_mpnet(root / "st")
    command = [sys.executable, "-m", "trainer", "export", "--from-pretrained", str(source)]
    # the CLI as a user runs it, in a subprocess (an in-process main() reconfigures structlog)
    subprocess.run([*command, "--out", str(root / "m")], check=True, capture_output=True, text=True)
    return source, root / "m"


def test_an_exported_mpnet_embeds_as_sentence_transformers_does(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    st = pytest.importorskip("sentence_transformers")
    from trainer.export import export_pretrained

    source, model = exported
    encoder = load_encoder(model, "cpu")
    theirs = st.SentenceTransformer(str(source), device="cpu").encode(POSTS, convert_to_numpy=True)
    np.testing.assert_allclose(encoder.embed(POSTS), theirs, atol=1e-5)
    assert encoder.manifest.pooling == "mean"
    assert encoder.manifest.pad_token_id == 1  # "<pad>", not the "[PAD]" its WordPiece entries keep
    params = encoder.manifest.hyperparameters
    assert isinstance(params, TransformerParams)
    assert params.model_type == "mpnet"
    cls = tiny_mpnet(tmp_path / "st", pooling="cls")
    export_pretrained(cls, tmp_path / "m", device="cpu")
    theirs = st.SentenceTransformer(str(cls), device="cpu").encode(POSTS, convert_to_numpy=True)
    np.testing.assert_allclose(load_encoder(tmp_path / "m", "cpu").embed(POSTS), theirs, atol=1e-5)


def test_loading_an_mpnet_imports_no_transformers_and_checks_its_type(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    source, model = exported
    parts = from_sentence_transformer(source)
    assert parts.params.model_type == "mpnet"
    assert json.loads(parts.config_json)["architectures"] == ["MPNetModel"]
    assert embeds_without_transformers(model)
    copy = shutil.copytree(model, tmp_path / "m")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["hyperparameters"]["model_type"] = "bert"  # the manifest and config.json disagree
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFormatError, match="model_type mpnet != bert"):
        load_model_dir(copy)


def test_an_unsupported_model_type_is_refused_naming_the_families(tmp_path: Path) -> None:
    source = tiny_mpnet(tmp_path / "st")
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "model_type": "deberta-v2"}))
    with pytest.raises(ModelFormatError, match="deberta-v2") as refused:
        from_sentence_transformer(source)
    for family in ("BERT (bert)", "RoBERTa (roberta, xlm-roberta, camembert)", "MPNet (mpnet)"):
        assert family in str(refused.value)
