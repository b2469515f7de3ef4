"""What a flag says of the earlier post it names: its ``created_at``, its ``meta`` as the index keeps it,
and for an exact match the normalisation step that made the two texts equal (``MatchedPost``). Pure
over the index port; the batch step calls it once the decisions are made, before anything is stored.
"""

from __future__ import annotations

import json
from dataclasses import replace

from worker.core.decide import MatchedPost, Verdict
from worker.core.matching import Doc, Fetched, lookup
from worker.core.messages import stored_meta
from worker.core.normalize import exact_by
from worker.core.ports import VectorIndex


def explain_flags(
    docs: list[Doc], verdicts: list[Verdict], index: VectorIndex, fetched: Fetched
) -> list[Verdict]:
    """New flags with what they say of the earlier post (``MatchedPost``): from the batch, or from the
    points the batch read (its search fetched every index neighbour). A replay keeps what its first
    decision stored."""
    flagged = [
        (i, v.duplicate_of)
        for i, (doc, v) in enumerate(zip(docs, verdicts, strict=True))
        if doc.first is None and v.duplicate_of is not None
    ]
    if not flagged:
        return verdicts
    in_batch = {(d.document.tenant, d.document.id, d.order): d for d in docs}
    wanted = [
        (docs[i].document.tenant, m.doc_id)
        for i, m in flagged
        if m is not None and (docs[i].document.tenant, m.doc_id, m.order) not in in_batch
    ]
    stored = lookup(index, fetched, wanted)
    out = list(verdicts)
    for i, match in flagged:
        assert match is not None
        doc = docs[i]
        tenant = doc.document.tenant
        earlier = in_batch.get((tenant, match.doc_id, match.order))
        created_at: str | None
        meta: str | None
        forms: str | None
        if earlier is not None:
            created = earlier.document.created_at
            meta, forms = stored_meta(earlier.document), earlier.document.normal_forms[1]
            created_at = None if created is None else created.isoformat()
        else:
            point = stored.get((tenant, match.doc_id))
            if point is None:
                continue
            created_at, meta, forms = point.created_at, point.meta, point.forms
        exact = exact_by(doc.document.normal_forms[1], forms) if match.stage == "exact" else None
        about = MatchedPost(created_at, None if meta is None else json.loads(meta), exact)
        out[i] = replace(out[i], matched=about)
    return out
