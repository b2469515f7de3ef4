"""The fast static model: a saved directory reloads to the same vectors without torch, spam edits that
only hide characters land on the original's vector, the worker decides with it, and ``distill`` runs
end to end on tiny synthetic pairs with a tiny teacher."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from tests.fakes import MemoryIndex
from trainer.distill import DistillRecipe, distill
from trainer.static_model import static_manifest, write_static_dir
from trainer.vocab import train_wordpiece
from worker.model.directory import read_manifest
from worker.model.manifest import ModelFormatError, StaticParams
from worker.model.static import StaticEncoder, features, load_static
from worker.service.decision import load_model
from worker.service.scan import scan
from worker.service.settings import WorkerSettings

TEXTS = [
    "Buy cheap watches at our store today, best prices guaranteed!",
    "My cat refuses to eat anything except tuna from one specific brand.",
    "The council meets on Tuesday to vote on the new bike lanes downtown.",
    "How do I learn to play the guitar as an adult beginner?",
    "Free money now, click the link to claim your prize",
]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_wordpiece(TEXTS * 3, vocab_size=300, min_frequency=1)


def random_model(path: Path, tokenizer: Tokenizer, dim: int = 16, seed: int = 0, lexical: int = 6) -> Path:
    params = StaticParams(
        vocab_size=tokenizer.get_vocab_size(),
        buckets=512,
        ngrams=(3, 5),
        embedding_dim=dim,
        lexical_dim=lexical,
        lexical_weight=0.3,
    )
    table = np.random.default_rng(seed).normal(size=(params.vocab_size + params.buckets, dim))
    table[: params.vocab_size, dim - lexical :] = 0.0  # WordPiece rows: the first columns only
    table[params.vocab_size :, : dim - lexical] = 0.0  # n-gram rows: the last ones
    write_static_dir(path, static_manifest(params, 64, tokenizer), table.astype(np.float32), tokenizer)
    return path


def test_saved_model_reloads_to_the_same_vectors_without_torch(tmp_path: Path, tokenizer: Tokenizer) -> None:
    model = random_model(tmp_path / "fast", tokenizer)
    first = load_static(model).embed(TEXTS)
    assert first.dtype == np.float32
    assert first.shape == (len(TEXTS), 16)
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert read_manifest(model).version.startswith("static-")
    code = (
        "import sys, json; from worker.model.static import load_static; "
        f"v = load_static({str(model)!r}).embed(json.loads(sys.argv[1])); "
        "print(json.dumps(v.tolist())); assert 'torch' not in sys.modules"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(TEXTS)], capture_output=True, text=True, check=True
    )
    assert np.array_equal(np.asarray(json.loads(out.stdout), dtype=np.float32), first)
    # one text's vector does not depend on its batch
    assert np.allclose(load_static(model).embed(TEXTS[2:3])[0], first[2], atol=1e-6)


def test_the_cosine_is_the_weighted_sum_of_its_two_parts(tmp_path: Path, tokenizer: Tokenizer) -> None:
    both = load_static(random_model(tmp_path / "both", tokenizer))
    a, b = both.embed(TEXTS[:2])
    table, split = both.table, 16 - 6
    rows, offsets = features(TEXTS[:2], both.tokenizer, both.params, 64)
    sums = [table[rows[offsets[i] : offsets[i + 1]]].sum(0) for i in range(2)]
    unit = [[x[:split] / np.linalg.norm(x[:split]), x[split:] / np.linalg.norm(x[split:])] for x in sums]
    expected = 0.7 * unit[0][0] @ unit[1][0] + 0.3 * unit[0][1] @ unit[1][1]
    assert float(a @ b) == pytest.approx(float(expected), abs=1e-5)


def test_tampered_weights_are_refused(tmp_path: Path, tokenizer: Tokenizer) -> None:
    model = random_model(tmp_path / "fast", tokenizer)
    other = random_model(tmp_path / "other", tokenizer, seed=1)
    (model / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(ModelFormatError, match="does not match the weights"):
        load_static(model)


def test_a_lexical_weight_the_weights_do_not_hold_is_refused(tmp_path: Path, tokenizer: Tokenizer) -> None:
    model = random_model(tmp_path / "fast", tokenizer)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["hyperparameters"]["lexical_weight"] = 0.9  # other vectors under the same version
    (model / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFormatError, match="lexical_weight"):
        load_static(model)


def test_hidden_characters_and_look_alikes_change_nothing(tmp_path: Path, tokenizer: Tokenizer) -> None:
    encoder = load_static(random_model(tmp_path / "fast", tokenizer))
    original = "Free money now, click the link to claim your prize"
    disguised = (
        "Frее mo\u200bney n\u2060ow, ｃｌｉｃｋ the link to claim your prize"  # Cyrillic е, full width
    )
    a, b = encoder.embed([original, disguised])
    assert np.array_equal(a, b)
    params = encoder.params
    rows_a, _ = features([original], encoder.tokenizer, params, 64)
    rows_b, _ = features([disguised], encoder.tokenizer, params, 64)
    assert np.array_equal(rows_a, rows_b)
    typo = encoder.embed(["Free mony now, click the link to claim your prize"])[0]
    unrelated = encoder.embed([TEXTS[3]])[0]
    assert float(a @ typo) > 0.8 > float(a @ unrelated)


def test_the_worker_loads_and_decides_with_a_static_model(tmp_path: Path, tokenizer: Tokenizer) -> None:
    model = random_model(tmp_path / "fast", tokenizer)
    encoder, threshold = load_model(WorkerSettings(), model)
    assert isinstance(encoder, StaticEncoder)
    assert threshold == 0.8
    posts = [{"id": f"p{i}", "text": t} for i, t in enumerate(TEXTS)]
    posts.append({"id": "repost", "text": "FREE mоney now!! click the link to claim your prize \u200b🔥"})
    source = tmp_path / "posts.jsonl"
    source.write_text("\n".join(json.dumps(p) for p in posts) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    summary = scan(source, out, encoder, MemoryIndex(), threshold, progress=False)
    decisions = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary.documents == len(posts)
    flagged = {d["id"]: d["duplicate_of"] for d in decisions if d["flagged"]}
    assert flagged == {"repost": "p4"}


def _write_pairs(path: Path, rows: list[tuple[str, str, int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["text_a", "text_b", "label"])
        writer.writerows(rows)


def test_distill_writes_a_calibrated_static_model(tmp_path: Path) -> None:
    from devkit.tiny import tiny_model

    rng = np.random.default_rng(0)
    words = [
        "cat",
        "dog",
        "bird",
        "fish",
        "red",
        "blue",
        "green",
        "tall",
        "short",
        "old",
        "new",
        "city",
        "river",
        "road",
        "book",
        "song",
    ]
    texts = [" ".join(rng.choice(words, size=6)) for _ in range(240)]
    rows = []
    for i, text in enumerate(texts):
        shuffled = " ".join(reversed(text.split()))
        rows.append((text, shuffled if i % 2 else texts[(i + 7) % len(texts)], int(i % 2)))
    data = tmp_path / "data"
    _write_pairs(data / "toy" / "train.tsv", rows[:160])
    _write_pairs(data / "qqp" / "dev.tsv", rows[160:])
    teacher = tiny_model(tmp_path / "teacher", texts)
    recipe = DistillRecipe(
        semantic_dim=6, lexical_dim=4, buckets=256, teacher_texts=100, budget_s=4.0, reserve_s=0.0,
        eval_every=5, batch_size=16, pair_batch_size=16, stream_pairs=40, cache=tmp_path / "cache",
    )  # fmt: skip
    manifest = distill(teacher, data, tmp_path / "fast", recipe, progress=False)
    assert manifest.architecture == "static"
    assert manifest.dim == 10
    assert manifest.thresholds.calibrated_on is not None
    assert int(manifest.training["steps"]) > 0  # type: ignore[arg-type]
    assert load_static(tmp_path / "fast").embed(texts[:3]).shape == (3, 10)


def test_recalibrate_takes_the_best_f1_cosine_of_a_labelled_stream(
    tmp_path: Path, tokenizer: Tokenizer
) -> None:
    from trainer.static_model import recalibrate

    model = random_model(tmp_path / "fast", tokenizer)
    version = read_manifest(model).version
    rows = [
        ({"id": "a", "text": TEXTS[0]}, {"id": "a", "duplicate_of": None, "kind": "original"}),
        ({"id": "b", "text": TEXTS[3]}, {"id": "b", "duplicate_of": None, "kind": "original"}),
        ({"id": "c", "text": TEXTS[0] + " !!"}, {"id": "c", "duplicate_of": "a", "kind": "edit"}),
        ({"id": "d", "text": TEXTS[3].upper()}, {"id": "d", "duplicate_of": "b", "kind": "edit"}),
        ({"id": "e", "text": TEXTS[2]}, {"id": "e", "duplicate_of": None, "kind": "original"}),
    ]
    posts, truth = tmp_path / "posts.jsonl", tmp_path / "truth.jsonl"
    posts.write_text("\n".join(json.dumps(p) for p, _ in rows) + "\n", encoding="utf-8")
    truth.write_text("\n".join(json.dumps(t) for _, t in rows) + "\n", encoding="utf-8")
    manifest = recalibrate(model, posts, truth)
    encoder = load_static(model)
    assert manifest.version == version  # the weights did not change
    assert manifest.thresholds.best_f1 == pytest.approx(1.0)
    edits = encoder.embed([TEXTS[0] + " !!", TEXTS[3].upper()])
    originals = encoder.embed([TEXTS[0], TEXTS[3]])
    assert encoder.threshold <= float((edits * originals).sum(1).min())
    assert "posts.jsonl" in str(manifest.thresholds.calibrated_on)
