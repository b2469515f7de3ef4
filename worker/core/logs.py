"""structlog, configured once in ``main``: JSON lines when stderr is not a terminal, console otherwise.

Events carry counts, ids, positions and timings; never document text, payload bytes or secrets.
Two guards back that rule up: tracebacks are rendered without local variables (a frame's locals hold
texts and credentials), and ``redact`` masks any field whose name says it holds text or a secret.
kafka-python logs record payloads at DEBUG, so its stdlib logger stays at WARNING whatever the level.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor

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
    """Configure structlog and the stdlib root logger; later calls are no-ops."""
    global _configured
    if _configured:
        return
    _configured = True
    out = stream if stream is not None else sys.stderr
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    if console:
        processors.append(structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback))
    else:
        no_locals = structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        processors += [structlog.processors.ExceptionRenderer(no_locals), structlog.processors.JSONRenderer()]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,  # tests swap processors with structlog.testing.capture_logs
    )
    logging.basicConfig(stream=out, level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLevelNamesMapping()[level]))


def get_logger(component: str, **context: Any) -> Any:
    """A logger bound to a component and any context (partition, offset, document id; never text)."""
    return structlog.get_logger(component=component, **context)


def bind(logger: Any, **context: Any) -> Any:
    """The same logger with more context, e.g. ``bind(log, batch=n)``."""
    bound: Any = logger.bind(**context)
    return bound
