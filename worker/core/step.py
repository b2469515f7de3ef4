"""The batch step: records → a typed outcome (decisions, flags, dead letters) and index updates.

Pure over the protocols of ``worker.core.ports``: it never imports kafka, qdrant_client or torch.
Order inside: parse/validate → normalise + hash → deletions → exact fast path → reuse stored vectors
on replay / embed the rest → in-batch matches in arrival order → one batched index search → decide →
upsert → the outcome's messages. Nothing is sent here: the caller turns the outcome into topics and
bytes (``worker.core.emit``), sends them, flushes the publisher, flushes the index, and commits. The
upsert comes first, so no flag can leave before its decision is stored.

Semantics worth knowing (the visibility rule itself is in ``worker.core.decide``):

- Records are processed in order-key order ``(timestamp_ms, partition << 40 | offset)``, whatever order
  the poll returned them in; the outcome lists them in that order, and they are sent in it.
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
  order (``worker.kafka.source.KafkaSource`` merges its partitions by timestamp; README, "Reruns agree").
- Retention (``StepConfig.retention``, ``worker.core.retention``): a document matches only documents
  whose record time lies within its tenant's window before its own, in the index and in the batch. A
  replay still republishes its stored first decision while its point is kept.
- Read-only (``StepConfig.read_only``: ``scan --read-only``, the HTTP API's check,
  ``twinflag.Detector.check``): the same phases with no index write (no deletion, no upsert) and an
  all-false in-batch visibility, so each document is decided against the index alone, whatever else
  shares its batch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from worker.core.decide import (
    Verdict,
    decode_verdict,
    encode_verdict,
    visibility,
)
from worker.core.explain import explain_flags
from worker.core.feedback import Feedback, confirm, screen, with_learned_point
from worker.core.matching import (
    Doc,
    Fetched,
    candidates,
    exact_path,
    first_versions,
    lookup,
    text_hashes,
    vector_of,
    verify,
)
from worker.core.messages import (
    DEFAULT_DEAD_LETTER_BYTES,
    DEFAULT_MAX_ID_CHARS,
    DeadLetterReason,
    Deletion,
    Document,
    dead_letter_message,
    decision_message,
    flag_message,
    stored_meta,
)
from worker.core.normalize import text_hash
from worker.core.outcome import BatchOutcome, DeadLettered, Decided, Deleted, RecordOutcome
from worker.core.parse import TombstoneScope, parse_record
from worker.core.policy import Policy
from worker.core.ports import (
    Encoder,
    IndexPoint,
    VectorIndex,
    Verifier,
)
from worker.core.records import OrderKey, Record, order_key
from worker.core.retention import KEEP_ALL, Retention


@dataclass(frozen=True, slots=True)
class StepConfig:
    """What the step decides with: the threshold and model, how many matches a flag lists, input limits."""

    threshold: float
    model_version: str
    top_k: int = 5
    max_message_bytes: int = 1_000_000
    max_dead_letter_bytes: int = DEFAULT_DEAD_LETTER_BYTES  # the dead-letter topic's limit, with the key
    max_id_chars: int = DEFAULT_MAX_ID_CHARS
    tombstones: TombstoneScope = "all_tenants"  # what a tombstone deletes (worker.core.parse)
    policy: Policy | None = None  # how to decide; None: flag when the best cosine ≥ ``threshold``
    keep_text: int = 0  # characters of each post kept with its point, for a verifier to read later
    read_only: bool = False  # a check: no index writes, and each document judged against the index alone
    retention: Retention = KEEP_ALL  # how far back in record time a post may match (its window)

    @property
    def decision(self) -> Policy:
        return self.policy if self.policy is not None else Policy(self.threshold)


@dataclass(frozen=True, slots=True)
class _Parsed:
    record: Record
    order: OrderKey
    item: Document | Deletion | DeadLetterReason


def run_batch(
    records: Sequence[Record],
    encoder: Encoder,
    index: VectorIndex,
    config: StepConfig,
    verifier: Verifier | None = None,
    feedback: Feedback | None = None,
) -> BatchOutcome:
    """Decide every record of one poll and upsert the documents; return what to publish.

    Per-record problems become dead letters; exceptions from the encoder, the verifier or the index
    propagate (process-level: the caller must not commit). The three phases below, in a row; the loop
    runs ``embed_batch`` in a thread of its own, beside the previous batch's flush and commit.
    """
    prepared = prepare_batch(records, index, config)
    return finish_batch(prepared, embed_batch(prepared.texts, encoder), index, config, verifier, feedback)


@dataclass(slots=True)
class PreparedBatch:
    """A batch between its two index phases: parsed, its deletions applied, its exact matches and
    stored vectors found. ``texts`` are what is left to embed."""

    result: BatchOutcome
    parsed: list[_Parsed]
    docs: list[Doc]
    visible: np.ndarray
    first_version: dict[tuple[str, str], OrderKey]
    to_embed: list[Doc]
    fetched: Fetched  # the points read so far, for the stages after the search

    @property
    def texts(self) -> list[str]:
        return [d.document.text for d in self.to_embed]


@dataclass(frozen=True, slots=True)
class Embedded:
    """What the encoder said about a prepared batch's texts, and how long it took."""

    vectors: np.ndarray
    known: list[bool]
    ms: float


