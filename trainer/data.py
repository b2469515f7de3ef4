"""Pair files → pairs: the one reader of labelled pair files, for training, evaluation and scoring.

Files: TSV (``.tsv``), CSV (``.csv``) or JSON lines (``.jsonl``/``.json``) with ``text_a``, ``text_b`` and
``label`` (1 duplicate, 0 not). Other names are recognised (GLUE's ``sentence1``/``sentence2``, QQP's
``question1``/``question2``/``is_duplicate``, MRPC's ``#1 String``/``#2 String``/``Quality``), or named
with ``Columns`` (``--columns A,B[,LABEL]``). A file with no label column at all holds duplicates only
(said in the report); in a file with one, a row without a label is a bad row. One record per line: a
quoted field may not span lines (use JSONL for multi-line posts). Bad rows — empty text, a missing
column or label, a label that is not 0/1, broken quoting, invalid JSON — are counted by reason, with
their line numbers, and skipped, never fatal; a file without its two text columns is an error
(training on nothing is worse than stopping).
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


@dataclass(frozen=True)
class Columns:
    """Which columns (or JSON keys) hold the two texts and the label; ``label`` None: no label column."""

    text_a: str = "text_a"
    text_b: str = "text_b"
    label: str | None = "label"

    @classmethod
    def parse(cls, spec: str) -> Columns:
        """``A,B`` or ``A,B,LABEL`` (the ``--columns`` flag)."""
        names = [name.strip() for name in spec.split(",")]
        if len(names) not in (2, 3) or not all(names):
            raise DataError(f"--columns takes A,B or A,B,LABEL, not {spec!r}")
        return cls(names[0], names[1], names[2] if len(names) == 3 else None)


# Header spellings of the public pair sets, tried in order when no ``Columns`` are given.
KNOWN_COLUMNS = (
    Columns(),
    Columns("sentence1", "sentence2", "label"),  # GLUE (MRPC, STS, PAWS)
    Columns("question1", "question2", "is_duplicate"),  # QQP
    Columns("#1 String", "#2 String", "Quality"),  # MRPC as Microsoft ships it
)
MAX_LINES_KEPT = 10
"""Line numbers a report keeps per reason (the count is always complete)."""


@dataclass
class FileReport:
    """What reading one file found: kept rows, bad rows by reason and where the first ones are."""

    name: str
    sha256: str = ""
    rows: int = 0
    bad: Counter[str] = field(default_factory=Counter)
    used: int | None = None
    bad_lines: dict[str, list[int]] = field(default_factory=dict)
    columns: Columns | None = None
    line: int = 0

    @property
    def bad_rows(self) -> int:
        return sum(self.bad.values())

    def skip(self, reason: str) -> None:
        """Count the current line as bad for ``reason``."""
        self.bad[reason] += 1
        lines = self.bad_lines.setdefault(reason, [])
        if len(lines) < MAX_LINES_KEPT:
            lines.append(self.line)

    def summary(self) -> dict[str, object]:
        """What a log line says of the file: bad rows by reason and where, and a file without labels."""
        fields: dict[str, object] = {"file": self.name, "rows": self.rows}
        if self.bad_rows:
            fields |= {"bad_rows": self.bad_rows, "bad": dict(self.bad), "bad_lines": self.where()}
        if self.columns is not None and self.columns.label is None:
            fields["labels"] = "no label column: every pair is read as a duplicate"
        return fields

    def where(self) -> dict[str, str]:
        """Each reason's first line numbers, for a log line (``bad_label: 4, 17, 20 ...``)."""
        return {
            reason: ", ".join(map(str, lines)) + (" ..." if self.bad[reason] > len(lines) else "")
            for reason, lines in self.bad_lines.items()
        }

    def fingerprint(self) -> DataFingerprint:
        return DataFingerprint(
            name=self.name, sha256=self.sha256, rows=self.rows, bad_rows=self.bad_rows, used_rows=self.used
        )


_LABELS = {"1": 1, "0": 0, "1.0": 1, "0.0": 0, "true": 1, "false": 0}


def _label(raw: object) -> int | None:
    if isinstance(raw, bool):
        return int(raw)
    if isinstance(raw, int | float) and raw in (0, 1):
        return int(raw)
    return _LABELS.get(str(raw).strip().lower())


