"""structlog, configured once in ``main``: JSON lines when stderr is not a terminal, console otherwise.

Events carry counts, ids, positions and timings; never document text, payload bytes or secrets.
Two guards back that rule up: tracebacks are rendered without local variables (a frame's locals hold
texts and credentials), and ``redact`` masks any field whose name says it holds text or a secret.
kafka-python logs record payloads at DEBUG, so its stdlib logger stays at WARNING whatever the level;
what it does log comes out in the same format as ours.

Event names are lowercase snake_case (``batch``, ``worker_started``, ``model_written``); a component may
put a dotted namespace in front (``index.optimize.started``).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor

_SENSITIVE = ("text", "value", "payload", "password", "secret", "api_key", "token", "credential")
_configured = False


def redact(_logger: object, _method: str, event: EventDict) -> EventDict:
    """Mask fields that could carry document text or a secret; show byte payloads by size only."""
    for key, value in list(event.items()):
        if key == "event":
            continue
        if any(word in key.lower() for word in _SENSITIVE):
            event[key] = "[redacted]"
        elif isinstance(value, bytes | bytearray):
            event[key] = f"<{len(value)} bytes>"
    return event


def configure(
    level: str = "INFO", fmt: Literal["auto", "json", "console"] = "auto", stream: TextIO | None = None
) -> None:
    """Configure structlog and the stdlib root logger; later calls are no-ops.

    Lines from libraries that log through stdlib ``logging`` (kafka-python's connection warnings) go
    through the same processors and renderer, so every line of a JSON log is JSON; their logger name
    becomes the ``component``.
    """
    global _configured
    if _configured:
        return
    _configured = True
    out = stream if stream is not None else sys.stderr
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    renderers: list[Processor]
    if console:
        renderers = [structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)]
    else:
        no_locals = structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        renderers = [structlog.processors.ExceptionRenderer(no_locals), structlog.processors.JSONRenderer()]
    structlog.configure(
        processors=shared + renderers,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,  # tests swap processors with structlog.testing.capture_logs
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[_component_from_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderers],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLevelNamesMapping()[level]))


def _component_from_logger_name(_logger: object, _method: str, event: EventDict) -> EventDict:
    record = event.get("_record")
    if record is not None:
        event["component"] = record.name
    return event


def get_logger(component: str, **context: Any) -> FilteringBoundLogger:
    """A logger bound to a component and any context (partition, offset, document id; never text)."""
    logger: FilteringBoundLogger = structlog.get_logger(component=component, **context)
    return logger


def bind(logger: FilteringBoundLogger, **context: Any) -> FilteringBoundLogger:
    """The same logger with more context, e.g. ``bind(log, batch=n)``."""
    return logger.bind(**context)
