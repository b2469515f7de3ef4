"""The project's own repost stream: forum posts, their reposts, and the truth about each one.

``generate(n, seed)`` makes a deterministic stream (stdlib ``random`` only, no external text) of
forum-style posts in arrival order, with one truth record per post:

- ``original``: a new post, composed from hand-written pieces (opener, main sentence, detail, closer) of
  one of twelve topics, its slots filled from small vocabularies;
- ``exact``: a byte-identical copy of an earlier member of a cluster;
- ``edit``: a spam-style edit of an earlier member: typos, casing, emoji, links added or changed,
  Cyrillic/Greek homoglyphs, zero-width characters, dropped words, punctuation and whitespace noise;
- ``rewrite``: the original said in other words (every piece has hand-written paraphrases that carry the
  same slots);
- ``near_miss``: the original's pieces with one material fact changed (a price, place, product, day,
  amount, or a negation): *not* a duplicate;
- ``cross_tenant``: a copy, exact or edited, of a post of the other tenant: *not* a duplicate, because
  tenants never match each other.

A cluster is an original with its exact copies, edits and rewrites, all in the original's tenant;
``duplicate_of`` names the cluster's original (null for every other kind). A post made from another one
always arrives after it, and ``created_at`` strictly increases along the stream, one second at least, so
it can serve as the Kafka record timestamp.

Known limit: originals are composed from a finite set of pieces, so in large streams (10,000 posts) some
originals of one topic share pieces and differ only in their facts; the truth counts them as unrelated,
as it does near misses. Generation keeps the main sentences of originals at least two facts apart while
the vocabularies allow it, and never repeats an original's text.

``precision_recall(decisions, truth)`` scores a run's flags against the truth. Regenerate with
``python -m devkit.posts --n N --seed S --out DIR``.

Modules: ``stream`` (kinds, shares, records), ``templates`` (the pieces and vocabularies, read from
``topics.toml`` and ``vocab.toml`` beside it), ``edits`` (the spam edits), ``compose`` (``generate``),
``score`` (``precision_recall``), ``files`` (JSON Lines), ``review`` (a moderator who answers from the
truth, for ``bench.feedback``) and ``__main__`` (the command line).
"""

from devkit.posts.compose import generate
from devkit.posts.edits import spam_edit
from devkit.posts.files import read_jsonl, write_jsonl, write_stream
from devkit.posts.score import KindScore, Score, precision_recall
from devkit.posts.stream import (
    DEFAULT_N,
    DEFAULT_SEED,
    DEFAULT_TENANT,
    DUPLICATE_KINDS,
    KINDS,
    MIN_N,
    OTHER_TENANT,
    POSTS_FILE,
    START,
    TRUTH_FILE,
    Kind,
    PostRecord,
    Stream,
    TruthRecord,
    composition,
)

__all__ = [
    "DEFAULT_N",
    "DEFAULT_SEED",
    "DEFAULT_TENANT",
    "DUPLICATE_KINDS",
    "KINDS",
    "MIN_N",
    "OTHER_TENANT",
    "POSTS_FILE",
    "START",
    "TRUTH_FILE",
    "Kind",
    "KindScore",
    "PostRecord",
    "Score",
    "Stream",
    "TruthRecord",
    "composition",
    "generate",
    "precision_recall",
    "read_jsonl",
    "spam_edit",
    "write_jsonl",
    "write_stream",
]
