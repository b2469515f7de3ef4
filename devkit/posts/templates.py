"""The pieces posts are composed from, read from ``topics.toml`` and ``vocab.toml``, and a post's draft.

Each topic has four sections: opener (optional), main sentence, detail (optional), closer (optional).
A piece is written as "form | form [| form]": the same meaning in other words, with the same slots.
The files are checked when this module is imported; a bad piece raises ``ValueError``.
"""

from __future__ import annotations

import string
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

TOPICS_FILE: Final = Path(__file__).with_name("topics.toml")
VOCAB_FILE: Final = Path(__file__).with_name("vocab.toml")

SECTIONS: Final = ("opener", "main", "detail", "closer")
OPENER, MAIN, DETAIL, CLOSER = 0, 1, 2, 3
INCLUDE: Final = (0.55, 1.0, 0.85, 0.6)
"""Chance that an original includes each section."""

SPAM_TOPICS: Final = frozenset({"crypto_spam", "job_spam"})
"""Reposted twice as often as other topics, as spam is."""
NOT_MATERIAL: Final = frozenset({"link"})
"""Slots whose value is not a fact of the post: a spammer swapping links is still reposting."""


def _strings(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{where}: expected a non-empty list of strings, got {value!r}")
    return tuple(value)


def _read(path: Path) -> dict[str, Any]:
    with path.open("rb") as file:
        return tomllib.load(file)


def _load_vocab(path: Path) -> dict[str, tuple[str, ...]]:
    return {name: _strings(f"{path.name}: {name}", values) for name, values in _read(path).items()}


def _load_topics(path: Path) -> dict[str, tuple[tuple[str, ...], ...]]:
    """Each topic's sections in order, each a tuple of piece specs; the file's order is kept."""
    topics: dict[str, tuple[tuple[str, ...], ...]] = {}
    for topic, table in _read(path).items():
        if not isinstance(table, dict) or set(table) != set(SECTIONS):
            raise ValueError(f"{path.name}: [{topic}] needs exactly the sections {', '.join(SECTIONS)}")
        topics[topic] = tuple(_strings(f"{path.name}: {topic}.{name}", table[name]) for name in SECTIONS)
    return topics


VOCAB: Final = _load_vocab(VOCAB_FILE)


@dataclass(frozen=True)
class Piece:
    forms: tuple[str, ...]  # the same meaning in other words
    slots: tuple[str, ...]  # in order of first appearance; every form has the same set


def _slots_of(form: str) -> tuple[str, ...]:
    names = [name for _, name, _, _ in string.Formatter().parse(form) if name]
    return tuple(dict.fromkeys(names))


def _parse_piece(topic: str, spec: str) -> Piece:
    forms = tuple(form.strip() for form in spec.split(" | "))
    slots = _slots_of(forms[0])
    if len(forms) < 2 or any(set(_slots_of(form)) != set(slots) for form in forms):
        raise ValueError(f"{topic}: a piece needs two or more forms with the same slots: {spec!r}")
    if unknown := [name for name in slots if name not in VOCAB]:
        raise ValueError(f"{topic}: unknown slots {unknown} in {spec!r}")
    return Piece(forms, slots)


def _parse_topics(
    topics: dict[str, tuple[tuple[str, ...], ...]],
) -> dict[str, tuple[tuple[Piece, ...], ...]]:
    parsed: dict[str, tuple[tuple[Piece, ...], ...]] = {}
    for topic, sections in topics.items():
        parsed[topic] = tuple(tuple(_parse_piece(topic, spec) for spec in section) for section in sections)
        for piece in parsed[topic][MAIN]:
            if len(material(piece.slots)) < 2:
                raise ValueError(f"{topic}: a main sentence needs two material slots: {piece.forms[0]!r}")
    return parsed


def material(slots: Iterable[str]) -> tuple[str, ...]:
    return tuple(name for name in slots if name not in NOT_MATERIAL)


TEMPLATES: Final = _parse_topics(_load_topics(TOPICS_FILE))
TOPIC_NAMES: Final = tuple(TEMPLATES)


@dataclass(frozen=True)
class Draft:
    """How a post is composed: per section (piece, form) or None when left out; slot values."""

    topic: str
    choice: tuple[tuple[int, int] | None, ...]
    slots: tuple[tuple[str, str], ...]  # sorted (name, value) pairs

    def pieces(self) -> list[Piece]:
        return [
            section[chosen[0]]
            for section, chosen in zip(TEMPLATES[self.topic], self.choice, strict=True)
            if chosen is not None
        ]

    def main(self) -> Piece:
        chosen = self.choice[MAIN]
        assert chosen is not None  # every draft has a main sentence
        return TEMPLATES[self.topic][MAIN][chosen[0]]

    def facts(self) -> dict[str, str]:
        """The main sentence's material slots and their values."""
        values = dict(self.slots)
        return {name: values[name] for name in material(self.main().slots)}

    def render(self) -> str:
        values = dict(self.slots)
        sentences = []
        for section, chosen in zip(TEMPLATES[self.topic], self.choice, strict=True):
            if chosen is not None:
                text = section[chosen[0]].forms[chosen[1]].format_map(values)
                sentences.append(text[:1].upper() + text[1:])
        return " ".join(sentences)
