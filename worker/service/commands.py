"""What each ``python -m worker`` command does; ``worker.cli`` parses the arguments and calls these.

Each builds its ``WorkerSettings`` once from the environment and configures logging once.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

from pydantic import ValidationError

from worker.core import logs
from worker.core.errors import FatalError
from worker.service.decision import decision_of, load_model
from worker.service.settings import (
    UnknownSettingError,
    WorkerSettings,
    load_from_environment,
    settings_markdown,
)
from worker.service.status import Readiness
from worker.service.wiring import EXIT_CONFIG, EXIT_OK, build_index, run_worker, stop_on_signals


def load_settings() -> WorkerSettings:
    """Settings from the environment; an invalid one exits 2 naming the setting, never its value."""
    try:
        return load_from_environment()
    except UnknownSettingError as error:
        for line in str(error).split("; "):
            print(line, file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    except ValidationError as error:
        for problem in error.errors(include_input=False, include_url=False):
            where = "__".join(str(part).upper() for part in problem["loc"])
            print(f"invalid setting TWINFLAG_{where}: {problem['msg']}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def cmd_run(_args: argparse.Namespace) -> int:
    settings = load_settings()
    logs.configure(settings.log_level, settings.log_format)
    stop = stop_on_signals()
    encoder, threshold = load_model(settings)
    decision = decision_of(settings, encoder)
    if settings.model.threshold is not None:
        threshold = settings.model.threshold
    return run_worker(
        settings, encoder, threshold, stop, readiness=Readiness(model_loaded=True), decision=decision
    )


def cmd_scan(args: argparse.Namespace) -> int:
    from worker.index.edge import EdgeIndex
    from worker.service.scan import scan

    settings = load_settings()
    logs.configure(settings.log_level, settings.log_format)
    if args.read_only and args.index is None:
        raise FatalError("scan --read-only checks against an index: give it --index")
    if not args.input.is_file():  # checked before the model loads (seconds) and the output is created
        raise FatalError(f"scan: no input file at {args.input}")
    encoder, threshold = load_model(settings, args.model)
    decision = decision_of(settings, encoder, args.threshold)
    threshold = args.threshold if args.threshold is not None else threshold
    with ExitStack() as stack:
        path = (
            args.index if args.index is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        )
        index = EdgeIndex(path)
        stack.callback(index.close)
        summary = scan(
            args.input,
            args.output,
            encoder,
            index,
            threshold,
            batch_size=args.batch_size,
            top_k=settings.top_k,
            max_message_bytes=settings.max_message_bytes,
            progress=not args.quiet,
            decision=decision,
            read_only=args.read_only,
        )
    point = decision.policy.point("default")
    print(json.dumps({"threshold": point, **asdict(summary)}))
    return EXIT_OK


def cmd_index(args: argparse.Namespace) -> int:
    from worker.service.load import load_corpus

    settings = load_settings()
    logs.configure(settings.log_level, settings.log_format)
    encoder, _ = load_model(settings, args.model)
    with ExitStack() as stack:
        index = build_index(settings.index, stack)
        summary = load_corpus(
            args.input,
            encoder,
            index,
            batch_size=args.batch_size,
            max_message_bytes=settings.max_message_bytes,
            progress=not args.quiet,
        )
    print(
        json.dumps(
            {
                "lines": summary.lines,
                "loaded": summary.loaded,
                "skipped": summary.skipped,
                "errors": len(summary.errors),
            }
        )
    )
    for line, reason in summary.errors[:20]:
        print(f"line {line}: {reason}", file=sys.stderr)
    return EXIT_OK


def cmd_settings(args: argparse.Namespace) -> int:
    if args.markdown:
        sys.stdout.write(settings_markdown())
    else:
        print(load_settings().model_dump_json(indent=2))  # secrets print as '**********'
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    """The HTTP API (``worker.service.http``) over the index, through the stream's batch step."""
    from worker.service.direct import open_direct
    from worker.service.http import serve

    settings = load_settings()
    logs.configure(settings.log_level, settings.log_format)
    if not settings.http.keys:
        raise FatalError('TWINFLAG_HTTP__KEYS is empty: give each tenant a key ({"tenant": "key"})')
    stop_on_signals()  # uvicorn stops on SIGTERM/SIGINT, then hands the signal back to this flag: exit 0
    with ExitStack() as stack:
        direct = open_direct(
            args.model if args.model is not None else settings.model.path,
            args.index,
            settings,
            stack,
            args.threshold,
        )
        serve(direct, settings.http)
    return EXIT_OK


def cmd_verdicts(args: argparse.Namespace) -> int:
    """The verdicts kept beside the index, texts read back from the documents topic (``service.pairs``)."""
    from worker.kafka.config import consumer_options
    from worker.kafka.verdicts import read_positions
    from worker.service.feedback import review_file
    from worker.service.pairs import with_texts

    settings = load_settings()
    logs.configure(settings.log_level, settings.log_format)
    index = settings.index if args.index is None else settings.index.model_copy(update={"path": args.index})
    store = review_file(settings, index)
    if store is None or not store.path.exists():
        where = "TWINFLAG_FEEDBACK__STORE" if store is None else str(store.path)
        raise FatalError(f"no verdicts kept at {where}: the worker keeps them once it reads a verdicts topic")
    kafka = settings.kafka
    options = consumer_options(kafka, settings.max_message_bytes, settings.backoff_max_s)
    reviewed = list({item.verdict.key: item for item in store.read()}.values())  # the last per pair
    rows, why = with_texts(reviewed, lambda positions: read_positions(options, kafka.input_topic, positions))
    with args.out.open("w", encoding="utf-8") as out:
        out.writelines(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)
    print(f"{len(rows)} verdicts → {args.out}", file=sys.stderr)
    for reason, count in why.most_common():
        print(f"  {count:6d} texts {reason}", file=sys.stderr)
    return EXIT_OK
