"""Logging: JSON lines on a non-terminal, and no document text or secret in any event or traceback."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from worker.core import logs


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handlers = logging.getLogger().handlers[:]
    logs._configured = False
    logs.configure("INFO", "auto", stream=out)
    yield out
    logs._configured = False
    structlog.reset_defaults()
    logging.getLogger().handlers = handlers


def test_json_lines_when_not_a_terminal(stream: io.StringIO) -> None:
    logs.get_logger("test", partition=3).info("batch", records=5)
    event = json.loads(stream.getvalue().splitlines()[-1])
    assert event["event"] == "batch"
    assert event["records"] == 5
    assert event["partition"] == 3
    assert event["component"] == "test"
    assert event["level"] == "info"
    assert "timestamp" in event


def test_fields_named_like_text_or_secrets_are_masked(stream: io.StringIO) -> None:
    log = logs.bind(logs.get_logger("test"), doc_id="d1")
    log.info("oops", text="a private post", sasl_password="hunter2", api_key="k", raw=b"\x00" * 9)
    event = json.loads(stream.getvalue().splitlines()[-1])
    assert event["text"] == event["sasl_password"] == event["api_key"] == "[redacted]"
    assert event["raw"] == "<9 bytes>"
    assert event["doc_id"] == "d1"


def test_tracebacks_carry_no_local_variables(stream: io.StringIO) -> None:
    def fail(text: str, password: str) -> None:
        raise RuntimeError("boom")

    try:
        fail("a private post", "hunter2")
    except RuntimeError:
        logs.get_logger("test").exception("batch_failed")
    line = stream.getvalue().splitlines()[-1]
    assert "RuntimeError" in line
    assert "boom" in line
    assert "a private post" not in line
    assert "hunter2" not in line


def test_level_filters(stream: io.StringIO) -> None:
    logs.get_logger("test").debug("noise")
    assert "noise" not in stream.getvalue()


def test_library_lines_through_stdlib_logging_are_json_too(stream: io.StringIO) -> None:
    logging.getLogger("kafka.conn").warning("connect to %s failed", "127.0.0.1:9")
    event = json.loads(stream.getvalue().splitlines()[-1])
    assert event["event"] == "connect to 127.0.0.1:9 failed"
    assert event["component"] == "kafka.conn"
    assert event["level"] == "warning"
    assert "timestamp" in event
