"""Moderators' verdict files → labelled pairs: what ``trainer retrain`` learns from and is judged on.

A verdict file holds the ``verdicts`` topic's messages, one per line (``ModeratorVerdict``: is ``id`` a
duplicate of ``duplicate_of``?), checked by the worker's own ``parse_verdict``: a bad line is counted by
reason with its line number (``FileReport``), never dropped silently. Several files read as one
topic: the last verdict on a key (``tenant/id/duplicate_of``) wins, in file order, as compaction keeps it.

A verdict's texts are its own ``text`` and ``duplicate_text``, else the post's by (tenant, id) in
``--documents`` (a dump of the documents topic or a stream file; a later line wins, a deletion removes
the post). A verdict with neither is counted with the reason it cannot become a training pair.

A fixed fifth of the pairs, by a hash of the key, is held back to judge a retrained model
(``is_held_back``); the rest train. A rejected flag (``not_duplicate``) is the hardest negative there
is: each of its posts gets spam-edited copies as positives, so the other post is a labelled hard
negative of a cluster that trains (``training_pairs``); a confirmed pair trains as a positive, with
spam-edited copies of its later post. ``copies`` is how often each verdict is seen: oversampling.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trainer.augment import spam_edit
from trainer.data import DataError, FileReport, Pair
from worker.core.messages import DEFAULT_MAX_ID_CHARS, DeadLetterReason, Deletion, ModeratorVerdict
from worker.core.parse import parse_record, parse_verdict
from worker.core.records import Record

HELD_BACK = 0.2
"""Share of verdict pairs (by a hash of the key) never trained on: the gate of ``trainer retrain``."""
MAX_LINE_BYTES = 1_000_000  # the worker's ``max_message_bytes`` default
MAX_EXAMPLES_KEPT = 5  # keys a report keeps per reason it cannot train (the count is always complete)


@dataclass(frozen=True)
class VerdictPair:
    """One verdict with both texts: ``earlier`` is ``duplicate_of``'s, ``later`` is ``id``'s."""

    key: str
    earlier: str
    later: str
    label: int  # 1 duplicate, 0 not

    @property
    def pair(self) -> Pair:
        return Pair(self.earlier, self.later, self.label)


@dataclass
class VerdictReport:
    """What reading the verdicts found: each file's bad lines, the verdicts kept (the last per key), and
    those that cannot become a training pair, by reason, with a few of their keys."""

    files: list[FileReport] = field(default_factory=list)
    verdicts: int = 0
    replaced: int = 0
    untrainable: Counter[str] = field(default_factory=Counter)
    untrainable_keys: dict[str, list[str]] = field(default_factory=dict)
    documents: FileReport | None = None

    def cannot_train(self, verdict: ModeratorVerdict, why: str) -> None:
        self.untrainable[why] += 1
        keys = self.untrainable_keys.setdefault(why, [])
        if len(keys) < MAX_EXAMPLES_KEPT:
            keys.append(verdict.key)

    def summary(self) -> dict[str, object]:
        """What a log line says: per file the lines and bad lines (where), the verdicts kept, and the
        reasons verdicts cannot become training pairs."""
        fields: dict[str, object] = {
            "files": [f.summary() for f in self.files],
            "verdicts": self.verdicts,
            "replaced_by_a_later_verdict": self.replaced,
        }
        if self.untrainable:
            fields["cannot_become_a_training_pair"] = {
                why: f"{count} ({', '.join(self.untrainable_keys[why])}{' ...' if count > 5 else ''})"
                for why, count in self.untrainable.items()
            }
        if self.documents is not None and self.documents.bad_rows:
            fields["documents"] = self.documents.summary()
        return fields


def _lines(path: Path, report: FileReport) -> Iterator[Record]:
    """A JSONL file as the worker's records (blank lines skipped), with the report's line and digest."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    digest = hashlib.sha256()
    with path.open("rb") as source:
        for number, raw in enumerate(source, start=1):
            digest.update(raw)
            report.line = number
            value = raw.rstrip(b"\r\n")
            if value.strip():
                report.rows += 1
                yield Record(path.name, 0, number, 0, key=None, value=value)
    report.sha256 = digest.hexdigest()


