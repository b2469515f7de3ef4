"""The batch step: records → decisions, flags, dead letters, index updates. Pure over protocols.

CONTRACT (owned by the core helper; the types and the signature of ``run_batch`` are fixed).
It never imports kafka, qdrant_client or torch. Order inside: parse/validate → normalise + hash →
deletions → exact fast path → reuse stored vectors on replay / embed the rest → in-batch matches in
arrival order → one batched index search → decide → upsert → publish (send). The caller then flushes
the publisher, flushes the index, and commits.

Semantics worth knowing (the visibility rule itself is in ``worker/decide.py``):

- Records are processed in order-key order ``(timestamp_ms, partition << 40 | offset)``, whatever order
  the poll returned them in; outputs are sent in that order too.
- Deletions act on the whole batch: the index deletion runs first, and a document of the same batch that
  arrived before the deletion is neither a candidate for anyone nor upserted. A document with that id
  arriving *after* the deletion is a new post and is kept.
- The same id twice in one batch with different texts: each gets its own decision, the later one (by
  order key) wins in the index, and neither matches the other (same id).
- Exact fast path: the earliest visible document (index or batch) with the same tenant and text hash is
  the match, at score 1.0, with no embedding and no search. The document is still upserted, with the
  matched document's vector (the texts normalise to the same string), so it stays searchable.
- Replays: a document already stored under its (tenant, id) with the same text hash reuses its stored
  vector and republishes its stored first decision (matches, scores, stage), which is written with the
  point before anything is sent. So a replayed flag is byte-identical to its first copy whatever the
  new batch boundaries, and even when records of other partitions read since would now match better.
  Index neighbours are rescored in float64 from their stored vectors, so scores do not depend on which
  side of a batch boundary a match sat. ``stage`` ("batch" or "index") does depend on the boundaries.
  Across partitions, what a document can see depends on the source handing records out in order-key
  order (``KafkaSource`` merges its partitions by timestamp; README, "Reruns agree").
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from worker.core.decide import (
    Candidate,
    Stage,
    Verdict,
    batch_candidates,
    clamp_score,
    cosine,
    decide,
    exact_in_batch,
    similarities,
    visibility,
)
from worker.core.decide import top_k as merge_top_k
from worker.core.messages import (
    DeadLetter,
    DeadLetterReason,
    Decision,
    Deletion,
    Document,
    DuplicateFlag,
    Match,
    Source,
    b64,
    canonical_json,
    dumps,
    parse_record,
    timestamp_iso,
)
from worker.core.normalize import text_hash
from worker.index.search import HashQuery, IndexPoint, Neighbour, OrderKey, Query, StoredVector, VectorIndex
from worker.kafka.publish import FlagPublisher
from worker.model.encode import Encoder


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed record, transport-neutral (Kafka or a line of a JSONL file)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class StepConfig:
    threshold: float
    model_version: str
    flags_topic: str = "duplicate-flags"
    dlq_topic: str = "documents.dlq"
    decisions_topic: str | None = None  # every decision, flagged or not; off by default
    top_k: int = 5
    max_message_bytes: int = 1_000_000
    max_id_chars: int = 256


@dataclass(slots=True)
class BatchResult:
    records: int = 0
    documents: int = 0
    flags: int = 0
    dead_letters: int = 0
    deletions: int = 0
    exact: int = 0
    reused_vectors: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    decisions: list[dict[str, object]] = field(default_factory=list)  # one per valid document, in order


MAX_TIMESTAMP_MS = 2**53 - 1  # the index compares order keys through f64 (worker/search.py)
TIE_MARGIN = 2
"""The index is asked for ``TIE_MARGIN * top_k`` neighbours, ranked here and cut to ``top_k``: equal
scores (copies of one text share a vector) are then ranked by order key and id, not by whichever copies
the index's own cut happened to keep, unless more than that many tie at the cut."""


