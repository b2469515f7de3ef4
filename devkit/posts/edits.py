"""The demo stream's spam-style edits: typos, casing, emoji, links, homoglyphs, zero-widths, noise.

Kept apart from ``trainer/augment.py``'s ``spam_edit`` on purpose (issue 14): the demo stream tests the
model, and a model trained on exactly these edits would make that test unfair. Do not share code or
tables between the two generators.

Edits are applied in the order of ``_EDITS``. None touches a digit, so no edit changes a price or a number;
dropped words are never negations.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable
from typing import Final

_NEGATIONS: Final = frozenset({"not", "no", "never", "without", "nothing", "none", "nor", "cannot"})
_HOMOGLYPHS: Final[dict[str, str]] = {  # Latin letter → Cyrillic and Greek look-alikes
    "a": "\u0430", "c": "\u0441", "e": "\u0435", "i": "\u0456", "j": "\u0458", "o": "\u043e\u03bf",
    "p": "\u0440\u03c1", "s": "\u0455", "v": "\u03bd", "x": "\u0445", "y": "\u0443",
    "A": "\u0410\u0391", "B": "\u0412\u0392", "C": "\u0421", "E": "\u0415\u0395", "H": "\u041d\u0397",
    "I": "\u0406\u0399", "K": "\u041a\u039a", "M": "\u041c\u039c", "N": "\u039d", "O": "\u041e\u039f",
    "P": "\u0420\u03a1", "T": "\u0422\u03a4", "X": "\u0425\u03a7", "Y": "\u03a5", "Z": "\u0396",
}  # fmt: skip
_ZERO_WIDTH: Final = "\u200b\u200c\u200d\u2060\ufeff"
_EMOJI: Final = ("🔥", "💯", "✅", "👉", "😂", "🙏", "💰", "🚀", "⭐", "❤️", "👍", "😍")
_LINK_HOSTS: Final = (  # reserved names (RFC 2606): no real site
    "example.com", "example.net", "example.org", "deals.example", "promo.test", "go.example",
)  # fmt: skip
_LINK_LEADS: Final = ("", "More here: ", "👉 ", "Link: ", "check ")
_URL: Final = re.compile(r"https?://\S+")
_WORD: Final = re.compile(r"[A-Za-z]{4,}")
_KEYBOARD: Final = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _new_link(rng: random.Random) -> str:
    code = "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(6))
    return f"https://{rng.choice(_LINK_HOSTS)}/{code}"


def _drop_words(rng: random.Random, text: str) -> str:
    tokens = text.split(" ")

    def droppable(token: str) -> bool:
        word = token.strip(".,!?:;()").lower()
        return word.isalpha() and word not in _NEGATIONS

    candidates = [i for i, token in enumerate(tokens) if droppable(token)]
    if len(tokens) < 6 or not candidates:
        return text
    dropped = set(rng.sample(candidates, min(len(candidates), rng.randint(1, 2))))
    return " ".join(token for i, token in enumerate(tokens) if i not in dropped)


def _misspell(rng: random.Random, word: str) -> str:
    i = rng.randrange(1, len(word) - 1)
    how = rng.randrange(4)
    if how == 0 and word[i] != word[i + 1]:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if how == 1:
        return word[:i] + word[i] + word[i:]
    if how == 2:
        row = next((row for row in _KEYBOARD if word[i].lower() in row), None)
        if row is not None:
            j = row.index(word[i].lower())
            near = row[j - 1] if j > 0 and (j == len(row) - 1 or rng.random() < 0.5) else row[j + 1]
            return word[:i] + (near.upper() if word[i].isupper() else near) + word[i + 1 :]
    return word[:i] + word[i + 1 :]


def _typos(rng: random.Random, text: str) -> str:
    words = list(_WORD.finditer(text))
    if not words:
        return text
    picked = sorted(rng.sample(words, min(len(words), rng.randint(1, 2))), key=lambda m: -m.start())
    for match in picked:
        text = text[: match.start()] + _misspell(rng, match.group()) + text[match.end() :]
    return text


def _casing(rng: random.Random, text: str) -> str:
    how = rng.randrange(3)
    if how == 0:
        return text.upper()
    if how == 1:
        return text.lower()
    tokens = text.split(" ")
    shouted = {rng.randrange(len(tokens))} | {i for i in range(len(tokens)) if rng.random() < 0.3}
    return " ".join(token.upper() if i in shouted else token for i, token in enumerate(tokens))


def _link(rng: random.Random, text: str) -> str:
    if _URL.search(text) and rng.random() < 0.8:
        return _URL.sub(lambda _: _new_link(rng), text, count=1)
    return f"{text} {rng.choice(_LINK_LEADS)}{_new_link(rng)}"


def _emoji(rng: random.Random, text: str) -> str:
    added = "".join(rng.choice(_EMOJI) for _ in range(rng.randint(1, 3)))
    where = rng.random()
    if where < 0.5:
        return f"{text} {added}"
    if where < 0.7:
        return f"{added} {text}"
    tokens = text.split(" ")
    tokens.insert(rng.randrange(1, len(tokens) + 1), added)
    return " ".join(tokens)


def _noise(rng: random.Random, text: str) -> str:
    for _ in range(rng.randint(1, 2)):
        how = rng.randrange(6)
        if how == 0 and " " in text:
            spaces = [i for i, ch in enumerate(text) if ch == " "]
            i = rng.choice(spaces)
            text = text[:i] + " " * rng.randint(2, 4) + text[i + 1 :]
        elif how == 1:
            text = text.rstrip(".!?") + rng.choice(("!!!", "!!", "...", "?!"))
        elif how == 2:
            text = text.replace(",", "")
        elif how == 3:
            text = text.replace(". ", ".\n", rng.randint(1, 3))
        elif how == 4:
            text = text.replace(",", " ,").replace(". ", " . ")
        else:
            text = f"  {text}\t "
    return text


def _homoglyphs(rng: random.Random, text: str) -> str:
    positions = [i for i, ch in enumerate(text) if ch in _HOMOGLYPHS]
    chars = list(text)
    for i in rng.sample(positions, min(len(positions), rng.randint(1, 4))):
        chars[i] = rng.choice(_HOMOGLYPHS[chars[i]])
    return "".join(chars)


def _zero_width(rng: random.Random, text: str) -> str:
    inside = [i for i in range(1, len(text)) if text[i - 1].isalpha() and text[i].isalpha()]
    for i in sorted(rng.sample(inside, min(len(inside), rng.randint(1, 4))), reverse=True):
        text = text[:i] + rng.choice(_ZERO_WIDTH) + text[i:]
    return text


_EDITS: Final[tuple[tuple[Callable[[random.Random, str], str], int], ...]] = (
    (_drop_words, 2),
    (_typos, 3),
    (_casing, 2),
    (_link, 2),
    (_emoji, 2),
    (_noise, 2),
    (_homoglyphs, 2),
    (_zero_width, 2),
)
"""Each edit with its weight, in the order they are applied."""


def spam_edit(rng: random.Random, text: str) -> str:
    """One to three spam-style edits of ``text``; never returns ``text`` unchanged."""
    for _ in range(10):
        pool = list(range(len(_EDITS)))
        chosen: list[int] = []
        for _ in range(rng.choices((1, 2, 3), weights=(5, 3, 2))[0]):
            pick = rng.choices(pool, weights=[_EDITS[i][1] for i in pool])[0]
            pool.remove(pick)
            chosen.append(pick)
        edited = text
        for i, (edit, _) in enumerate(_EDITS):
            if i in chosen:
                edited = edit(rng, edited)
        if edited != text:
            return edited
    return f"{text} {rng.choice(_EMOJI)}"
