"""docker-compose.yml: valid for `docker-compose config` (no engine needed) and shaped as the README says.

The `docker-compose config` tests need Debian's `docker-compose` package (.ci/run installs it) and skip
without it; the structural tests read the file with PyYAML and always run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from worker.service.settings import ENV_PREFIX, NESTED_DELIMITER, WorkerSettings

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read docker-compose.yml")

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
API_KEY = "test-key-not-a-secret"
SECRET_NAME = re.compile(r"KEY|SECRET|PASSWORD|TOKEN", re.IGNORECASE)
WORKERS = ("worker", "worker-gpu")


def setting_names() -> set[str]:
    """Every environment variable WorkerSettings reads (TWINFLAG_KAFKA__BOOTSTRAP_SERVERS, ...)."""
    names: set[str] = set()

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, f"{prefix}{name.upper()}{NESTED_DELIMITER}")
            else:
                names.add(f"{prefix}{name.upper()}")

    walk(WorkerSettings, ENV_PREFIX)
    return names


def env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if "=" in line)
    return {name.strip(): value.strip() for name, value in pairs if not name.lstrip().startswith("#")}


def as_dict(environment: Any) -> dict[str, str]:
    """A service's environment, whether written as a mapping or as a list of NAME=value."""
    if isinstance(environment, dict):
        return {str(k): str(v) for k, v in environment.items()}
    return dict(str(item).split("=", 1) for item in environment or [])


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    """The file as written (anchors resolved, `${...}` not interpolated)."""
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


@pytest.fixture(scope="module")
def compose_bin() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        pytest.skip("docker-compose is not installed (Debian package `docker-compose`; .ci/run installs it)")
    return found


