"""deploy/: Dockerfiles run as non-root, Kubernetes manifests agree with the worker, the topics script."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from worker.kafka.config import dlq_max_bytes
from worker.service.settings import ENV_PREFIX, WorkerSettings

from .test_compose import env_example, setting_names

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the Kubernetes manifests")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
INIT_TOPICS = DEPLOY / "init-topics.sh"
DEFAULTS = WorkerSettings()


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(path: Path) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in load_all(path)}


@pytest.fixture(scope="module")
def worker() -> dict[str, dict[str, Any]]:
    return by_kind(K8S / "worker.yaml")


@pytest.fixture(scope="module")
def container(worker: dict[str, dict[str, Any]]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = worker["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


# ----------------------------------------------------------------------------------------- Dockerfiles


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    pairs = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfile_runs_the_worker_as_a_non_root_user(name: str) -> None:
    stage = final_stage(DEPLOY / name)
    users = [args for word, args in stage if word == "USER"]
    assert users, f"{name}: the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user == "10001"  # numeric, so Kubernetes' runAsNonRoot can check it; worker.yaml says the same
    assert ("CMD", '["python", "-m", "worker", "run"]') in stage
    healthcheck = " ".join(args for word, args in stage if word == "HEALTHCHECK")
    assert "/healthz" in healthcheck
    assert any(word == "ENV" and "TWINFLAG_MODEL__PATH=/models/default" in args for word, args in stage)


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfile_installs_against_the_lock_file(name: str) -> None:
    runs = " ".join(args for word, args in instructions(DEPLOY / name) if word == "RUN")
    assert re.search(r"pip install -c requirements\.lock (\.|\"\.\[onnx\]\")", runs)
    assert "torch==" in runs
    ignore = (DEPLOY / f"{name}.dockerignore").read_text()
    assert "*" in ignore.splitlines()  # the context is only what the image copies: no .venv, no data
    assert "!requirements.lock" in ignore


def test_cpu_image_is_slim_and_takes_torch_from_the_cpu_index() -> None:
    steps = instructions(DEPLOY / "Dockerfile.cpu")
    assert ("ARG", "PYTHON_IMAGE=python:3.11-slim") in steps
    runs = " ".join(args for word, args in steps if word == "RUN")
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs
    assert '".[onnx]"' in runs  # the int8 model's runtime: CPU workers run models/int8


def test_gpu_image_runs_on_a_cuda_base() -> None:
    steps = instructions(DEPLOY / "Dockerfile.gpu")
    assert any(word == "ARG" and args.startswith("CUDA_IMAGE=nvidia/cuda:") for word, args in steps)
    assert final_stage(DEPLOY / "Dockerfile.gpu")[0] == ("FROM", "${CUDA_IMAGE}")


# ------------------------------------------------------------------------------------------ Kubernetes


@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_manifests_parse(path: Path) -> None:
    assert load_all(path)


def test_probes_point_at_healthz_and_readyz_on_the_metrics_port(container: dict[str, Any]) -> None:
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == DEFAULTS.metrics_port
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_pod_runs_as_non_root_with_requests_and_limits(
    worker: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    pod = worker["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    assert pod["terminationGracePeriodSeconds"] > DEFAULTS.shutdown_timeout_s


def test_model_comes_from_a_read_only_volume(
    worker: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["models"]["mountPath"] == "/models"
    assert mounts["models"]["readOnly"] is True
    volumes = {v["name"]: v for v in worker["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["readOnly"] is True
    assert worker["ConfigMap"]["data"]["TWINFLAG_MODEL__PATH"] == "/models/default"


def test_settings_are_valid_and_secrets_come_from_a_secret(
    worker: dict[str, dict[str, Any]], container: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    data: dict[str, str] = worker["ConfigMap"]["data"]
    env = {item["name"]: item for item in container["env"]}
    assert set(data) | set(env) <= setting_names()
    assert not any(re.search(r"KEY|PASSWORD|SECRET", name) for name in data), "a secret in the ConfigMap"
    for name in ("TWINFLAG_INDEX__API_KEY", "TWINFLAG_KAFKA__SASL_PASSWORD"):
        assert "secretKeyRef" in env[name]["valueFrom"]
    for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TWINFLAG_INDEX__API_KEY", "from-the-secret")
    settings = WorkerSettings()
    assert settings.index.backend == "qdrant"
    assert settings.metrics_port == DEFAULTS.metrics_port


def test_keda_scales_on_the_workers_group_up_to_the_partitions(worker: dict[str, dict[str, Any]]) -> None:
    scaled = by_kind(K8S / "keda-scaledobject.yaml")["ScaledObject"]
    data = worker["ConfigMap"]["data"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["Deployment"]["metadata"]["name"]
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == data["TWINFLAG_KAFKA__GROUP_ID"]
    assert trigger["metadata"]["topic"] == data["TWINFLAG_KAFKA__INPUT_TOPIC"]
    assert scaled["spec"]["maxReplicaCount"] == int(env_example()["DOCUMENTS_PARTITIONS"])


def test_qdrant_values_describe_a_distributed_cluster_keyed_by_a_secret() -> None:
    (values,) = load_all(K8S / "qdrant-values.yaml")
    assert values["replicaCount"] == 3
    assert values["config"]["cluster"]["enabled"] is True
    assert "secretKeyRef" in values["apiKey"]["valueFrom"]
    assert values["persistence"]["size"]
    assert values["image"]["useUnprivilegedImage"] is True
    text = (K8S / "qdrant-values.yaml").read_text()
    assert "shard_number" in text
    assert "replication_factor" in text


# ------------------------------------------------------------------------------------- init-topics.sh


@pytest.fixture
def fake_kafka(tmp_path: Path) -> Path:
    """A kafka-topics.sh that logs its arguments and describes every topic with 2 partitions."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "kafka-topics.sh"
    script.write_text(
        "#!/usr/bin/env bash\n"
        'echo "$*" >> "$LOG"\n'
        'if [[ " $* " == *" --describe "* ]]; then\n'
        '  printf "Topic: t\\tPartition: 0\\nTopic: t\\tPartition: 1\\n"\n'
        "fi\n"
        'if [[ -n "${FAIL_LIST:-}" && " $* " == *" --list "* ]]; then exit 1; fi\n'
    )
    script.chmod(0o755)
    return bin_dir