def order_key(record: Record) -> OrderKey:
    """What "earlier" means: record timestamp, then partition and offset (DEVELOPERS.md).

    Timestamps outside ``[0, 2**53)`` (Kafka's -1 for "none", garbage) are clamped into it: such a
    record still gets a decision instead of stopping the worker on the index's range check.
    """
    timestamp = min(max(record.timestamp_ms, 0), MAX_TIMESTAMP_MS)
    return (timestamp, record.partition << 40 | record.offset)


@dataclass(slots=True)
class _Doc:
    """A valid document on its way through the step."""

    record: Record
    document: Document
    order: OrderKey
    text_hash: str
    deleted: bool = False  # a later deletion in this batch removes it
    exact: Candidate | None = None
    exact_in_batch: int | None = None  # position of the in-batch document it exactly repeats
    vector: np.ndarray | None = None
    first: Verdict | None = None  # its first decision, stored with its point (a replay)

    @property
    def key(self) -> tuple[str, str]:
        return (self.document.tenant, self.document.id)


@dataclass(frozen=True, slots=True)
class _Parsed:
    record: Record
    order: OrderKey
    item: Document | Deletion | DeadLetterReason


def run_batch(
    records: Sequence[Record],
    encoder: Encoder,
    index: VectorIndex,
    publisher: FlagPublisher,
    config: StepConfig,
) -> BatchResult:
    """Decide every record of one poll; send flags, decisions and dead letters; upsert the documents.

    Per-record problems become dead letters; exceptions from the encoder, the index or the publisher
    propagate (process-level: the caller must not commit).
    """
    result = BatchResult(records=len(records))
    timer = _Timer(result.timings_ms)
    with timer("parse"):
        parsed = _parse(records, config)
        docs = [
            _Doc(p.record, p.item, p.order, text_hash(p.item.normalized_text))
            for p in parsed
            if isinstance(p.item, Document)
        ]
        deletions = [(p.order, p.item) for p in parsed if isinstance(p.item, Deletion)]
        _mark_deleted(docs, deletions)
        result.documents, result.deletions = len(docs), len(deletions)
        result.dead_letters = sum(isinstance(p.item, DeadLetterReason) for p in parsed)
    with timer("delete"):
        _delete(index, [deletion for _, deletion in deletions])
    with timer("exact"):
        visible = visibility(
            [d.order for d in docs],
            [d.document.tenant for d in docs],
            [d.document.id for d in docs],
            [d.deleted for d in docs],
        )
        first_version = _first_versions(docs)
        _exact(docs, visible, index, first_version)
        result.exact = sum(d.exact is not None for d in docs)
    with timer("embed"):
        result.reused_vectors = _vectors(docs, encoder, index)
    with timer("search"):
        ranked = _candidates(docs, visible, index, first_version, config.top_k)
    with timer("decide"):
        verdicts = [decide(candidates, config.threshold) for candidates in ranked]
        verdicts = [doc.first or verdict for doc, verdict in zip(docs, verdicts, strict=True)]
        result.flags = sum(v.flagged for v in verdicts)
    with timer("upsert"):  # before any send: no flag leaves before its decision is stored
        points = _points(docs, verdicts, config.model_version)
        if points:
            index.upsert(points)
    with timer("publish"):
        result.decisions = _publish(parsed, docs, verdicts, publisher, config)
    return result


def encode_verdict(verdict: Verdict) -> str:
    """A decision as stored with the document's point (compact JSON, candidates in rank order)."""
    rows = [[c.doc_id, c.score, c.order[0], c.order[1], c.stage] for c in verdict.matches]
    return json.dumps({"flagged": verdict.flagged, "matches": rows}, separators=(",", ":"))


def decode_verdict(text: str | None) -> Verdict | None:
    """The stored decision, or None when absent or unreadable (the document is then decided afresh)."""
    if text is None:
        return None
    try:
        data = json.loads(text)
        matches = [
            Candidate(str(i), float(s), (int(ts), int(pos)), _STAGES[st])
            for i, s, ts, pos, st in data["matches"]
        ]
        return Verdict(matches, bool(data["flagged"]))
    except (ValueError, KeyError, TypeError):
        return None