def read_documents(path: Path) -> tuple[dict[tuple[str, str], str], FileReport]:
    """Posts by (tenant, id), parsed as the worker parses documents; a later line wins, a deletion
    removes the post (a deleted post is never trained on)."""
    report = FileReport(str(path))
    texts: dict[tuple[str, str], str] = {}
    for record in _lines(path, report):
        item = parse_record(record, MAX_LINE_BYTES, DEFAULT_MAX_ID_CHARS)
        if isinstance(item, DeadLetterReason):
            report.skip(item.code)
        elif isinstance(item, Deletion):
            if item.tenant is None:  # a deletion for every tenant
                texts = {k: v for k, v in texts.items() if k[1] != item.id}
            else:
                texts.pop((item.tenant, item.id), None)
        else:
            texts[(item.tenant, item.id)] = item.text
    return texts, report


def read_verdicts(
    paths: Sequence[Path], documents: Path | None = None
) -> tuple[list[ModeratorVerdict], list[VerdictPair], VerdictReport]:
    """Every verdict kept (the last per key, in file order), the pairs that have both texts, and the
    report. A file that cannot be opened is an error; a bad line is counted and located."""
    report = VerdictReport()
    latest: dict[str, ModeratorVerdict] = {}
    for path in paths:
        file_report = FileReport(str(path))
        for record in _lines(path, file_report):
            item = parse_verdict(record, MAX_LINE_BYTES, DEFAULT_MAX_ID_CHARS)
            if isinstance(item, DeadLetterReason):
                file_report.skip(item.code)
                continue
            report.replaced += item.key in latest
            latest.pop(item.key, None)  # the key moves to where its last verdict stands
            latest[item.key] = item
        report.files.append(file_report)
    texts: dict[tuple[str, str], str] = {}
    if documents is not None:
        texts, report.documents = read_documents(documents)
    report.verdicts = len(latest)
    pairs = []
    for verdict in latest.values():
        later = verdict.text or texts.get((verdict.tenant, verdict.id))
        earlier = verdict.duplicate_text or texts.get((verdict.tenant, verdict.duplicate_of))
        if later is None or earlier is None:
            report.cannot_train(verdict, _why(verdict, later is None, earlier is None, documents))
            continue
        pairs.append(VerdictPair(verdict.key, earlier, later, int(verdict.verdict == "duplicate")))
    return list(latest.values()), pairs, report


def _why(verdict: ModeratorVerdict, no_later: bool, no_earlier: bool, documents: Path | None) -> str:
    missing = " and ".join(name for name, gone in (("id", no_later), ("duplicate_of", no_earlier)) if gone)
    where = f"nor in {documents.name}" if documents is not None else "and no --documents given"
    return f"no text for {missing}: not in the verdict {where}"


def is_held_back(key: str, fraction: float = HELD_BACK) -> bool:
    """A fixed ``fraction`` of keys, by a hash of the key: the same verdicts on every run and machine."""
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:4], "big") % 10_000
    return bucket < fraction * 10_000


def split_held_back(pairs: Sequence[VerdictPair]) -> tuple[list[VerdictPair], list[VerdictPair]]:
    """(trained on, held back)."""
    held = [p for p in pairs if is_held_back(p.key)]
    return [p for p in pairs if not is_held_back(p.key)], held


def training_pairs(pairs: Sequence[VerdictPair], copies: int, seed: int) -> list[Pair]:
    """Labelled pairs that teach each verdict ``copies`` times (see the module docstring): a confirmed
    pair as itself and ``copies - 1`` spam-edited later posts; a rejected one as the labelled negative
    and ``copies`` spam-edited copies of each of its posts (their positives)."""
    out: list[Pair] = []
    for verdict in pairs:
        rng = random.Random(f"{seed}:{verdict.key}")  # noqa: S311 - augmentation, not secrets
        out.append(verdict.pair)
        if verdict.label == 1:
            out += [Pair(verdict.earlier, spam_edit(verdict.later, rng), 1) for _ in range(copies - 1)]
        else:
            for text in (verdict.earlier, verdict.later):
                out += [Pair(text, spam_edit(text, rng), 1) for _ in range(copies)]
    return out
