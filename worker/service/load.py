"""Bulk-load a precomputed corpus (known spam, existing posts) into the index: batched and resumable.

Lines use the document format of the stream. Each document gets the order key ``(0, line)``, earlier
than any stream document, so everything loaded can be matched by what arrives later. Resumable: before
embedding a batch, the documents already stored under the same (tenant, id) with the same text hash are
skipped, and the index is flushed after every batch, so a load killed half-way resumes where it stopped
(re-running a finished load embeds nothing). The same id on two lines: the later line wins; if the two
lines fall in different batches, a re-run embeds both again (the end state is still the later line).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from worker.core.logs import get_logger
from worker.core.messages import DEFAULT_MAX_ID_CHARS, DeadLetterReason, Deletion, Document
from worker.core.normalize import text_hash
from worker.core.parse import parse_record
from worker.core.ports import Encoder, IndexPoint, VectorIndex
from worker.core.records import Record
from worker.service.scan import jsonl_records, progress_bar

CORPUS_PARTITION = 0
log = get_logger("load")


@dataclass(slots=True)
class LoadSummary:
    lines: int = 0
    loaded: int = 0  # embedded and upserted
    skipped: int = 0  # already in the index with the same text (a resumed or repeated load)
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line, reason), bad lines not loaded


def load_corpus(
    input_path: Path,
    encoder: Encoder,
    index: VectorIndex,
    batch_size: int = 256,
    *,
    max_message_bytes: int = 1_000_000,
    max_id_chars: int = DEFAULT_MAX_ID_CHARS,
    progress: bool = True,
) -> LoadSummary:
    """Embed and upsert every valid line of ``input_path``; bad lines are reported, not loaded.

    The caller owns (and closes) ``index``.
    """
    index.ensure(encoder.dim, encoder.version)
    summary = LoadSummary()
    with progress_bar(input_path, "index", enabled=progress) as bar:
        for records, consumed in jsonl_records(input_path, CORPUS_PARTITION, batch_size):
            summary.lines += len(records)
            latest: dict[tuple[str, str], tuple[Record, Document, str]] = {}
            for record in records:
                item = parse_record(record, max_message_bytes, max_id_chars)
                if isinstance(item, DeadLetterReason):
                    summary.errors.append((record.offset, str(item)))
                elif isinstance(item, Deletion):
                    summary.errors.append((record.offset, "unexpected_deletion: a corpus holds documents"))
                else:
                    latest[(item.tenant, item.id)] = (record, item, text_hash(item.normalized_text))
            _load_batch(list(latest.values()), encoder, index, summary)
            index.maintain()
            index.flush()
            bar.update(consumed)
    log.info(
        "load_done",
        input=input_path.name,
        lines=summary.lines,
        loaded=summary.loaded,
        skipped=summary.skipped,
        errors=len(summary.errors),
    )
    return summary


def _load_batch(
    docs: list[tuple[Record, Document, str]], encoder: Encoder, index: VectorIndex, summary: LoadSummary
) -> None:
    stored = index.fetch([(doc.tenant, doc.id) for _, doc, _ in docs]) if docs else {}
    todo = []
    for record, doc, digest in docs:
        present = stored.get((doc.tenant, doc.id))
        if present is not None and present.text_hash == digest:
            summary.skipped += 1
        else:
            todo.append((record, doc, digest))
    if not todo:
        return
    vectors = np.asarray(encoder.embed([doc.text for _, doc, _ in todo]), dtype=np.float32)
    if vectors.shape != (len(todo), encoder.dim):
        raise ValueError(f"encoder returned {vectors.shape}, expected {(len(todo), encoder.dim)}")
    index.upsert(
        [
            IndexPoint(
                doc_id=doc.id,
                tenant=doc.tenant,
                vector=vector,
                text_hash=digest,
                order=(0, record.offset),
                model=encoder.version,
                created_at=None if doc.created_at is None else doc.created_at.isoformat(),
            )
            for (record, doc, digest), vector in zip(todo, vectors, strict=True)
        ]
    )
    summary.loaded += len(todo)
