"""The encoder's faster forms: the in-house BERT (no ``transformers`` import at run time) and the int8
copy run by ONNX Runtime. Tiny random models; the real model's figures are ``python -m bench.speed``'s.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.unit.test_model import TEXTS, embeds_without_transformers, tiny_sentence_transformer
from worker.model.bert import BertConfig, BertModel
from worker.model.directory import load_model_dir, save_model_dir
from worker.model.encode import TorchEncoder, load_encoder
from worker.model.manifest import Manifest, ModelFormatError, Thresholds
from worker.model.pretrained import from_sentence_transformer

pytest.importorskip("onnxruntime")


def tiny_transformer_dir(root: Path) -> Path:
    parts = from_sentence_transformer(tiny_sentence_transformer(root / "st"))
    manifest = Manifest(
        architecture="transformer",
        hyperparameters=parts.params,
        dim=16,
        max_tokens=parts.max_tokens,
        pooling="mean",
        thresholds=Thresholds(decision=0.7),
    )
    save_model_dir(root / "m", manifest, parts.module, parts.tokenizer, {"config.json": parts.config_json})
    return root / "m"


def test_the_in_house_bert_computes_what_transformers_bert_does() -> None:
    from transformers import BertConfig as HFConfig
    from transformers import BertModel as HFModel

    torch.manual_seed(0)
    values = {
        "vocab_size": 50,
        "hidden_size": 24,
        "num_hidden_layers": 2,
        "num_attention_heads": 3,
        "intermediate_size": 40,
        "max_position_embeddings": 20,
    }
    reference = HFModel(HFConfig(**values), add_pooling_layer=False).eval()
    ours = BertModel(BertConfig(**values)).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)  # the same parameter names
    ids = torch.randint(1, 50, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # padding must not leak into the kept tokens
    mask[2, 2:] = 0
    types = torch.zeros_like(ids)
    types[:, 4:] = 1  # a pair, as the verifier reads it
    with torch.inference_mode():
        expected = reference(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        got = ours(ids, mask, types)
    kept = mask.bool()
    torch.testing.assert_close(got[kept], expected[kept], atol=1e-5, rtol=1e-5)
    # Its config.json is one transformers reads back to the same model.
    assert HFConfig(**json.loads(BertConfig(**values).to_json())).num_attention_heads == 3


def test_loading_a_model_does_not_import_transformers(tmp_path: Path) -> None:
    assert embeds_without_transformers(tiny_transformer_dir(tmp_path))


@pytest.fixture(scope="module")
def int8_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from trainer.quantize import quantize

    root = tmp_path_factory.mktemp("int8")
    model = tiny_transformer_dir(root)
    quantize(model, root / "int8")
    return model, root / "int8"


def test_the_int8_copy_embeds_close_to_float32_under_its_own_version(int8_pair: tuple[Path, Path]) -> None:
    from worker.model.onnx import OnnxEncoder

    model, int8 = int8_pair
    full, quantized = load_encoder(model, "cpu"), load_encoder(int8, "cpu")
    assert isinstance(full, TorchEncoder)
    assert isinstance(quantized, OnnxEncoder)
    a, b = full.embed(TEXTS), quantized.embed(TEXTS)
    assert b.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert (a * b).sum(1).min() > 0.98  # the same space, to int8 rounding
    assert quantized.version.startswith("transformer-int8-")
    assert quantized.version != full.version  # an index of one is never searched with the other
    manifest = json.loads((int8 / "manifest.json").read_text())
    assert manifest["precision"] == "int8"
    assert manifest["training"]["quantized_from"] == full.version
    assert manifest["thresholds"] == json.loads((model / "manifest.json").read_text())["thresholds"]
    assert sorted(p.name for p in int8.iterdir()) == [
        "README.md",
        "config.json",
        "manifest.json",
        "model.onnx",
        "tokenizer.json",
    ]
    # The batching is the float32 encoder's: a text's vector does not depend on its neighbours.
    np.testing.assert_allclose(quantized.embed(TEXTS[:1])[0], b[0], atol=2e-2)
    assert quantized.health()
    assert quantized.known(["how", "\u2603\u2603"]) == [True, False]


def test_an_int8_directory_is_checked_like_any_other(int8_pair: tuple[Path, Path], tmp_path: Path) -> None:
    from worker.model.onnx import OnnxEncoder

    _, int8 = int8_pair
    with pytest.raises(ModelFormatError, match="ONNX Runtime"):
        load_model_dir(int8)  # torch does not run it
    with pytest.raises(RuntimeError, match="CPU"):
        OnnxEncoder(int8, device="cuda")
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for file in int8.iterdir():
        tampered.joinpath(file.name).write_bytes(file.read_bytes())
    onnx_file = tampered / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")
    with pytest.raises(ModelFormatError, match="does not match the weights"):
        load_encoder(tampered, "cpu")


def test_quantize_refuses_to_write_a_copy_that_ranks_worse_than_allowed(tmp_path: Path) -> None:
    from trainer.quantize import QualityError, quantize

    model = tiny_transformer_dir(tmp_path)
    pairs = ("tiny", TEXTS[:3], TEXTS[3:], [1, 0, 1])
    # A limit below zero: any copy that is not strictly better is refused, and nothing is written.
    with pytest.raises(QualityError, match="average precision on tiny"):
        quantize(model, tmp_path / "int8", [pairs], max_ap_drop=-1.0)
    assert not (tmp_path / "int8").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # A set given only to be reported is measured, never a reason to refuse.
    _, checks = quantize(model, tmp_path / "int8", [], max_ap_drop=-1.0, report_sets=[pairs])
    assert [(c.name, c.pairs, c.gated) for c in checks] == [("tiny", 3, False)]
    assert (tmp_path / "int8" / "model.onnx").is_file()


def test_export_onnx_writes_a_graph_that_embeds_as_the_worker(tmp_path: Path) -> None:
    import onnxruntime as ort

    from worker.model.encode import pad_ids

    source = tiny_sentence_transformer(tmp_path / "st")
    export = ["export", "--from-pretrained", str(source), "--out", str(tmp_path / "m"), "--onnx"]
    subprocess.run([sys.executable, "-m", "trainer", *export], check=True, capture_output=True)
    encoder = TorchEncoder(tmp_path / "m", device="cpu")  # the directory still loads (and checks) as before
    session = ort.InferenceSession(str(tmp_path / "m" / "onnx" / "encoder.onnx"))
    ids, mask = pad_ids(
        [row.ids for row in encoder.tokenizer.encode_batch(TEXTS)], encoder.manifest.pad_token_id
    )
    (vectors,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
    np.testing.assert_allclose(vectors, encoder.embed(TEXTS), atol=1e-5)


def test_the_int8_threshold_is_chosen_again_on_the_calibration_pairs(tmp_path: Path) -> None:
    from trainer.evaluate import score_pairs
    from trainer.quantize import quantize

    model = tiny_transformer_dir(tmp_path)
    pairs = ("tiny dev", TEXTS[:3], TEXTS[3:], [1, 0, 1])
    manifest, _ = quantize(model, tmp_path / "int8", calibration=pairs)
    scores = score_pairs(load_encoder(tmp_path / "int8", "cpu").embed, TEXTS[:3], TEXTS[3:])
    # The float32 model's 0.7 was never chosen on these pairs; the copy's threshold is one of its own
    # scores on them, at the target precision (0.95 by default: only pairs above the best negative).
    assert manifest.thresholds.calibrated_on == "tiny dev"
    assert manifest.thresholds.decision == pytest.approx(sorted(scores)[-1], abs=1e-6) or (
        manifest.thresholds.decision > scores[1]
    )
