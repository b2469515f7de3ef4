"""The batch step over a JSONL file: one-off deduplication of a dump, and evaluation.

Each line is a record in arrival order: topic = the file's name, offset = the line number (from 1),
timestamp 0. Scans use partition 1, not 0, so their order keys ``(0, 1 << 40 | line)`` come after every
bulk-loaded corpus document ``(0, line)`` and before every stream document: ``scan --index`` over a
loaded corpus matches against all of it. Output: one JSON line per input line, in input order —
``{"line", "id", "duplicate_of", "score", "flagged", "matches", "stage"}`` for a document (``score`` is
the best earlier match's, flagged or not; with ``probability``, ``decided_by`` and ``verifier_score``
when there are any), ``{"line", "error"}`` for a bad line, ``{"line", "deleted"}``
for a deletion.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from worker.core.logs import get_logger
from worker.core.outcome import DeadLettered, Decided, RecordOutcome
from worker.core.policy import DecisionPlan
from worker.core.ports import Encoder, VectorIndex
from worker.core.records import MAX_TIMESTAMP_MS, Record
from worker.core.step import StepConfig, run_batch

SCAN_PARTITION = 1
log = get_logger("scan")


@dataclass(slots=True)
class ScanSummary:
    lines: int = 0
    documents: int = 0
    flagged: int = 0
    errors: int = 0
    deletions: int = 0


def jsonl_records(
    path: Path, partition: int, batch_size: int, timestamp_ms: int = 0
) -> Iterator[tuple[list[Record], int]]:
    """Lines of a JSONL file as records, ``batch_size`` at a time, with the bytes each batch consumed."""
    batch: list[Record] = []
    consumed = 0
    with path.open("rb") as source:
        for line_no, raw in enumerate(source, start=1):
            consumed += len(raw)
            value = raw.rstrip(b"\r\n")
            batch.append(Record(path.name, partition, line_no, timestamp_ms, key=None, value=value))
            if len(batch) >= batch_size:
                yield batch, consumed
                batch, consumed = [], 0
    if batch:
        yield batch, consumed


def progress_bar(path: Path, desc: str, *, enabled: bool) -> tqdm[None]:
    """Progress in bytes of the input file, to stderr (stdout may carry data); off when stderr is not a
    terminal, so it does not interleave with JSON logs."""
    return tqdm(
        total=path.stat().st_size,
        unit="B",
        unit_scale=True,
        desc=desc,
        file=sys.stderr,
        disable=None if enabled else True,  # None: a bar only on a terminal, never between JSON log lines
    )


def scan(
    input_path: Path,
    output_path: Path,
    encoder: Encoder,
    index: VectorIndex,
    threshold: float,
    batch_size: int = 256,
    top_k: int = 5,
    *,
    max_message_bytes: int = 1_000_000,
    progress: bool = True,
    decision: DecisionPlan | None = None,
    read_only: bool = False,
) -> ScanSummary:
    """Decide every line of ``input_path`` against earlier lines (and the index); write ``output_path``.

    The documents are upserted into ``index`` like the stream's; the caller owns (and closes) it. With
    ``read_only`` (``scan --read-only``) each line is checked against the whole index alone (the largest
    timestamp: stream and API documents included), as the HTTP API's check does
    (``StepConfig.read_only``): nothing is written, deletions included.
    """
    index.ensure(encoder.dim, encoder.version)
    config = StepConfig(
        threshold=threshold,
        model_version=encoder.version,
        top_k=top_k,
        max_message_bytes=max_message_bytes,
        policy=None if decision is None else decision.policy,
        keep_text=0 if decision is None else decision.keep_text,
        read_only=read_only,
    )
    verifier = None if decision is None else decision.verifier
    summary = ScanSummary()
    with (
        output_path.open("w", encoding="utf-8") as sink,
        progress_bar(input_path, "scan", enabled=progress) as bar,
    ):
        stamp = MAX_TIMESTAMP_MS if read_only else 0  # a check sees every stored document
        for records, consumed in jsonl_records(input_path, SCAN_PARTITION, batch_size, stamp):
            result = run_batch(records, encoder, index, config, verifier)
            if not read_only:
                index.maintain()
            by_line = {o.record.offset: o for o in result.outcomes}
            for record in records:
                sink.write(_line(record.offset, by_line[record.offset]) + "\n")
            summary.lines += len(records)
            summary.documents += result.documents
            summary.flagged += result.flags
            summary.errors += result.dead_letters
            summary.deletions += result.deletions
            bar.update(consumed)
    if not read_only:
        index.flush()
    log.info("scan_done", input=input_path.name, **asdict(summary))
    return summary


def _line(line: int, outcome: RecordOutcome) -> str:
    out: dict[str, object]
    if isinstance(outcome, Decided):
        decision = outcome.decision
        out = {
            "line": line,
            "id": decision.id,
            "duplicate_of": decision.duplicate_of,
            "score": decision.score,
            "flagged": decision.flagged,
            "matches": [m.model_dump() for m in decision.matches],
            "stage": decision.stage,
            **{
                key: value
                for key, value in (
                    ("probability", decision.probability),
                    ("decided_by", decision.decided_by),
                    ("verifier_score", decision.verifier_score),
                )
                if value is not None
            },
        }
    elif isinstance(outcome, DeadLettered):
        out = {"line": line, "error": outcome.letter.reason}
    else:
        out = {"line": line, "deleted": True}
    return json.dumps(out, ensure_ascii=False, separators=(",", ":"))