def run_config(compose_bin: str, api_key: str | None) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` with .env.example as the .env file and a clean environment."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
    if api_key is not None:
        env["QDRANT_API_KEY"] = api_key
    command = [compose_bin, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE)]
    command += ["--profile", "gpu", "--profile", "train", "config"]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def config(compose_bin: str) -> dict[str, Any]:
    """The configuration as docker-compose resolves it from .env.example plus an API key."""
    result = run_config(compose_bin, API_KEY)
    assert result.returncode == 0, result.stderr
    resolved: dict[str, Any] = yaml.safe_load(result.stdout)
    return resolved


# ------------------------------------------------------------------------------ docker-compose config


def test_compose_config_accepts_the_file(config: dict[str, Any]) -> None:
    services = {"kafka", "qdrant", "init", "model-init", "worker", "worker-gpu", "shadow", "trainer"}
    assert set(config["services"]) == services


def test_compose_refuses_to_start_without_the_qdrant_api_key(compose_bin: str) -> None:
    for missing in (None, ""):
        result = run_config(compose_bin, missing)
        assert result.returncode != 0
        assert "set QDRANT_API_KEY in .env" in result.stderr


def test_workers_get_valid_settings_from_the_resolved_file(
    config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    known = setting_names()
    for name in WORKERS:
        env = as_dict(config["services"][name]["environment"])
        ours = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
        assert set(ours) <= known, f"{name}: unknown settings {set(ours) - known}"
        for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
            monkeypatch.delenv(key)
        for key, value in ours.items():
            monkeypatch.setenv(key, value)
        settings = WorkerSettings()
        assert settings.index.backend == "qdrant"
        assert settings.index.api_key is not None
        assert settings.index.api_key.get_secret_value() == API_KEY
        assert settings.kafka.bootstrap_servers == "kafka:9092"
        assert str(settings.model.path) == "/models/default"


def test_topic_partitions_come_from_the_env_file(config: dict[str, Any]) -> None:
    env = as_dict(config["services"]["init"]["environment"])
    example = env_example()
    for name in ("DOCUMENTS_PARTITIONS", "FLAGS_PARTITIONS", "DLQ_PARTITIONS", "DECISIONS_PARTITIONS"):
        assert env[name] == example[name]


# ------------------------------------------------------------------------------------ the file itself


def test_kafka_runs_in_kraft_mode_pinned_with_a_healthcheck(raw: dict[str, Any]) -> None:
    kafka = raw["services"]["kafka"]
    assert re.fullmatch(r"apache/kafka:\d+\.\d+\.\d+", kafka["image"])
    env = as_dict(kafka["environment"])
    assert "controller" in env["KAFKA_PROCESS_ROLES"]
    assert not any("ZOOKEEPER" in key for key in env)
    assert kafka["healthcheck"]["test"]
    assert any(str(v).endswith(":/var/lib/kafka/data") for v in kafka["volumes"])


def test_qdrant_is_pinned_with_a_volume_and_a_healthcheck(raw: dict[str, Any]) -> None:
    qdrant = raw["services"]["qdrant"]
    assert re.fullmatch(r"qdrant/qdrant:v\d+\.\d+\.\d+(-unprivileged)?", qdrant["image"])
    assert any(str(v).endswith(":/qdrant/storage") for v in qdrant["volumes"])
    assert "/readyz" in " ".join(qdrant["healthcheck"]["test"])


def test_init_is_a_one_shot_after_kafka_is_healthy(raw: dict[str, Any]) -> None:
    init = raw["services"]["init"]
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert init["restart"] == "no"
    assert any("deploy/init-topics.sh" in str(v) and str(v).endswith(":ro") for v in init["volumes"])


@pytest.mark.parametrize("name", WORKERS)
def test_workers_wait_for_topics_model_and_healthy_servers(raw: dict[str, Any], name: str) -> None:
    depends = raw["services"][name]["depends_on"]
    assert depends["init"]["condition"] == "service_completed_successfully"
    assert depends["model-init"]["condition"] == "service_completed_successfully"
    assert depends["kafka"]["condition"] == "service_healthy"
    assert depends["qdrant"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", WORKERS)
def test_workers_scale_as_one_group_and_mount_the_model_read_only(raw: dict[str, Any], name: str) -> None:
    service = raw["services"][name]
    assert "container_name" not in service
    assert "ports" not in service  # no fixed host port: --scale would collide
    assert "models:/models:ro" in service["volumes"]
    env = as_dict(service["environment"])
    assert (
        env["TWINFLAG_KAFKA__GROUP_ID"]
        == as_dict(raw["services"]["worker"]["environment"])["TWINFLAG_KAFKA__GROUP_ID"]
    )
    assert env["TWINFLAG_INDEX__BACKEND"] == "qdrant"


def test_cpu_worker_builds_the_cpu_image(raw: dict[str, Any]) -> None:
    assert raw["services"]["worker"]["build"]["dockerfile"] == "deploy/Dockerfile.cpu"
    assert "profiles" not in raw["services"]["worker"]


def test_gpu_worker_is_in_the_gpu_profile_with_an_nvidia_reservation(raw: dict[str, Any]) -> None:
    gpu = raw["services"]["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["dockerfile"] == "deploy/Dockerfile.gpu"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert as_dict(gpu["environment"])["TWINFLAG_MODEL__DEVICE"] == "cuda"


def test_shadow_replays_with_the_candidate_apart_from_the_live_group(
    config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """README, "Promoting a new model": its own group, collection, model and output topics, the same input
    read from the start; a real setting for every variable."""
    env = as_dict(config["services"]["shadow"]["environment"])
    live = as_dict(config["services"]["worker"]["environment"])
    for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = WorkerSettings()
    assert settings.kafka.group_id == "twinflag-candidate" != live["TWINFLAG_KAFKA__GROUP_ID"]
    assert settings.index.collection == "twinflag-candidate" != live["TWINFLAG_INDEX__COLLECTION"]
    assert str(settings.model.path) == "/models/candidate"
    assert settings.kafka.input_topic == live["TWINFLAG_KAFKA__INPUT_TOPIC"]
    assert settings.kafka.auto_offset_reset == "earliest"
    outputs = {settings.kafka.flags_topic, settings.kafka.dlq_topic, settings.kafka.decisions_topic}
    assert not outputs & set(live.values())


def test_shadow_is_in_its_own_profile(raw: dict[str, Any]) -> None:
    shadow = raw["services"]["shadow"]
    assert shadow["profiles"] == ["shadow"]
    assert "models:/models:ro" in shadow["volumes"]


def test_trainer_is_in_the_train_profile_and_writes_the_shared_volume(raw: dict[str, Any]) -> None:
    trainer = raw["services"]["trainer"]
    assert trainer["profiles"] == ["train"]
    assert "models:/models" in trainer["volumes"]
    assert "models" in raw["volumes"]


def test_no_secret_has_a_default() -> None:
    """Every `${VAR...}` whose name looks like a secret must be `${VAR:?message}`: set, or refuse."""
    text = COMPOSE.read_text()
    references = re.findall(r"\$\{([A-Za-z0-9_]+)([^}]*)\}", text)
    secrets = [(name, rest) for name, rest in references if SECRET_NAME.search(name)]
    assert secrets, "expected the Qdrant API key to be referenced"
    for name, rest in secrets:
        assert rest.startswith(":?"), f"${{{name}{rest}}} gives a secret a default"
    example = env_example()
    assert all(value == "" for name, value in example.items() if SECRET_NAME.search(name))
    assert example["QDRANT_API_KEY"] == ""


def test_every_variable_in_the_file_is_documented_in_the_env_example() -> None:
    used = set(re.findall(r"\$\{([A-Za-z0-9_]+)", COMPOSE.read_text()))
    assert used <= set(env_example()), f"missing from .env.example: {used - set(env_example())}"
