"""Arbitrary records through the real broker and the live loop: each gets exactly one outcome (a
decision, a dead letter, or a deletion), the worker never stops, and the commit covers every record.

The same strategies as the pure-core suite (``tests/unit/test_bad_input.py``), a few examples only:
each one is a fresh topic, a group join and a run of the loop.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from devkit.kafka import Names, committed, create_topics, produce, read_topic
from tests.fakes import HashEncoder, raw_record
from tests.integration.conftest import worker_settings
from tests.integration.test_loop_kafka import run_inline
from tests.unit.test_bad_input import values
from worker.core.messages import DeadLetterReason, Deletion
from worker.core.outgoing import DeadLetter, Decision
from worker.core.parse import parse_record
from worker.service.decision import step_config

pytestmark = pytest.mark.integration

keys = st.none() | st.binary(max_size=20) | st.sampled_from([b"a", b"b"])
# (kafka-python cannot produce a record with neither key nor value; the unit suite covers that case)
LIVE = settings(
    max_examples=3,
    derandomize=True,  # the same examples on every CI run; run with --hypothesis-seed=N to explore
    phases=[Phase.explicit, Phase.generate],  # no shrinking: each example is a broker round trip
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


def fresh_names() -> Names:
    tag = uuid.uuid4().hex[:10]
    return Names(f"docs-{tag}", f"flags-{tag}", f"dlq-{tag}", f"decisions-{tag}", f"group-{tag}")


@LIVE
@given(st.lists(st.tuples(keys, values).filter(lambda kv: kv != (None, None)), min_size=20, max_size=60))
def test_every_record_gets_one_outcome_and_the_commit_covers_them_all(
    broker: str, tmp_path: Path, records: list[tuple[bytes | None, bytes | None]]
) -> None:
    names = fresh_names()
    create_topics(broker, names, partitions=1)
    produce(broker, names.input, records)
    settings_ = worker_settings(broker, names, tmp_path / names.group)

    assert run_inline(settings_, max_messages=len(records)) == len(records)  # never stopped

    limits = step_config(settings_, HashEncoder(), threshold=0.8)  # the loop's own limits
    parsed = [
        parse_record(raw_record(value, offset, key=key), limits.max_message_bytes, limits.max_id_chars)
        for offset, (key, value) in enumerate(records)
    ]
    documents = [i for i, p in enumerate(parsed) if not isinstance(p, Deletion | DeadLetterReason)]
    bad = [i for i, p in enumerate(parsed) if isinstance(p, DeadLetterReason)]
    decided = [
        Decision.model_validate(json.loads(v)).source.offset
        for _, v in read_topic(broker, names.decisions, expect=len(documents))
    ]
    letters = [
        DeadLetter.model_validate(json.loads(v)) for _, v in read_topic(broker, names.dlq, expect=len(bad))
    ]
    assert Counter(decided) == Counter(documents)  # exactly one decision per document
    assert [letter.source.offset for letter in letters] == bad  # exactly one dead letter per bad record
    for letter in letters:
        reason = parsed[letter.source.offset]
        assert isinstance(reason, DeadLetterReason)
        assert letter.code == reason.code
    assert committed(broker, names.group, names.input) == {0: len(records)}