_STAGES: dict[str, Stage] = {"exact": "exact", "batch": "batch", "index": "index"}


class _Timer:
    """Adds each stage's wall time, in milliseconds, to ``BatchResult.timings_ms``."""

    def __init__(self, into: dict[str, float]) -> None:
        self._into = into

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._into[stage] = round((time.perf_counter() - start) * 1000.0, 3)


def _parse(records: Sequence[Record], config: StepConfig) -> list[_Parsed]:
    """Parse every record; sort by order key (poll order across partitions is arbitrary)."""
    positions = sorted(range(len(records)), key=lambda i: (order_key(records[i]), i))
    return [
        _Parsed(
            records[i],
            order_key(records[i]),
            parse_record(records[i], config.max_message_bytes, config.max_id_chars),
        )
        for i in positions
    ]


def _mark_deleted(docs: list[_Doc], deletions: list[tuple[OrderKey, Deletion]]) -> None:
    """A deletion removes every earlier document of the batch with its id (in its tenant, or in all)."""
    by_id: dict[str, list[tuple[OrderKey, str | None]]] = {}
    for order, deletion in deletions:
        by_id.setdefault(deletion.id, []).append((order, deletion.tenant))
    for doc in docs:
        doc.deleted = any(
            order > doc.order and tenant in (None, doc.document.tenant)
            for order, tenant in by_id.get(doc.document.id, ())
        )


def _delete(index: VectorIndex, deletions: list[Deletion]) -> None:
    """One index call per tenant (tombstones: tenant None, every tenant), ids in arrival order."""
    by_tenant: dict[str | None, list[str]] = {}
    for deletion in deletions:
        ids = by_tenant.setdefault(deletion.tenant, [])
        if deletion.id not in ids:
            ids.append(deletion.id)
    for tenant in sorted(by_tenant, key=lambda t: (t is not None, t or "")):
        index.delete(tenant, by_tenant[tenant])


def _first_versions(docs: list[_Doc]) -> dict[tuple[str, str], OrderKey]:
    """Order key of each (tenant, id)'s first version in the batch.

    An index point with that key is stale for every document after that order key: the batch's own
    version supersedes it (and after a batch boundary the index would hold only that one).
    """
    first: dict[tuple[str, str], OrderKey] = {}
    for doc in docs:
        first.setdefault(doc.key, doc.order)
    return first


def _invisible(neighbour: Neighbour, doc: _Doc, first_version: dict[tuple[str, str], OrderKey]) -> bool:
    """Neighbours the document must not match: itself, later posts (the index should not return
    those; checked again because the guarantee matters), and stale versions of ids in the batch."""
    if neighbour.doc_id == doc.document.id or neighbour.order >= doc.order:
        return True
    batch_order = first_version.get((doc.document.tenant, neighbour.doc_id))
    return batch_order is not None and batch_order < doc.order


def _exact(
    docs: list[_Doc], visible: np.ndarray, index: VectorIndex, first_version: dict[tuple[str, str], OrderKey]
) -> None:
    """Exact fast path: the earliest visible document with the same text hash, from the index or the batch."""
    if not docs:
        return
    hits = index.find_hashes(
        [HashQuery(d.document.tenant, d.text_hash, before=d.order, doc_id=d.document.id) for d in docs]
    )
    in_batch = exact_in_batch(
        visible, [d.text_hash for d in docs], [d.order for d in docs], [d.document.id for d in docs]
    )
    for doc, hit, position in zip(docs, hits, in_batch, strict=True):
        options: list[tuple[OrderKey, str, int | None]] = []
        if hit is not None and not _invisible(hit, doc, first_version):
            options.append((hit.order, hit.doc_id, None))
        if position is not None:
            options.append((docs[position].order, docs[position].document.id, position))
        if options:
            order, doc_id, doc.exact_in_batch = min(options, key=lambda o: (o[0], o[1]))
            doc.exact = Candidate(doc_id, 1.0, order, "exact")


