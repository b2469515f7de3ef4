"""The model directory contract: round trip, refusal of pickles and links, and the encoders.

Tiny models only, except one check that the default base model embeds exactly as
sentence-transformers does (loaded once for the session).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer

from devkit.tiny import write_tiny_bert
from trainer.vocab import train_wordpiece
from worker.model.directory import check_model_dir, load_model_dir, save_model_dir
from worker.model.encode import CHARS_PER_TOKEN, TorchEncoder, load_encoder, token_batches
from worker.model.manifest import BiLSTMParams, Manifest, ModelFormatError, Thresholds, UnsafeModelError
from worker.model.modules import BiLSTMEncoder, pad_batch
from worker.model.pretrained import from_sentence_transformer

TEXTS = [
    "how do i learn python quickly",
    "what is the fastest way to learn python",
    "best pizza in new york",
    "where to eat pizza in nyc",
    "is the earth flat",
    "why do people think the earth is flat",
]


def tiny_tokenizer() -> Tokenizer:
    return train_wordpiece(TEXTS * 3, vocab_size=200, min_frequency=1)


def tiny_bilstm_dir(path: Path, seed: int = 0) -> tuple[Path, BiLSTMEncoder, Tokenizer]:
    """A random bilstm saved as a model directory."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    params = BiLSTMParams(vocab_size=tokenizer.get_vocab_size(), embedding_dim=8, hidden_size=8)
    module = BiLSTMEncoder(params, dim=12).eval()
    manifest = Manifest(
        architecture="bilstm",
        hyperparameters=params,
        dim=12,
        max_tokens=16,
        pooling="mean_max",
        thresholds=Thresholds(decision=0.8),
    )
    save_model_dir(path, manifest, module, tokenizer)
    return path, module, tokenizer


def tiny_sentence_transformer(path: Path, seed: int = 0) -> Path:
    """A randomly initialised tiny BERT laid out like a sentence-transformers directory."""
    return write_tiny_bert(path, tiny_tokenizer(), hidden_size=16, max_tokens=32, seed=seed)


def embeds_without_transformers(model: Path) -> bool:
    """Whether a fresh interpreter loads the model directory and embeds a post without ever importing
    ``transformers`` (3.5 s of the worker's start)."""
    code = (
        "import sys; from worker.model.encode import load_encoder; "
        f"load_encoder({str(model)!r}, 'cpu').embed(['a post']); "
        "print('transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------
# Round trip


def test_bilstm_round_trip_gives_the_same_embeddings(tmp_path: Path) -> None:
    path, module, tokenizer = tiny_bilstm_dir(tmp_path / "m")
    manifest, loaded, loaded_tokenizer = load_model_dir(path)
    assert manifest.version.startswith("bilstm-")
    assert len(manifest.version) == len("bilstm-") + 12
    ids, mask = pad_batch([e.ids for e in tokenizer.encode_batch(TEXTS)], 0)
    with torch.inference_mode():
        assert torch.allclose(module(ids, mask), loaded(ids, mask))
    assert (
        loaded_tokenizer.to_str() == tokenizer.to_str()
        or loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    )
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "model.safetensors", "tokenizer.json"]


def test_transformer_export_round_trip(tmp_path: Path) -> None:
    source = tiny_sentence_transformer(tmp_path / "st")
    parts = from_sentence_transformer(source)
    assert parts.max_tokens == 32
    manifest = Manifest(
        architecture="transformer",
        hyperparameters=parts.params,
        dim=16,
        max_tokens=parts.max_tokens,
        pooling="mean",
        thresholds=Thresholds(decision=0.7),
    )
    save_model_dir(
        tmp_path / "m", manifest, parts.module, parts.tokenizer, {"config.json": parts.config_json}
    )
    encoder = TorchEncoder(tmp_path / "m", device="cpu")
    ids, mask = pad_batch([e.ids for e in parts.tokenizer.encode_batch(TEXTS)], 0)
    with torch.inference_mode():
        expected = parts.module(ids, mask).numpy()
    np.testing.assert_allclose(encoder.embed(TEXTS), expected, atol=1e-6)


