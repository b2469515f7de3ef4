"""Settings: environment parsing, validation of security modes, secrets that never show."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from worker.kafka.config import KafkaSettings, kafka_options
from worker.service.commands import load_settings
from worker.service.settings import ENV_PREFIX, WorkerSettings, settings_markdown

SECRET = "hunter2-do-not-print"
SASL = {
    "security_protocol": "SASL_SSL",
    "sasl_mechanism": "SCRAM-SHA-512",
    "sasl_username": "twinflag",
    "sasl_password": SECRET,
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def test_defaults_need_no_environment() -> None:
    settings = WorkerSettings()
    assert settings.kafka.input_topic == "documents"
    assert settings.kafka.flags_topic == "duplicate-flags"
    assert settings.kafka.dlq_topic == "documents.dlq"
    assert settings.kafka.decisions_topic is None
    assert settings.kafka.delivery == "at-least-once"
    assert settings.index.backend == "embedded"
    assert settings.model.threshold is None


def test_nested_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWINFLAG_KAFKA__BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("TWINFLAG_KAFKA__MAX_POLL_RECORDS", "64")
    monkeypatch.setenv("TWINFLAG_MODEL__THRESHOLD", "0.9")
    monkeypatch.setenv("TWINFLAG_TOP_K", "3")
    settings = WorkerSettings()
    assert settings.kafka.max_poll_records == 64
    assert settings.model.threshold == 0.9
    assert settings.top_k == 3
    assert kafka_options(settings.kafka)["bootstrap_servers"] == ["k1:9092", "k2:9092"]


def test_settings_are_frozen() -> None:
    settings = WorkerSettings()
    with pytest.raises(ValidationError):
        settings.top_k = 9  # type: ignore[misc]


def test_index_backend_follows_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWINFLAG_INDEX__URL", "https://qdrant:6333")
    monkeypatch.setenv("TWINFLAG_INDEX__API_KEY", SECRET)
    settings = WorkerSettings()
    assert settings.index.backend == "qdrant"
    assert SECRET not in repr(settings)
    assert SECRET not in settings.model_dump_json()


@pytest.mark.parametrize("missing", ["sasl_mechanism", "sasl_username", "sasl_password"])
def test_sasl_protocols_need_mechanism_and_credentials(missing: str) -> None:
    options = {k: v for k, v in SASL.items() if k != missing}
    with pytest.raises(ValidationError, match=missing) as raised:
        KafkaSettings.model_validate(options)
    assert SECRET not in str(raised.value)  # a validation error never echoes the input


def test_sasl_password_is_a_secret_everywhere_but_the_client_options() -> None:
    settings = WorkerSettings(kafka=KafkaSettings.model_validate(SASL))
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)
    assert SECRET not in settings.model_dump_json()
    options = kafka_options(settings.kafka)
    assert options["sasl_plain_password"] == SECRET
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["security_protocol"] == "SASL_SSL"


def test_plaintext_sends_no_credentials() -> None:
    options = kafka_options(KafkaSettings())
    assert not any(key.startswith(("sasl_", "ssl_")) for key in options)


def test_exactly_once_needs_a_transactional_id() -> None:
    with pytest.raises(ValidationError, match="transactional_id"):
        KafkaSettings(delivery="exactly-once")
    assert KafkaSettings(delivery="exactly-once", transactional_id="w-0").delivery == "exactly-once"


def test_invalid_environment_exits_2_naming_the_setting_not_the_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TWINFLAG_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("TWINFLAG_KAFKA__SASL_PASSWORD", SECRET)
    with capture_logs() as logged, pytest.raises(SystemExit) as exited:
        load_settings()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "TWINFLAG_KAFKA" in err
    assert "sasl_mechanism" in err
    assert SECRET not in err
    assert SECRET not in repr(logged)


def test_markdown_lists_every_setting_with_its_environment_variable() -> None:
    table = settings_markdown()
    for name in (
        "TWINFLAG_KAFKA__BOOTSTRAP_SERVERS",
        "TWINFLAG_KAFKA__SASL_PASSWORD",
        "TWINFLAG_KAFKA__DELIVERY",
        "TWINFLAG_INDEX__API_KEY",
        "TWINFLAG_MODEL__PATH",
        "TWINFLAG_METRICS_PORT",
        "TWINFLAG_LOG_FORMAT",
    ):
        assert f"| `{name}` |" in table
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert all(line.count(" | ") >= 3 and not line.endswith("|  |") for line in rows)  # a description each
    assert '`"at-least-once"` \\| `"exactly-once"`' in table


def test_credentials_in_the_qdrant_url_are_masked_by_the_settings_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from worker.service.commands import cmd_settings

    monkeypatch.setenv("TWINFLAG_INDEX__URL", f"https://twinflag:{SECRET}@qdrant.internal:6333")
    assert cmd_settings(argparse.Namespace(markdown=False)) == 0
    shown = capsys.readouterr().out
    assert SECRET not in shown
    assert '"url": "https://**********@qdrant.internal:6333"' in shown
    settings = load_settings()
    assert SECRET not in repr(settings)
    assert settings.index.url == f"https://twinflag:{SECRET}@qdrant.internal:6333"  # the client still gets it


def test_the_dead_letter_limit_comes_from_the_setting_the_created_topic_or_the_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker.kafka import config

    described = {"topic": {"documents.dlq": {"max.message.bytes": {"value": "2000000", "read_only": False}}}}
    assert config.message_limit_of(described, "documents.dlq") == 2_000_000
    assert config.message_limit_of({"topic": {"documents.dlq": {}}}, "documents.dlq") is None  # Tansu
    monkeypatch.setattr(config, "topic_message_limit", lambda kafka, topic: 2_000_000)
    overhead = config.RECORD_OVERHEAD
    assert config.dead_letter_limit(KafkaSettings(), False, 1_000_000) == 2_000_000 - overhead
    assert (
        config.dead_letter_limit(KafkaSettings(dlq_max_message_bytes=50_000), False, 1) == 50_000 - overhead
    )
    created = config.dlq_max_bytes(1_000_000)
    assert config.dead_letter_limit(KafkaSettings(), True, 1_000_000) == created - overhead
    monkeypatch.setattr(config, "topic_message_limit", lambda kafka, topic: None)
    assert config.dead_letter_limit(KafkaSettings(), False, 1_000_000) == 1_000_000  # under Kafka's default


def test_an_unknown_variable_is_refused_with_the_close_names(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TWINFLAG_COLLECTION", "forum")  # the group's setting is TWINFLAG_INDEX__COLLECTION
    monkeypatch.setenv("TWINFLAG_KAFKA__BOOTSTRAP_SERVER", "b:9092")  # one letter short
    monkeypatch.setenv("TWINFLAG_TRAIN_LR", "1e-4")  # the trainer's: not the worker's business
    with pytest.raises(SystemExit) as stopped:
        load_settings()
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "unknown setting TWINFLAG_COLLECTION (did you mean TWINFLAG_INDEX__COLLECTION?)" in err
    assert (
        "unknown setting TWINFLAG_KAFKA__BOOTSTRAP_SERVER (did you mean TWINFLAG_KAFKA__BOOTSTRAP_SERVERS"
        in err
    )
    assert "TRAIN_LR" not in err
    monkeypatch.delenv("TWINFLAG_COLLECTION")
    monkeypatch.delenv("TWINFLAG_KAFKA__BOOTSTRAP_SERVER")
    monkeypatch.setenv("TWINFLAG_INDEX__COLLECTION", "forum")
    assert load_settings().index.collection == "forum"