def _vectors(docs: list[_Doc], encoder: Encoder, index: VectorIndex) -> int:
    """Give every document a vector: stored (replay), the exact match's, or one ``embed`` call.

    Returns how many stored vectors were reused.
    """
    wanted = {d.key for d in docs}
    wanted |= {(d.document.tenant, d.exact.doc_id) for d in docs if d.exact and d.exact_in_batch is None}
    stored = index.fetch(sorted(wanted)) if wanted else {}
    reused = 0
    to_embed: list[_Doc] = []
    for doc in docs:
        own = stored.get(doc.key)
        match = stored.get((doc.document.tenant, doc.exact.doc_id)) if doc.exact else None
        if own is not None and own.text_hash == doc.text_hash:
            doc.vector, doc.first = own.vector, decode_verdict(own.decision)
            reused += 1
        elif doc.exact is not None and doc.exact_in_batch is None and match is not None:
            doc.vector = match.vector
        elif doc.exact_in_batch is None:
            to_embed.append(doc)
    if to_embed:
        vectors = np.asarray(encoder.embed([d.document.text for d in to_embed]), dtype=np.float32)
        if vectors.shape != (len(to_embed), encoder.dim):
            raise ValueError(f"encoder returned {vectors.shape}, expected {(len(to_embed), encoder.dim)}")
        for doc, vector in zip(to_embed, vectors, strict=True):
            doc.vector = vector
    for doc in docs:  # in order: an in-batch exact match is earlier, so it already has its vector
        if doc.vector is None and doc.exact_in_batch is not None:
            doc.vector = docs[doc.exact_in_batch].vector
    return reused


def _candidates(
    docs: list[_Doc],
    visible: np.ndarray,
    index: VectorIndex,
    first_version: dict[tuple[str, str], OrderKey],
    k: int,
) -> list[list[Candidate]]:
    """Per document, its ranked top-k: the exact match alone, or batch + index neighbours merged."""
    if not docs:
        return []
    matrix = np.stack([_vector(d) for d in docs])
    sims = similarities(matrix)
    searched = [i for i, d in enumerate(docs) if d.exact is None]
    found = _index_candidates([docs[i] for i in searched], index, first_version, k)
    from_index = dict(zip(searched, found, strict=True))
    in_batch = batch_candidates(sims, visible, [d.order for d in docs], [d.document.id for d in docs], k)
    return [
        [doc.exact]
        if doc.exact is not None
        else merge_top_k(in_batch[i] + from_index[i], k)  # batch wins an id
        for i, doc in enumerate(docs)
    ]


def _index_candidates(
    docs: list[_Doc], index: VectorIndex, first_version: dict[tuple[str, str], OrderKey], k: int
) -> list[list[Candidate]]:
    """One batched search, then each neighbour rescored from its stored vector (see ``decide``)."""
    if not docs or k <= 0:
        return [[] for _ in docs]
    queries = [Query(_vector(d), d.document.tenant, before=d.order, doc_id=d.document.id) for d in docs]
    results = index.search(queries, k * TIE_MARGIN)
    kept = [
        [n for n in neighbours if not _invisible(n, doc, first_version)]
        for doc, neighbours in zip(docs, results, strict=True)
    ]
    keys = sorted({(doc.document.tenant, n.doc_id) for doc, ns in zip(docs, kept, strict=True) for n in ns})
    stored: dict[tuple[str, str], StoredVector] = index.fetch(keys) if keys else {}
    found: list[list[Candidate]] = []
    for doc, neighbours in zip(docs, kept, strict=True):
        candidates = []
        for n in neighbours:
            vector = stored.get((doc.document.tenant, n.doc_id))
            score = n.score if vector is None else cosine(_vector(doc), vector.vector)
            candidates.append(Candidate(n.doc_id, clamp_score(score), n.order, "index"))
        found.append(candidates)
    return found


def _vector(doc: _Doc) -> np.ndarray:
    if doc.vector is None:  # _vectors gives every document one; this is a bug, not bad input
        raise AssertionError(f"document at {doc.order} has no vector")
    return doc.vector


