"""Reading and writing streams: JSON Lines, one object per line."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from devkit.posts.stream import POSTS_FILE, TRUTH_FILE, Stream


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """One JSON object per line, UTF-8, characters as they are (homoglyphs, emoji, zero-widths)."""
    lines = [json.dumps(dict(row), ensure_ascii=False) + "\n" for row in rows]
    path.write_text("".join(lines), encoding="utf-8", newline="\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every non-empty line of a JSONL file, parsed."""
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def write_stream(stream: Stream, out_dir: Path) -> tuple[Path, Path]:
    """Write ``posts.jsonl`` and ``truth.jsonl`` into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    posts, truth = out_dir / POSTS_FILE, out_dir / TRUTH_FILE
    write_jsonl(posts, stream.posts)
    write_jsonl(truth, stream.truth)
    return posts, truth