def prepare_batch(records: Sequence[Record], index: VectorIndex, config: StepConfig) -> PreparedBatch:
    """Parse, hash, delete, find exact matches and stored vectors: everything before the encoder.

    Reads the index as the batches before left it, so the previous batch must be upserted first."""
    result = BatchOutcome(records=len(records))
    timer = _Timer(result.timings_ms)
    with timer("parse"):
        parsed = _parse(records, config)
        docs = [
            Doc(
                p.record,
                p.item,
                p.order,
                text_hash(p.item.normalized_text),
                floor=config.retention.floor(p.item.tenant, p.order[0]),
            )
            for p in parsed
            if isinstance(p.item, Document)
        ]
        deletions = [(p.order, p.item) for p in parsed if isinstance(p.item, Deletion)]
        _mark_deleted(docs, deletions)
        result.documents, result.deletions = len(docs), len(deletions)
        result.dead_letters = sum(isinstance(p.item, DeadLetterReason) for p in parsed)
    with timer("delete"):
        if not config.read_only:
            _delete(index, [deletion for _, deletion in deletions])
    with timer("exact"):
        visible = visibility(
            [d.order for d in docs],
            [d.document.tenant for d in docs],
            [d.document.id for d in docs],
            [d.deleted for d in docs],
            [d.floor for d in docs],
        )
        if config.read_only:  # independent questions: a check never matches another check of its batch
            visible[:] = False
        first_version = first_versions(docs)
        exact_path(docs, visible, index, first_version)
        result.exact = sum(d.exact is not None for d in docs)
    with timer("fetch"):
        fetched: Fetched = {}
        result.reused_vectors, to_embed = _stored_vectors(docs, index, fetched)
    return PreparedBatch(result, parsed, docs, visible, first_version, to_embed, fetched)


def embed_batch(texts: Sequence[str], encoder: Encoder) -> Embedded:
    """The encoder's part alone: it touches nothing else, so it may run in another thread."""
    started = time.perf_counter()
    if not texts:
        return Embedded(np.zeros((0, encoder.dim), dtype=np.float32), [], 0.0)
    vectors = np.asarray(encoder.embed(texts), dtype=np.float32)
    if vectors.shape != (len(texts), encoder.dim):
        raise ValueError(f"encoder returned {vectors.shape}, expected {(len(texts), encoder.dim)}")
    known = list(encoder.known(texts))
    return Embedded(vectors, known, round((time.perf_counter() - started) * 1000.0, 3))


def finish_batch(
    prepared: PreparedBatch,
    embedded: Embedded,
    index: VectorIndex,
    config: StepConfig,
    verifier: Verifier | None = None,
    feedback: Feedback | None = None,
) -> BatchOutcome:
    """Search, verify, decide, upsert (before anything is sent) and build the outcome's messages.

    ``feedback``: moderators' verdicts (``worker.core.feedback``): rejected pairs are skipped, confirmed
    ones flagged, and the tenants' learned decision points used."""
    result, docs, visible, first_version = (
        prepared.result,
        prepared.docs,
        prepared.visible,
        prepared.first_version,
    )
    timer = _Timer(result.timings_ms)
    result.timings_ms["embed"] = embedded.ms
    _assign_vectors(docs, prepared.to_embed, embedded)
    with timer("search"):
        ranked, texts = candidates(docs, visible, index, first_version, config.top_k, prepared.fetched)
    base = config.decision  # built afresh on each access when the config holds no policy
    policy = base if feedback is None else feedback.policy(base)
    confirmed: list[int | None] = [None] * len(docs)
    if feedback is not None and len(feedback):
        with timer("screen"):
            posts = [(d.document.tenant, d.document.id, d.text_hash) for d in docs]
            ranked, confirmed, result.suppressed = screen(
                feedback, posts, ranked, text_hashes(docs, index, prepared.fetched)
            )
    with timer("verify"):
        verified = verify(docs, ranked, texts, policy, verifier)
        result.verified = sum(bool(scores) for scores in verified)
    with timer("decide"):
        verdicts = [
            policy.judge(doc.document.tenant, candidates, scores)
            for doc, candidates, scores in zip(docs, ranked, verified, strict=True)
        ]
        verdicts = [confirm(verdict, rank, policy) for verdict, rank in zip(verdicts, confirmed, strict=True)]
        if policy is not base:  # a learned point is stored with the decision, for replays
            verdicts = [
                with_learned_point(v, d.document.tenant, policy, base)
                for v, d in zip(verdicts, docs, strict=True)
            ]
        verdicts = explain_flags(docs, verdicts, index, prepared.fetched)
        verdicts = [doc.first or verdict for doc, verdict in zip(docs, verdicts, strict=True)]
        result.flags = sum(v.flagged for v in verdicts)
    with timer("upsert"):  # before any send: no flag leaves before its decision is stored
        points = [] if config.read_only else _points(docs, verdicts, config.model_version, config.keep_text)
        if points:
            index.upsert(points)
    with timer("messages"):
        result.outcomes = _outcomes(prepared.parsed, docs, verdicts, config)
    return result