def run_init(fake_kafka: Path, **env: str) -> subprocess.CompletedProcess[str]:
    log = fake_kafka.parent / "calls.log"
    full = {"PATH": os.environ["PATH"], "KAFKA_BIN": str(fake_kafka), "LOG": str(log), **env}
    command = ["bash", str(INIT_TOPICS)]
    return subprocess.run(command, env=full, capture_output=True, text=True, timeout=30, check=False)


def creates(fake_kafka: Path) -> dict[str, str]:
    lines = (fake_kafka.parent / "calls.log").read_text().splitlines()
    found = {}
    for line in lines:
        if "--create" in line:
            topic = re.search(r"--topic (\S+)", line)
            assert topic is not None
            found[topic.group(1)] = line
    return found


def test_init_topics_creates_the_four_topics_with_their_partitions(fake_kafka: Path) -> None:
    result = run_init(
        fake_kafka,
        BOOTSTRAP_SERVERS="kafka:9092",
        DOCUMENTS_PARTITIONS="4",
        FLAGS_PARTITIONS="5",
        DLQ_PARTITIONS="1",
        DECISIONS_PARTITIONS="3",
    )
    assert result.returncode == 0, result.stderr
    made = creates(fake_kafka)
    assert set(made) == {"documents", "duplicate-flags", "documents.dlq", "decisions"}
    wanted = {"documents": 4, "duplicate-flags": 5, "documents.dlq": 1, "decisions": 3}
    for topic, partitions in wanted.items():
        assert f"--partitions {partitions} " in made[topic]
        assert "--if-not-exists" in made[topic]
        assert "--bootstrap-server kafka:9092" in made[topic]
    assert f"max.message.bytes={dlq_max_bytes(DEFAULTS.max_message_bytes)}" in made["documents.dlq"]
    assert "cleanup.policy=compact,delete" in made["duplicate-flags"]
    assert "message.timestamp.type=LogAppendTime" in made["documents"]  # producers cannot backdate posts
    # The fake reports 2 partitions: fewer than asked is reported and left alone, not altered.
    assert "documents has 2 partitions, fewer than the 4 asked" in result.stderr
    assert "--alter" not in (fake_kafka.parent / "calls.log").read_text()


def test_init_topics_gives_up_when_no_broker_answers(fake_kafka: Path) -> None:
    result = run_init(fake_kafka, FAIL_LIST="1", WAIT_S="0")
    assert result.returncode == 1
    assert "no broker" in result.stderr
    assert not creates(fake_kafka)


def test_init_topics_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed")
    result = subprocess.run([shellcheck, str(INIT_TOPICS)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_shadow_replays_with_the_candidate_apart_from_the_workers(
    worker: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """README, "Promoting a new model": the workers' settings with its own group, collection, model and
    output topics; outside the workers' selector (their Service, budget and autoscaler)."""
    shadow = by_kind(K8S / "shadow.yaml")["Deployment"]
    (container,) = shadow["spec"]["template"]["spec"]["containers"]
    live: dict[str, str] = worker["ConfigMap"]["data"]
    assert container["envFrom"] == [{"configMapRef": {"name": worker["ConfigMap"]["metadata"]["name"]}}]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert set(env) <= setting_names()
    for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in {**live, **env, "TWINFLAG_INDEX__API_KEY": "from-the-secret"}.items():
        monkeypatch.setenv(key, value if value is not None else "from-value-from")  # a secret, the pod name
    settings = WorkerSettings()
    assert settings.kafka.group_id != live["TWINFLAG_KAFKA__GROUP_ID"]
    assert settings.index.collection != live["TWINFLAG_INDEX__COLLECTION"]
    assert str(settings.model.path) != live["TWINFLAG_MODEL__PATH"]
    assert settings.kafka.input_topic == live["TWINFLAG_KAFKA__INPUT_TOPIC"]
    assert settings.kafka.auto_offset_reset == "earliest"
    assert not {settings.kafka.flags_topic, settings.kafka.dlq_topic} & set(live.values())
    selector = worker["Deployment"]["spec"]["selector"]["matchLabels"].items()
    assert not selector <= shadow["spec"]["template"]["metadata"]["labels"].items()