def test_same_weights_same_version_and_saving_replaces_atomically(tmp_path: Path) -> None:
    first = load_model_dir(tiny_bilstm_dir(tmp_path / "a", seed=1)[0])[0]
    again = load_model_dir(tiny_bilstm_dir(tmp_path / "a", seed=1)[0])[0]  # overwrites in place
    other = load_model_dir(tiny_bilstm_dir(tmp_path / "b", seed=2)[0])[0]
    assert first.version == again.version != other.version
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind


def test_the_tokenizer_never_reads_more_of_a_post_than_it_can_use(tmp_path: Path) -> None:
    """A 1 MB post of "a a a ..." took 1.2 s to tokenise only to be cut at the 256th token."""
    path, _, _ = tiny_bilstm_dir(tmp_path / "m")
    encoder = TorchEncoder(path, device="cpu")
    seen: list[int] = []
    real = encoder.tokenizer.encode_batch

    class Recording:
        truncation = encoder.tokenizer.truncation

        def encode_batch(self, texts: list[str]) -> list[Any]:
            seen.extend(len(text) for text in texts)
            return real(texts)

    encoder.tokenizer = Recording()  # type: ignore[assignment]
    hostile = "a " * 500_000
    vectors = encoder.embed([hostile, "a short post"])
    assert max(seen) <= encoder.max_tokens * CHARS_PER_TOKEN
    np.testing.assert_allclose(vectors[0], encoder.embed([hostile[: encoder.max_tokens * 2]])[0], atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Safety


@pytest.mark.parametrize(
    "name", ["pytorch_model.bin", "model.pt", "weights.pkl", "x.ckpt", "arr.npy", "m.joblib"]
)
def test_pickle_capable_files_are_refused(tmp_path: Path, name: str) -> None:
    path, _, _ = tiny_bilstm_dir(tmp_path / "m")
    (path / name).write_bytes(b"\x80\x04K\x01.")  # a pickle of the int 1
    with pytest.raises(UnsafeModelError, match="pickle"):
        load_model_dir(path)


def test_unknown_file_kinds_are_refused(tmp_path: Path) -> None:
    path, _, _ = tiny_bilstm_dir(tmp_path / "m")
    (path / "weights.model").write_bytes(b"?")
    with pytest.raises(UnsafeModelError, match="unexpected file"):
        load_model_dir(path)


def test_a_pickle_in_a_subdirectory_is_refused(tmp_path: Path) -> None:
    path, _, _ = tiny_bilstm_dir(tmp_path / "m")
    (path / "extra").mkdir()
    (path / "extra" / "optimizer.pt").write_bytes(b"")
    with pytest.raises(UnsafeModelError):
        check_model_dir(path)


def test_links_are_refused_even_inside_the_directory(tmp_path: Path) -> None:
    path, _, _ = tiny_bilstm_dir(tmp_path / "m")
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    (path / "notes.json").symlink_to(outside)
    with pytest.raises(UnsafeModelError, match="link"):
        load_model_dir(path)
    (path / "notes.json").unlink()
    (path / "tokenizer.json").rename(path / "real.json")
    (path / "tokenizer.json").symlink_to(path / "real.json")
    with pytest.raises(UnsafeModelError):
        load_model_dir(path)


def test_the_directory_itself_may_be_a_link(tmp_path: Path) -> None:
    path, _, _ = tiny_bilstm_dir(tmp_path / "v1")
    (tmp_path / "current").symlink_to(path)
    assert load_model_dir(tmp_path / "current")[0].architecture == "bilstm"


def test_weights_changed_after_export_are_refused(tmp_path: Path) -> None:
    path, module, _ = tiny_bilstm_dir(tmp_path / "m")
    state = {k: v + 1 for k, v in module.state_dict().items()}
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(ModelFormatError, match="version"):
        load_model_dir(path)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_model_dir(tmp_path / "nothing")
    path, _, _ = tiny_bilstm_dir(tmp_path / "m")
    (path / "tokenizer.json").unlink()
    with pytest.raises(ModelFormatError, match=r"tokenizer\.json"):
        load_model_dir(path)
    path, _, _ = tiny_bilstm_dir(tmp_path / "n")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = 2
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFormatError, match="manifest"):
        load_model_dir(path)