def _pair(
    record: dict[str, object], columns: Columns, report: FileReport, allow_empty: bool, need_label: bool
) -> Pair | None:
    a, b = record.get(columns.text_a), record.get(columns.text_b)
    if a is None or b is None:
        report.skip("missing_column")
        return None
    if not isinstance(a, str) or not isinstance(b, str):
        report.skip("not_text")
        return None
    if not allow_empty and (not a.strip() or not b.strip()):
        report.skip("empty_text")
        return None
    if columns.label is None:
        return Pair(a.strip(), b.strip(), 1)  # a duplicates-only file
    raw = record.get(columns.label)
    if raw is None or raw == "":
        if need_label:
            report.skip("missing_label")
            return None
        return Pair(a.strip(), b.strip(), 1)  # scoring: the label is not used
    label = _label(raw)
    if label is None:
        report.skip("bad_label")
        return None
    return Pair(a.strip(), b.strip(), label)


def _choose_columns(names: list[str], columns: Columns | None, report: FileReport) -> Columns:
    """The given columns, or the first known spelling the header has; the label only if present."""
    candidates = [columns] if columns is not None else list(KNOWN_COLUMNS)
    for candidate in candidates:
        if candidate.text_a in names and candidate.text_b in names:
            if candidate.label is not None and candidate.label not in names:
                if columns is not None:
                    raise DataError(f"{report.name}: no label column {candidate.label!r} (has {names})")
                candidate = Columns(candidate.text_a, candidate.text_b, None)
            return candidate
    wanted = (
        f"{columns.text_a} and {columns.text_b}" if columns else "text_a and text_b (or sentence1/sentence2,"
    )
    wanted += "" if columns else " question1/question2, #1 String/#2 String; or --columns A,B[,LABEL])"
    raise DataError(f"{report.name}: the header needs {wanted}; it has {names}")


def _delimited(
    lines: Iterator[str],
    delimiter: str,
    report: FileReport,
    allow_empty: bool,
    columns: Columns | None,
    need_label: bool,
) -> Iterator[Pair | None]:
    try:
        header = next(csv.reader([next(lines)], delimiter=delimiter, strict=True))
    except (StopIteration, csv.Error) as error:
        raise DataError(f"{report.name}: no readable header") from error
    names = [c.strip().lstrip("\ufeff") for c in header]
    report.columns = chosen = _choose_columns(names, columns, report)
    report.line = 1
    for line in lines:
        report.line += 1
        if not line.strip():
            continue
        report.rows += 1
        try:
            fields = next(csv.reader([line], delimiter=delimiter, strict=True))
        except csv.Error:
            report.skip("broken_quoting")
            yield None
            continue
        if len(fields) != len(names):
            report.skip("missing_column" if len(fields) < len(names) else "extra_column")
            yield None
            continue
        yield _pair(dict(zip(names, fields, strict=True)), chosen, report, allow_empty, need_label)


def _json_lines(
    lines: Iterator[str], report: FileReport, allow_empty: bool, columns: Columns | None, need_label: bool
) -> Iterator[Pair | None]:
    records: list[dict[str, object] | None] = []
    for line in lines:
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            record = {}  # marks the line bad below
        records.append(record if isinstance(record, dict) else ({} if line.strip() else None))
    keys = {key for record in records if record for key in record}
    report.columns = chosen = _choose_columns(sorted(keys), columns, report) if keys else Columns()
    for number, record in enumerate(records, start=1):
        report.line = number
        if record is None:
            continue
        report.rows += 1
        if not record:
            report.skip("invalid_json")
            yield None
            continue
        yield _pair(record, chosen, report, allow_empty, need_label)


def read_rows(
    path: Path, *, allow_empty: bool = False, columns: Columns | None = None, need_label: bool | None = None
) -> tuple[list[Pair | None], FileReport]:
    """Every data row of one file in order: a ``Pair``, or ``None`` where the row is bad.

    ``allow_empty`` keeps rows with an empty text (scoring answers every row; training skips them);
    ``need_label`` (default: unless ``allow_empty``) makes a row without a label bad, in a file that has
    a label column. ``FileReport.bad_lines`` says where the bad rows are.
    """
    need = not allow_empty if need_label is None else need_label
    path = Path(path)
    report = FileReport(name=str(path))
    if not path.is_file():
        raise DataError(f"no pair file at {path}")
    raw = path.read_bytes()
    report.sha256 = hashlib.sha256(raw).hexdigest()
    lines = iter(raw.decode("utf-8", errors="replace").splitlines())
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        rows = list(_delimited(lines, "\t", report, allow_empty, columns, need))
    elif suffix == ".csv":
        rows = list(_delimited(lines, ",", report, allow_empty, columns, need))
    elif suffix in (".jsonl", ".json"):
        rows = list(_json_lines(lines, report, allow_empty, columns, need))
    else:
        raise DataError(f"{path}: unknown pair format {suffix!r} (tsv, csv or jsonl)")
    return rows, report


def read_pairs(path: Path, columns: Columns | None = None) -> tuple[list[Pair], FileReport]:
    """All good pairs of one file, and the report of what was skipped."""
    rows, report = read_rows(path, columns=columns)
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
