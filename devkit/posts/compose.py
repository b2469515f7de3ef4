"""Composing a stream: originals from the templates, then exact copies, edits, rewrites, near misses and
cross-tenant copies of them, sorted into arrival order with their truth."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Final

from devkit.posts.edits import spam_edit
from devkit.posts.stream import (
    DEFAULT_N,
    DEFAULT_SEED,
    DEFAULT_TENANT,
    KINDS,
    MEAN_GAP_S,
    OTHER_TENANT,
    OTHER_TENANT_SHARE,
    START,
    Kind,
    PostRecord,
    Stream,
    TruthRecord,
    composition,
)
from devkit.posts.templates import (
    CLOSER,
    INCLUDE,
    MAIN,
    OPENER,
    SPAM_TOPICS,
    TEMPLATES,
    TOPIC_NAMES,
    VOCAB,
    Draft,
)


@dataclass
class _Post:
    gen: int  # creation order; a post made from another one is created after it
    t: float  # seconds after START
    text: str
    tenant: str
    kind: Kind
    root: int | None  # gen of the cluster's original; None for posts that duplicate nothing
    draft: Draft | None = None


_ATTEMPTS: Final = 40
_ORIGINAL_ATTEMPTS: Final = 24
"""Drafts tried for a new original before settling for the one least like the others."""


class _Builder:
    """Creates posts in generation order; ``build`` sorts them into arrival order."""

    def __init__(self, rng: random.Random, n: int) -> None:
        self.rng = rng
        self.span_s = n * MEAN_GAP_S
        self.posts: list[_Post] = []
        self.members: dict[int, list[int]] = {}  # cluster root → gens of its members, root first
        self.seen: set[str] = set()  # case-folded texts of originals and near misses
        # Main-sentence facts of originals and near misses, keyed by (topic, main piece): whole, and with
        # each one left out in turn, so that "differs in fewer than two facts" is a few set look-ups.
        self.facts: set[tuple[str, int, tuple[str, ...]]] = set()
        self.facts_but_one: set[tuple[str, int, int, tuple[str, ...]]] = set()
        self.roots: list[int] = []  # originals, spam twice: picked uniformly
        self.reposted: list[int] = []  # one entry per repost: picked, it favours popular clusters
        self.copied: set[int] = set()  # clusters already copied to the other tenant

    def _add(self, post: _Post) -> _Post:
        self.posts.append(post)
        if post.kind == "original":
            self.members[post.gen] = [post.gen]
        elif post.root is not None:
            self.members[post.root].append(post.gen)
            self.reposted.append(post.root)
        return post

    def _after(self, gen: int) -> float:
        return self.posts[gen].t + self.rng.expovariate(10.0 / self.span_s)

    def _distance(self, draft: Draft) -> int:
        """In how many main-sentence facts (0, 1, or 2 meaning "two or more") ``draft`` differs from the
        closest original or near miss with the same main sentence."""
        facts, main = tuple(draft.facts().values()), _main_index(draft)
        if (draft.topic, main, facts) in self.facts:
            return 0
        for i in range(len(facts)):
            if (draft.topic, main, i, facts[:i] + facts[i + 1 :]) in self.facts_but_one:
                return 1
        return 2

    def _remember(self, draft: Draft, text: str) -> None:
        self.seen.add(text.casefold())
        facts, main = tuple(draft.facts().values()), _main_index(draft)
        self.facts.add((draft.topic, main, facts))
        self.facts_but_one.update(
            (draft.topic, main, i, facts[:i] + facts[i + 1 :]) for i in range(len(facts))
        )

    def _compose(self, topic: str) -> Draft:
        choice: list[tuple[int, int] | None] = []
        for index, section in enumerate(TEMPLATES[topic]):
            if self.rng.random() < INCLUDE[index]:
                piece = self.rng.randrange(len(section))
                choice.append((piece, self.rng.randrange(len(section[piece].forms))))
            else:
                choice.append(None)
        draft = Draft(topic, tuple(choice), ())
        names = dict.fromkeys(name for piece in draft.pieces() for name in piece.slots)
        return replace(draft, slots=tuple(sorted((name, self.rng.choice(VOCAB[name])) for name in names)))

    def original(self, tenant: str) -> None:
        """A new post whose main sentence differs in two facts (one at the least) from every earlier
        original or near miss with the same main sentence. A crowded topic gives way to another one."""
        topic = self.rng.choice(TOPIC_NAMES)
        best: tuple[int, Draft, str] | None = None
        for attempt in range(_ORIGINAL_ATTEMPTS):
            if attempt >= _ORIGINAL_ATTEMPTS // 2 and (best is None or best[0] == 0):
                topic = self.rng.choice(TOPIC_NAMES)
            draft = self._compose(topic)
            text = draft.render()
            if text.casefold() in self.seen:
                continue
            distance = self._distance(draft)
            if best is None or distance > best[0]:
                best = (distance, draft, text)
            if distance >= 2:
                break
        if best is None or best[0] == 0:
            raise RuntimeError(f"no new post in {_ORIGINAL_ATTEMPTS} attempts: vocabularies exhausted")
        _, draft, text = best
        gen = len(self.posts)
        self._add(_Post(gen, self.rng.uniform(0, self.span_s), text, tenant, "original", gen, draft))
        self._remember(draft, text)
        self.roots += [gen] * (2 if draft.topic in SPAM_TOPICS else 1)

    def _cluster(self) -> int:
        if self.reposted and self.rng.random() < 0.4:
            return self.rng.choice(self.reposted)
        return self.rng.choice(self.roots)

    def derived(self, kind: Kind) -> bool:
        """Add one post of ``kind``; False when no source fits (the caller makes an original instead)."""
        for _ in range(_ATTEMPTS):
            root = self._cluster()
            if kind == "cross_tenant" and root in self.copied:
                continue
            post = self._make(kind, root)
            if post is not None:
                self._add(post)
                if kind == "cross_tenant":
                    self.copied.add(root)
                return True
        return False

    def _make(self, kind: Kind, root: int) -> _Post | None:
        gen, rng, source = len(self.posts), self.rng, self.posts[root]
        member = self.posts[rng.choice(self.members[root])]
        if kind == "exact":
            return _Post(gen, self._after(member.gen), member.text, member.tenant, kind, root)
        if kind == "edit":
            return _Post(gen, self._after(member.gen), spam_edit(rng, member.text), member.tenant, kind, root)
        if kind == "cross_tenant":
            text = member.text if rng.random() < 0.6 else spam_edit(rng, member.text)
            tenant = OTHER_TENANT if member.tenant == DEFAULT_TENANT else DEFAULT_TENANT
            return _Post(gen, self._after(member.gen), text, tenant, kind, None)
        assert source.draft is not None  # originals keep their draft
        if kind == "rewrite":
            draft = self._rewrite(source.draft)
            texts = {self.posts[m].text.casefold() for m in self.members[root]}
            if draft.render().casefold() in texts:
                return None
            return _Post(gen, self._after(root), draft.render(), source.tenant, kind, root, draft)
        near = self._near_miss(source.draft)
        if near is None or near.render().casefold() in self.seen or self._distance(near) < 1:
            return None
        self._remember(near, near.render())
        return _Post(gen, self._after(root), near.render(), source.tenant, "near_miss", None, near)

    def _rewrite(self, draft: Draft) -> Draft:
        """Every piece in another of its forms; the optional opener and closer sometimes left out."""
        choice: list[tuple[int, int] | None] = []
        for index, (section, chosen) in enumerate(zip(TEMPLATES[draft.topic], draft.choice, strict=True)):
            if chosen is None or (index in (OPENER, CLOSER) and self.rng.random() < 0.3):
                choice.append(None)
                continue
            piece, form = chosen
            others = [f for f in range(len(section[piece].forms)) if f != form]
            choice.append((piece, self.rng.choice(others)))
        return replace(draft, choice=tuple(choice))

    def _near_miss(self, draft: Draft) -> Draft | None:
        """The same pieces and forms with one fact of the main sentence changed."""
        name = self.rng.choice(list(draft.facts()))
        values = dict(draft.slots)
        options = [value for value in VOCAB[name] if value != values[name]]
        if not options:
            return None
        values[name] = self.rng.choice(options)
        return replace(draft, slots=tuple(sorted(values.items())))

    def build(self) -> Stream:
        ordered = sorted(self.posts, key=lambda p: (p.t, p.gen))
        width = max(5, len(str(len(ordered))))
        ids = {post.gen: f"p{i:0{width}d}" for i, post in enumerate(ordered, start=1)}
        posts: list[PostRecord] = []
        truth: list[TruthRecord] = []
        last = -1
        for post in ordered:
            second = max(int(post.t), last + 1)
            last = second
            created = (START + timedelta(seconds=second)).strftime("%Y-%m-%dT%H:%M:%SZ")
            doc_id = ids[post.gen]
            duplicate_of = ids[post.root] if post.root is not None and post.kind != "original" else None
            posts.append(PostRecord(id=doc_id, text=post.text, tenant=post.tenant, created_at=created))
            truth.append(TruthRecord(id=doc_id, duplicate_of=duplicate_of, kind=post.kind))
        return Stream(posts, truth)


def _main_index(draft: Draft) -> int:
    chosen = draft.choice[MAIN]
    return -1 if chosen is None else chosen[0]


def generate(n: int = DEFAULT_N, seed: int = DEFAULT_SEED) -> Stream:
    """A stream of ``n`` posts in arrival order and its truth; the same ``(n, seed)`` gives the same bytes."""
    rng = random.Random(seed)  # noqa: S311 -- reproducible test data, not cryptography
    counts = composition(n)
    builder = _Builder(rng, n)
    for _ in range(counts["original"]):
        builder.original(OTHER_TENANT if rng.random() < OTHER_TENANT_SHARE else DEFAULT_TENANT)
    kinds: list[Kind] = [kind for kind in KINDS[1:] for _ in range(counts[kind])]
    rng.shuffle(kinds)
    for kind in kinds:
        if not builder.derived(kind):
            builder.original(DEFAULT_TENANT)
    return builder.build()