def test_a_directory_that_is_not_a_model_directory_says_how_to_make_one(tmp_path: Path) -> None:
    source = tiny_sentence_transformer(tmp_path / "st")
    (source / ".gitattributes").write_text("*.safetensors filter=lfs\n")  # as a hub download has
    with pytest.raises(ModelFormatError, match=r"no manifest\.json") as refused:
        load_encoder(source, "cpu")
    assert "sentence-transformers" in str(refused.value)
    assert f"python -m trainer export --from-pretrained {source}" in str(refused.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFormatError, match=r"no manifest\.json: not a twinflag model directory"):
        load_encoder(tmp_path / "empty", "cpu")


def edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"max_tokens": 1_000_000}, "max_tokens"),  # loaded, then the first long post crashed
        ({"pad_token_id": 10**12}, "pad_token_id"),  # loaded, then the first batch indexed past the table
        ({"dim": 10**9}, "dim"),  # exited 1 with an allocation traceback
    ],
)
def test_a_manifest_is_checked_before_anything_runs(
    tmp_path: Path, changes: dict[str, object], why: str
) -> None:
    path, _, _ = tiny_bilstm_dir(tmp_path / "m")
    edit_json(path / "manifest.json", **changes)
    with pytest.raises(ModelFormatError, match=why):
        load_model_dir(path)


def test_config_and_manifest_must_agree_with_the_weights(tmp_path: Path) -> None:
    source = tiny_sentence_transformer(tmp_path / "st")
    from trainer.export import export_pretrained

    model = tmp_path / "m"
    export_pretrained(source, model, device="cpu")
    load_model_dir(model)  # as exported: fine
    config = json.loads((model / "config.json").read_text())
    edit_json(model / "config.json", max_position_embeddings=8)  # fewer positions than max_tokens
    with pytest.raises(ModelFormatError, match="positions"):
        load_model_dir(model)
    edit_json(model / "config.json", **{**config, "vocab_size": 10**6, "intermediate_size": 4096})
    with pytest.raises(ModelFormatError, match=r"config\.json"):
        load_model_dir(model)
    edit_json(model / "config.json", **config)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["hyperparameters"]["vocab_size"] = 10**6  # config and manifest agree, the weights do not
    (model / "manifest.json").write_text(json.dumps(manifest))
    edit_json(model / "config.json", vocab_size=10**6)
    with pytest.raises(ModelFormatError, match="word_embeddings"):
        load_model_dir(model)


def test_a_refused_manifest_exits_2_naming_the_problem(tmp_path: Path) -> None:
    from worker.core.errors import FatalError
    from worker.model.config import ModelSettings
    from worker.service.decision import load_model
    from worker.service.settings import WorkerSettings

    path, _, _ = tiny_bilstm_dir(tmp_path / "m")
    edit_json(path / "manifest.json", max_tokens=1_000_000)
    with pytest.raises(FatalError, match="max_tokens"):  # FatalError: exit status 2
        load_model(WorkerSettings(model=ModelSettings(path=path)))


