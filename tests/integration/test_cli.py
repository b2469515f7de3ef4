"""``python -m worker run`` itself, with a real (tiny, untrained) model directory written by the model
code: the CLI, settings from the environment, topic creation, TorchEncoder, the index check at start."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devkit.kafka import Names, committed, read_topic
from tests.integration.conftest import REPO, make_stream, produce_posts, worker_env

pytestmark = pytest.mark.integration
SECRET = "api-key-that-must-never-be-logged"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BiLSTM model directory with random weights and the base model's tokenizer (seconds to build)."""
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer

    from worker.model.directory import save_model_dir
    from worker.model.manifest import BiLSTMParams, Manifest, Thresholds
    from worker.model.modules import BiLSTMEncoder
    from worker.model.pretrained import default_base_model

    torch.manual_seed(0)
    tokenizer = Tokenizer.from_file(str(default_base_model() / "tokenizer.json"))
    params = BiLSTMParams(vocab_size=tokenizer.get_vocab_size(), embedding_dim=8, hidden_size=8)
    manifest = Manifest(
        architecture="bilstm",
        hyperparameters=params,
        dim=16,
        max_tokens=64,
        pooling="mean_max",
        thresholds=Thresholds(decision=0.97),
    )
    path = tmp_path_factory.mktemp("model") / "tiny"
    save_model_dir(path, manifest, BiLSTMEncoder(params, manifest.dim), tokenizer)
    return path


def cli(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "worker", "run"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )


def test_worker_run_with_a_model_directory(
    broker: str, names: Names, tmp_path: Path, tiny_model: Path
) -> None:
    posts = make_stream(40, seed=41)
    env = worker_env(
        broker,
        names,
        tmp_path / "index",
        TWINFLAG_MODEL__PATH=str(tiny_model),
        TWINFLAG_MODEL__DEVICE="cpu",
        TWINFLAG_KAFKA__CREATE_TOPICS="true",  # the worker creates its topics
        TWINFLAG_INDEX__API_KEY=SECRET,  # unused by the embedded index, but a secret all the same
    )
    worker = cli(env, tmp_path / "worker.log")
    try:
        deadline = time.monotonic() + 90
        while names.input not in _topics(broker) and time.monotonic() < deadline:
            time.sleep(0.2)
        produce_posts(broker, names.input, posts)
        while sum(committed(broker, names.group, names.input).values()) < len(posts):
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(0.2)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(15) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    output = (tmp_path / "worker.log").read_text()
    assert SECRET not in output
    assert all(post.text not in output for post in posts)  # no document text in the logs
    manifest = json.loads((tiny_model / "manifest.json").read_text())
    decisions = [json.loads(v) for _, v in read_topic(broker, names.decisions, expect=len(posts))]
    assert {d["id"] for d in decisions} == {p.id for p in posts}
    assert {d["model"] for d in decisions} == {manifest["version"]}
    flags = {json.loads(v)["id"]: json.loads(v) for _, v in read_topic(broker, names.flags)}
    exact = [
        p for p in posts if p.duplicate_of and p.text == next(q.text for q in posts if q.id == p.duplicate_of)
    ]
    assert exact, "the stream has exact reposts"
    for post in exact:
        assert flags[post.id]["stage"] == "exact"
        assert flags[post.id]["threshold"] == 0.97  # the manifest's threshold


def test_an_index_of_another_model_is_refused_at_start(
    broker: str, names: Names, tmp_path: Path, tiny_model: Path
) -> None:
    from tests.fakes import HashEncoder
    from worker.index.edge import EdgeIndex

    other = HashEncoder()
    index = EdgeIndex(tmp_path / "index")
    index.ensure(other.dim, other.version)
    index.close()
    env = worker_env(broker, names, tmp_path / "index", TWINFLAG_MODEL__PATH=str(tiny_model))
    worker = cli(env, tmp_path / "worker.log")
    assert worker.wait(60) == 2
    refused = [
        json.loads(line)
        for line in (tmp_path / "worker.log").read_text().splitlines()
        if "start_refused" in line
    ]
    assert refused, (tmp_path / "worker.log").read_text()[-2000:]
    assert "hash-trigram-v1" in refused[0]["error"]
    assert "bilstm-" in refused[0]["error"]


def _topics(broker: str) -> set[str]:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=broker)
    try:
        return set(admin.list_topics())
    finally:
        admin.close()