class _Timer:
    """Adds each stage's wall time, in milliseconds, to ``BatchOutcome.timings_ms``."""

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
            parse_record(records[i], config.max_message_bytes, config.max_id_chars, config.tombstones),
        )
        for i in positions
    ]


def _mark_deleted(docs: list[Doc], deletions: list[tuple[OrderKey, Deletion]]) -> None:
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


def _stored_vectors(docs: list[Doc], index: VectorIndex, fetched: Fetched) -> tuple[int, list[Doc]]:
    """Give documents their stored vector (a replay) or their exact match's from the index; return how
    many stored vectors were reused and the documents left to embed."""
    wanted = {d.key for d in docs}
    wanted |= {(d.document.tenant, d.exact.doc_id) for d in docs if d.exact and d.exact_in_batch is None}
    stored = lookup(index, fetched, sorted(wanted))
    reused = 0
    to_embed: list[Doc] = []
    for doc in docs:
        own = stored.get(doc.key)
        match = stored.get((doc.document.tenant, doc.exact.doc_id)) if doc.exact else None
        if own is not None and own.text_hash == doc.text_hash:
            doc.vector, doc.opaque, doc.first = own.vector, own.opaque, decode_verdict(own.decision)
            reused += 1
        elif doc.exact is not None and doc.exact_in_batch is None and match is not None:
            doc.vector, doc.opaque = match.vector, match.opaque
        elif doc.exact_in_batch is None:
            to_embed.append(doc)
    return reused, to_embed


def _assign_vectors(docs: list[Doc], to_embed: list[Doc], embedded: Embedded) -> None:
    """The encoder's vectors, and whether the model could read each text (``Encoder.known``); then an
    in-batch exact repeat takes the vector of the earlier document it repeats."""
    for doc, vector, readable in zip(to_embed, embedded.vectors, embedded.known, strict=True):
        doc.vector, doc.opaque = vector, not readable
    for doc in docs:  # in order: an in-batch exact match is earlier, so it already has its vector
        if doc.vector is None and doc.exact_in_batch is not None:
            doc.vector, doc.opaque = docs[doc.exact_in_batch].vector, docs[doc.exact_in_batch].opaque


def _outcomes(
    parsed: list[_Parsed], docs: list[Doc], verdicts: list[Verdict], config: StepConfig
) -> list[RecordOutcome]:
    """Each record's outcome with its typed messages, in order-key order."""
    decided = iter(zip(docs, verdicts, strict=True))  # docs were built from `parsed`, in its order
    out: list[RecordOutcome] = []
    for p in parsed:
        if isinstance(p.item, DeadLetterReason):
            letter = dead_letter_message(
                p.record, p.item, config.model_version, config.max_message_bytes, config.max_dead_letter_bytes
            )
            out.append(DeadLettered(p.record, letter))
        elif isinstance(p.item, Deletion):
            out.append(Deleted(p.record, p.item))
        else:
            doc, verdict = next(decided)
            decision = decision_message(p.record, doc.document, verdict, config.model_version)
            threshold = (
                verdict.point if verdict.point is not None else config.decision.point(doc.document.tenant)
            )
            flag = flag_message(p.record, doc.document, verdict, threshold, config.model_version)
            out.append(Decided(p.record, decision, flag))
    return out


def _points(docs: list[Doc], verdicts: list[Verdict], model: str, keep_text: int) -> list[IndexPoint]:
    """Every surviving document with its decision, one point per (tenant, id): the latest version by
    order key wins."""
    latest: dict[tuple[str, str], Doc] = {}
    decided: dict[int, Verdict] = {id(doc): verdict for doc, verdict in zip(docs, verdicts, strict=True)}
    for doc in docs:
        if not doc.deleted:
            latest[doc.key] = doc
    return [
        IndexPoint(
            doc_id=doc.document.id,
            tenant=doc.document.tenant,
            vector=vector_of(doc),
            text_hash=doc.text_hash,
            order=doc.order,
            model=model,
            created_at=None if doc.document.created_at is None else doc.document.created_at.isoformat(),
            decision=encode_verdict(decided[id(doc)]),
            opaque=doc.opaque,
            text=doc.document.text[:keep_text] if keep_text else None,
            forms=doc.document.normal_forms[1],
            meta=stored_meta(doc.document),
        )
        for doc in sorted(latest.values(), key=lambda d: d.order)
    ]