def test_saving_refuses_pickle_capable_extra_files(tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer()
    params = BiLSTMParams(vocab_size=tokenizer.get_vocab_size(), embedding_dim=4, hidden_size=4)
    manifest = Manifest(
        architecture="bilstm",
        hyperparameters=params,
        dim=4,
        max_tokens=8,
        pooling="mean_max",
        thresholds=Thresholds(decision=0.5),
    )
    with pytest.raises(UnsafeModelError):
        save_model_dir(tmp_path / "m", manifest, BiLSTMEncoder(params, 4), tokenizer, {"opt.pt": b""})
    assert not (tmp_path / "m").exists()
    assert list(tmp_path.iterdir()) == []


def test_manifest_rejects_mismatched_architecture() -> None:
    with pytest.raises(ValueError, match="hyperparameters"):
        Manifest(
            architecture="transformer",
            hyperparameters=BiLSTMParams(vocab_size=10, embedding_dim=4, hidden_size=4),
            dim=4,
            max_tokens=8,
            pooling="mean",
            thresholds=Thresholds(decision=0.5),
        )


# ---------------------------------------------------------------------------------------------
# TorchEncoder


def test_token_batches_respect_budget_and_count() -> None:
    lengths = [5, 1, 9, 3, 3, 40, 2]
    batches = token_batches(lengths, max_batch_tokens=12, max_batch_size=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 12
    assert [5] in batches  # longer than the whole budget: alone


def test_encoder_keeps_order_truncates_and_is_batch_independent(tmp_path: Path) -> None:
    path, _, _ = tiny_bilstm_dir(tmp_path / "m")
    encoder = load_encoder(path, "cpu", max_batch_tokens=20, max_batch_size=2)
    texts = [*TEXTS, "pizza " * 500, ""]
    together = encoder.embed(texts)
    alone = np.stack([encoder.embed([t])[0] for t in texts])
    assert together.dtype == np.float32
    assert together.shape == (len(texts), 12)
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert encoder.embed([]).shape == (0, 12)
    assert encoder.health()
    assert encoder.version.startswith("bilstm-")
    assert encoder.max_tokens == 16
    assert encoder.threshold == 0.8


def test_cuda_without_a_gpu_is_an_error(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    path, _, _ = tiny_bilstm_dir(tmp_path / "m")
    with pytest.raises(RuntimeError, match="cuda"):
        TorchEncoder(path, device="cuda")


# ---------------------------------------------------------------------------------------------
# The default base model, against sentence-transformers


@pytest.fixture(scope="session")
def minilm_zero_shot(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from trainer.export import export_pretrained
    from worker.model.pretrained import default_base_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = tmp_path_factory.mktemp("zero-shot") / "model"
    export_pretrained(default_base_model(), out, device="cpu")
    return default_base_model(), out


def test_minilm_embeddings_equal_sentence_transformers(minilm_zero_shot: tuple[Path, Path]) -> None:
    from sentence_transformers import SentenceTransformer

    base, exported = minilm_zero_shot
    texts = ["How can I stop my depression ?", "What can I do to stop being depressed ?", "word " * 400, "ok"]
    reference = SentenceTransformer(str(base), device="cpu").encode(texts, convert_to_numpy=True)
    ours = TorchEncoder(exported, device="cpu").embed(texts)
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    spam = ["ＦＲＥＥ money", "frее mоnеy", "fr\u200bee money"]  # full-width, Cyrillic е/о, zero-width
    clean = TorchEncoder(exported, device="cpu").embed(["free money"])[0]
    np.testing.assert_allclose(
        TorchEncoder(exported, device="cpu").embed(spam), np.stack([clean] * 3), atol=1e-6
    )
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert manifest["max_tokens"] == 256
    assert manifest["thresholds"]["calibrated_on"] is None


def test_a_model_directory_is_a_sentence_transformers_directory_that_embeds_as_the_worker(
    minilm_zero_shot: tuple[Path, Path],
) -> None:
    from sentence_transformers import SentenceTransformer

    _, exported = minilm_zero_shot
    texts = [
        "ＦＲＥＥ iphone, click hеre",  # full-width letters and a Cyrillic е: the folds must run
        "fr\u200bee mоnеy",  # zero-width space, Cyrillic о and е
        "free iphone, click here",
        "word " * 400,  # truncated at the manifest's max_tokens (256), not at BERT's 512
    ]
    model = SentenceTransformer(str(exported), device="cpu")
    assert model.max_seq_length == 256
    theirs = model.encode(texts, convert_to_numpy=True)
    ours = TorchEncoder(exported, device="cpu").embed(texts)
    np.testing.assert_allclose(theirs, ours, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(theirs, axis=1), 1.0, atol=1e-5)  # its Normalize module


def test_the_worker_bounds_the_cpu_kernel_cache_before_it_loads_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # oneDNN keeps one compiled kernel per batch shape, up to 1024 by default: embedding 27k posts in
    # stream-sized batches grew the process by 800 MiB. It reads the capacity once, at its first
    # kernel, so the worker must set it before the model's first forward pass.
    from worker.model.config import ModelSettings
    from worker.service.decision import load_model
    from worker.service.settings import WorkerSettings

    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    path = tiny_bilstm_dir(tmp_path / "m")[0]
    encoder, _ = load_model(WorkerSettings(model=ModelSettings(path=path, cpu_kernel_cache=7)))
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "7"
    assert encoder.embed(["still embeds"]).shape == (1, encoder.dim)


def test_a_posts_vector_depends_on_its_batch_only_below_the_published_precision(tmp_path: Path) -> None:
    """The README's stated tolerance for reruns: beside other posts (padding, other batch shapes) a
    post's cosine with any vector moves by less than 1e-6, one unit in the last published decimal."""
    from trainer.export import export_pretrained

    export_pretrained(tiny_sentence_transformer(tmp_path / "st"), tmp_path / "m", device="cpu")
    encoder = TorchEncoder(tmp_path / "m", device="cpu")
    texts = [f"post number {i} " + "word " * (i % 17) for i in range(40)]
    alone = np.stack([encoder.embed([text])[0] for text in texts])
    together = encoder.embed(texts)
    probe = together[::-1].astype(np.float64)
    drift = np.abs(alone.astype(np.float64) @ probe.T - together.astype(np.float64) @ probe.T)
    assert drift.max() < 1e-6


def test_the_encoder_says_which_posts_it_cannot_read(tmp_path: Path) -> None:
    from trainer.export import export_pretrained

    export_pretrained(tiny_sentence_transformer(tmp_path / "st"), tmp_path / "m", device="cpu")
    encoder = TorchEncoder(tmp_path / "m", device="cpu")
    assert encoder.known(["👍", "👎 🔥", TEXTS[0], f"👍 {TEXTS[0]}"]) == [False, False, True, True]
    thumbs = encoder.embed(["👍", "👎"])
    assert float(thumbs[0] @ thumbs[1]) > 0.999  # why such posts may not match by their vectors


def test_the_in_house_stack_runs_xlm_r_as_transformers_does() -> None:
    """A multilingual base (XLM-R, RoBERTa family) is the BERT stack with positions after the pad id."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from worker.model.bert import BertConfig, BertModel

    torch.manual_seed(0)
    values = {
        "vocab_size": 60,
        "hidden_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 40,
        "type_vocab_size": 1,
        "pad_token_id": 1,
    }
    reference = XLMRobertaModel(XLMRobertaConfig(**values), add_pooling_layer=False).eval()
    ours = BertModel(BertConfig.from_dict({**values, "model_type": "xlm-roberta"})).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    ids = torch.randint(3, 60, (2, 7))
    ids[1, 4:] = 1  # right padding with XLM-R's pad id
    mask = (ids != 1).long()
    with torch.inference_mode():
        expected = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours(ids, mask)
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=1e-5)


def test_a_cls_pooled_base_is_exported_with_its_pooling(tmp_path: Path) -> None:
    from trainer.export import export_pretrained

    source = tiny_sentence_transformer(tmp_path / "st")
    (source / "1_Pooling").mkdir()
    (source / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    parts = from_sentence_transformer(source)
    assert parts.pooling == "cls"
    export_pretrained(source, tmp_path / "m", device="cpu")
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["pooling"] == "cls"
    ids, mask = pad_batch([e.ids for e in parts.tokenizer.encode_batch(TEXTS)], 0)
    with torch.inference_mode():
        first_token = torch.nn.functional.normalize(parts.module.bert(ids, mask)[:, 0], dim=-1).numpy()
    np.testing.assert_allclose(
        TorchEncoder(tmp_path / "m", device="cpu").embed(TEXTS), first_token, atol=1e-6
    )
    pooling = json.loads((tmp_path / "m" / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_cls_token"] is True  # sentence-transformers pools as the worker does
    (source / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(ModelFormatError, match="only mean or CLS pooling"):
        from_sentence_transformer(source)
