"""``python -m tests.integration.driver``: ``python -m worker run`` with a hash encoder for the model.

The same wiring (``worker.__main__.run_worker``), the same settings from ``TWINFLAG_*`` variables, the
real Kafka clients and the real embedded index; only the encoder is the fast deterministic fake, so a
worker process can be killed and restarted in seconds. Test fakes stay out of production code.
"""

from __future__ import annotations

import sys

from tests.fakes import HashEncoder
from worker.core import logs
from worker.service.commands import load_settings
from worker.service.wiring import run_worker, stop_on_signals

THRESHOLD = 0.8


def main() -> int:
    settings = load_settings()
    logs.configure(settings.log_level, settings.log_format)
    stop = stop_on_signals()
    threshold = settings.model.threshold if settings.model.threshold is not None else THRESHOLD
    return run_worker(settings, HashEncoder(), threshold, stop)


if __name__ == "__main__":
    sys.exit(main())