def _publish(
    parsed: list[_Parsed],
    docs: list[_Doc],
    verdicts: list[Verdict],
    publisher: FlagPublisher,
    config: StepConfig,
) -> list[dict[str, object]]:
    """Send flags, decisions and dead letters in order-key order; return the decisions as dicts."""
    decided = iter(zip(docs, verdicts, strict=True))  # docs were built from `parsed`, in its order
    decisions: list[dict[str, object]] = []
    for p in parsed:
        source = Source(topic=p.record.topic, partition=p.record.partition, offset=p.record.offset)
        if isinstance(p.item, DeadLetterReason):
            letter = _dead_letter(p.record, p.item, source, config.model_version, config.max_message_bytes)
            publisher.send(config.dlq_topic, _clip(p.record.key, MAX_KEY_BYTES), dumps(letter))
            continue
        if isinstance(p.item, Deletion):
            continue
        doc, verdict = next(decided)
        key = doc.document.id.encode("utf-8")
        matches = [Match(id=c.doc_id, score=c.score) for c in verdict.matches]
        match, best = verdict.duplicate_of, verdict.best
        if match is not None:
            flag = DuplicateFlag(
                id=doc.document.id,
                duplicate_of=match.doc_id,
                score=match.score,
                threshold=config.threshold,
                matches=matches,
                tenant=doc.document.tenant,
                stage=match.stage,
                model=config.model_version,
                detected_at=timestamp_iso(p.record.timestamp_ms),
                source=source,
            )
            publisher.send(config.flags_topic, key, dumps(flag))
        decision = Decision(
            id=doc.document.id,
            tenant=doc.document.tenant,
            flagged=verdict.flagged,
            duplicate_of=None if match is None else match.doc_id,
            score=None if best is None else best.score,
            matches=matches,
            stage=None if match is None else match.stage,
            model=config.model_version,
            source=source,
        )
        as_json = decision.model_dump(mode="json")
        if config.decisions_topic is not None:
            publisher.send(config.decisions_topic, key, canonical_json(as_json))
        decisions.append(as_json)
    return decisions


MAX_KEY_BYTES = 16 * 1024  # a dead letter's key (and key_b64) keeps at most this much of the original


def _clip(data: bytes | None, limit: int) -> bytes | None:
    return data if data is None or len(data) <= limit else data[:limit]


def _dead_letter(
    record: Record, reason: DeadLetterReason, source: Source, model: str, max_bytes: int
) -> DeadLetter:
    """The dead letter of one record, small enough to publish whatever the record's size.

    The whole original would not fit under the producer's request limit when the record itself was
    over ``max_bytes`` (base64 adds a third); the dead letter then keeps the first ``max_bytes`` bytes
    and says so, and the record itself stays readable at its source position.
    """
    key, value = _clip(record.key, MAX_KEY_BYTES), _clip(record.value, max_bytes)
    return DeadLetter(
        code=reason.code,
        reason=str(reason),
        key_b64=b64(key),
        value_b64=b64(value),
        value_bytes=None if record.value is None else len(record.value),
        truncated=key != record.key or value != record.value,
        source=source,
        model=model,
        detected_at=timestamp_iso(record.timestamp_ms),
    )


def _points(docs: list[_Doc], verdicts: list[Verdict], model: str) -> list[IndexPoint]:
    """Every surviving document with its decision, one point per (tenant, id): the latest version by
    order key wins."""
    latest: dict[tuple[str, str], _Doc] = {}
    decided: dict[int, Verdict] = {id(doc): verdict for doc, verdict in zip(docs, verdicts, strict=True)}
    for doc in docs:
        if not doc.deleted:
            latest[doc.key] = doc
    return [
        IndexPoint(
            doc_id=doc.document.id,
            tenant=doc.document.tenant,
            vector=_vector(doc),
            text_hash=doc.text_hash,
            order=doc.order,
            model=model,
            created_at=None if doc.document.created_at is None else doc.document.created_at.isoformat(),
            decision=encode_verdict(decided[id(doc)]),
        )
        for doc in sorted(latest.values(), key=lambda d: d.order)
    ]
