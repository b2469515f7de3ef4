"""Pair files → pairs: the one reader of labelled pair files, for training, evaluation and scoring.

Files: TSV (``.tsv``), CSV (``.csv``) or JSON lines (``.jsonl``/``.json``) with ``text_a``, ``text_b`` and
an optional ``label`` (1 duplicate, 0 not; absent means 1). One record per line: a quoted field may
not span lines (use JSONL for multi-line posts). Bad rows — empty text, a missing column, a label that
is not 0/1, broken quoting, invalid JSON — are counted by reason and skipped, never fatal; a file
whose header lacks ``text_a``/``text_b`` is an error (training on nothing is worse than stopping).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from worker.model.manifest import DataFingerprint


class DataError(ValueError):
    """A pair file that cannot be read at all (missing, wrong header, unknown format)."""


@dataclass(frozen=True)
class Pair:
    text_a: str
    text_b: str
    label: int  # 1 duplicate, 0 not


@dataclass
class FileReport:
    """What reading one file found: kept rows and bad rows by reason."""

    name: str
    sha256: str = ""
    rows: int = 0
    bad: Counter[str] = field(default_factory=Counter)
    used: int | None = None

    @property
    def bad_rows(self) -> int:
        return sum(self.bad.values())

    def fingerprint(self) -> DataFingerprint:
        return DataFingerprint(
            name=self.name, sha256=self.sha256, rows=self.rows, bad_rows=self.bad_rows, used_rows=self.used
        )


_LABELS = {"1": 1, "0": 0, "1.0": 1, "0.0": 0, "true": 1, "false": 0}


def _label(raw: object) -> int | None:
    if raw is None or raw == "":
        return 1
    if isinstance(raw, bool):
        return int(raw)
    if isinstance(raw, int | float) and raw in (0, 1):
        return int(raw)
    return _LABELS.get(str(raw).strip().lower())


def _pair(record: dict[str, object], report: FileReport, allow_empty: bool) -> Pair | None:
    a, b = record.get("text_a"), record.get("text_b")
    if a is None or b is None:
        report.bad["missing_column"] += 1
        return None
    if not isinstance(a, str) or not isinstance(b, str):
        report.bad["not_text"] += 1
        return None
    if not allow_empty and (not a.strip() or not b.strip()):
        report.bad["empty_text"] += 1
        return None
    label = _label(record.get("label"))
    if label is None:
        report.bad["bad_label"] += 1
        return None
    return Pair(a.strip(), b.strip(), label)


def _delimited(
    lines: Iterator[str], delimiter: str, report: FileReport, allow_empty: bool
) -> Iterator[Pair | None]:
    try:
        header = next(csv.reader([next(lines)], delimiter=delimiter, strict=True))
    except (StopIteration, csv.Error) as error:
        raise DataError(f"{report.name}: no readable header") from error
    columns = [c.strip().lstrip("\ufeff") for c in header]
    if "text_a" not in columns or "text_b" not in columns:
        raise DataError(f"{report.name}: header needs text_a and text_b, has {columns}")
    for line in lines:
        if not line.strip():
            continue
        report.rows += 1
        try:
            fields = next(csv.reader([line], delimiter=delimiter, strict=True))
        except csv.Error:
            report.bad["broken_quoting"] += 1
            yield None
            continue
        if len(fields) != len(columns):
            report.bad["missing_column" if len(fields) < len(columns) else "extra_column"] += 1
            yield None
            continue
        yield _pair(dict(zip(columns, fields, strict=True)), report, allow_empty)


def _json_lines(lines: Iterator[str], report: FileReport, allow_empty: bool) -> Iterator[Pair | None]:
    for line in lines:
        if not line.strip():
            continue
        report.rows += 1
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            report.bad["invalid_json"] += 1
            yield None
            continue
        if not isinstance(record, dict):
            report.bad["invalid_json"] += 1
            yield None
            continue
        yield _pair(record, report, allow_empty)


def read_rows(path: Path, *, allow_empty: bool = False) -> tuple[list[Pair | None], FileReport]:
    """Every data row of one file in order: a ``Pair``, or ``None`` where the row is bad.

    ``allow_empty`` keeps rows with an empty text (scoring answers every row; training skips them).
    """
    path = Path(path)
    report = FileReport(name=str(path))
    if not path.is_file():
        raise DataError(f"no pair file at {path}")
    raw = path.read_bytes()
    report.sha256 = hashlib.sha256(raw).hexdigest()
    lines = iter(raw.decode("utf-8", errors="replace").splitlines())
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        rows = list(_delimited(lines, "\t", report, allow_empty))
    elif suffix == ".csv":
        rows = list(_delimited(lines, ",", report, allow_empty))
    elif suffix in (".jsonl", ".json"):
        rows = list(_json_lines(lines, report, allow_empty))
    else:
        raise DataError(f"{path}: unknown pair format {suffix!r} (tsv, csv or jsonl)")
    return rows, report


def read_pairs(path: Path) -> tuple[list[Pair], FileReport]:
    """All good pairs of one file, and the report of what was skipped."""
    rows, report = read_rows(path)
    pairs = [row for row in rows if row is not None]
    report.used = len(pairs)
    return pairs, report


def load_pairs(paths: Iterable[Path]) -> tuple[list[Pair], list[FileReport]]:
    """Pairs of several files, concatenated in order, with one report per file."""
    pairs: list[Pair] = []
    reports: list[FileReport] = []
    for path in paths:
        more, report = read_pairs(path)
        pairs += more
        reports.append(report)
    return pairs, reports
