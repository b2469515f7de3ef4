"""``python -m worker``: the command line. Parses arguments only; ``worker.service.commands`` acts.

Commands: ``run`` (the Kafka service), ``scan`` (the batch step over a JSONL file), ``index`` (bulk-load
a corpus), ``serve`` (the HTTP API), ``verdicts`` (moderators' verdicts with their texts, for the trainer),
``settings --markdown`` (the settings table of the README). Exit
codes: 0 after a clean stop, 1 after an unexpected error (logged with its traceback, nothing
committed), 2 for configuration, model or index problems that a restart cannot fix.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from worker import __version__
from worker.core.errors import FatalError
from worker.service.commands import cmd_index, cmd_run, cmd_scan, cmd_serve, cmd_settings, cmd_verdicts
from worker.service.wiring import EXIT_CONFIG

DESCRIPTION = "twinflag worker: documents from Kafka → embed → nearest earlier posts → duplicate flags."


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m worker", description=DESCRIPTION)
    top.add_argument("--version", action="version", version=f"twinflag worker {__version__}")
    commands = top.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="consume documents, publish duplicate flags (settings: TWINFLAG_*)")
    run.set_defaults(func=cmd_run)

    scan = commands.add_parser("scan", help="the batch step over a JSONL file, one decision per line")
    scan.add_argument("--model", type=Path, required=True, help="model directory")
    scan.add_argument("--input", type=Path, required=True, help="posts, one JSON document per line")
    scan.add_argument("--output", type=Path, required=True, help="decisions, one JSON object per line")
    scan.add_argument(
        "--index", type=Path, help="embedded index to match against and add to (default: fresh)"
    )
    scan.add_argument("--threshold", type=float, help="decision threshold (default: the model's)")
    scan.add_argument(
        "--read-only",
        action="store_true",
        help="check each line against the index alone; write nothing to it (needs --index)",
    )
    scan.add_argument("--batch-size", type=int, default=256)
    scan.add_argument("--quiet", action="store_true", help="no progress bar")
    scan.set_defaults(func=cmd_scan)

    index = commands.add_parser("index", help="bulk-load a corpus into the configured index (resumable)")
    index.add_argument("--input", type=Path, required=True, help="corpus, one JSON document per line")
    index.add_argument("--model", type=Path, help="model directory (default: TWINFLAG_MODEL__PATH)")
    index.add_argument("--batch-size", type=int, default=256)
    index.add_argument("--quiet", action="store_true", help="no progress bar")
    index.set_defaults(func=cmd_index)

    serve = commands.add_parser(
        "serve", help="the HTTP API: check, add and delete posts (settings: TWINFLAG_HTTP__*)"
    )
    serve.add_argument("--model", type=Path, help="model directory (default: TWINFLAG_MODEL__PATH)")
    serve.add_argument("--index", type=Path, help="embedded index directory (default: TWINFLAG_INDEX__*)")
    serve.add_argument("--threshold", type=float, help="decision threshold (default: the model's)")
    serve.set_defaults(func=cmd_serve)

    verdicts = commands.add_parser(
        "verdicts",
        help="the verdicts kept beside the index, texts read back from the documents topic (for retrain)",
    )
    verdicts.add_argument("--out", type=Path, required=True, help="verdicts, one JSON object per line")
    verdicts.add_argument(
        "--index", type=Path, help="embedded index directory (default: TWINFLAG_INDEX__PATH)"
    )
    verdicts.set_defaults(func=cmd_verdicts)

    settings = commands.add_parser("settings", help="show the settings (values, secrets masked)")
    settings.add_argument("--markdown", action="store_true", help="every setting as a Markdown table")
    settings.set_defaults(func=cmd_settings)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except FatalError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    return code
