"""``python -m worker verdicts``: the verdicts kept beside the index, with the texts they lack read back
from the documents topic at the positions the worker recorded when it read them, as a file for
``python -m trainer retrain --verdicts``.

A verdict names two posts by id; the worker looked both up in its index when it read the verdict and
kept where each was read (record time, partition and offset: its order key) in ``verdicts.jsonl``.
Here each missing text is read back from there while the topic still holds it. A verdict whose text
cannot be had still goes into the file (it counts for suppression and thresholds); the retrain reports
it as untrainable, and this command counts why.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence

from worker.core.feedback import Reviewed
from worker.core.records import OrderKey

PARTITION_SHIFT = 40
Reader = Callable[[list[tuple[int, int]]], dict[tuple[int, int], bytes | None]]


def with_texts(items: Sequence[Reviewed], read: Reader) -> tuple[list[dict[str, object]], Counter[str]]:
    """Each verdict as a JSON object, ``text`` and ``duplicate_text`` filled where they can be read back;
    and a count of how each side's text was had, or why not."""
    wanted = [
        _position(order)
        for item in items
        for order, text in zip(item.orders, _texts(item), strict=True)
        if text is None and order is not None
    ]
    values = read(sorted(set(wanted))) if wanted else {}
    rows: list[dict[str, object]] = []
    why: Counter[str] = Counter()
    for item in items:
        row: dict[str, object] = item.verdict.model_dump(mode="json", exclude_none=True)
        ids = (item.verdict.id, item.verdict.duplicate_of)
        for field, doc_id, order, text in zip(
            ("text", "duplicate_text"), ids, item.orders, _texts(item), strict=True
        ):
            if text is not None:
                why["in the verdict"] += 1
                continue
            if order is None:
                why["not in the index when the verdict was read"] += 1
                continue
            found = _text_of(values.get(_position(order)), doc_id)
            if found is None:
                why["no longer in the documents topic (retention) or another post there"] += 1
                continue
            row[field] = found
            why["read back from the documents topic"] += 1
        rows.append(row)
    return rows, why


def _texts(item: Reviewed) -> tuple[str | None, str | None]:
    return item.verdict.text, item.verdict.duplicate_text


def _position(order: OrderKey) -> tuple[int, int]:
    return order[1] >> PARTITION_SHIFT, order[1] & ((1 << PARTITION_SHIFT) - 1)


def _text_of(value: bytes | None, doc_id: str) -> str | None:
    """The text of the document at that position, if it is the post the verdict names."""
    if value is None:
        return None
    try:
        document = json.loads(value)
    except ValueError:
        return None
    if (
        not isinstance(document, dict)
        or document.get("id") != doc_id
        or not isinstance(document.get("text"), str)
    ):
        return None
    return str(document["text"])
