"""The teacher's side of ``trainer.distill``: its vectors, cached under ``runs/`` so the next run with
the same teacher spends no time on them, and the principal directions the student's targets live in.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from worker.core.logs import get_logger

log = get_logger("trainer.distill")


def cache_key(teacher_version: str, kind: str) -> str:
    return f"{teacher_version}-{kind}"


def teacher_vectors(
    embed: Callable[[Sequence[str]], np.ndarray],
    texts: Sequence[str],
    cache: Path,
    key: str,
    budget_s: float,
    *,
    progress: bool,
    chunk: int = 256,
) -> tuple[list[str], NDArray[np.float32]]:
    """(texts embedded, their vectors): the cache's first, then new ones until the budget runs out."""
    cache.mkdir(parents=True, exist_ok=True)
    text_file, vector_file = cache / f"{key}.json", cache / f"{key}.f16"
    done: list[str] = json.loads(text_file.read_text()) if text_file.is_file() else []
    stored = np.fromfile(vector_file, dtype=np.float16) if vector_file.is_file() else np.zeros(0, np.float16)
    vectors = [stored.reshape(len(done), -1).astype(np.float32)] if done else []
    have = set(done)
    todo = [t for t in dict.fromkeys(texts) if t not in have]
    started = time.monotonic()
    with tqdm(total=len(todo), desc=f"teacher {key.rsplit('-', 1)[-1]}", disable=not progress) as bar:
        for first in range(0, len(todo), chunk):
            if time.monotonic() - started > budget_s:
                log.info("teacher_budget_spent", embedded=first, wanted=len(todo))
                break
            part = todo[first : first + chunk]
            vectors.append(np.asarray(embed(part), dtype=np.float32))
            done += part
            bar.update(len(part))
    table = np.concatenate(vectors) if vectors else np.zeros((0, 1), np.float32)
    text_file.write_text(json.dumps(done))
    table.astype(np.float16).tofile(vector_file)
    wanted = set(texts)
    keep = [i for i, t in enumerate(done) if t in wanted]
    return [done[i] for i in keep], table[keep]


def principal_axes(vectors: NDArray[np.float32], dim: int) -> NDArray[np.float32]:
    """(teacher dim, dim): the top right-singular vectors of the unit rows (no centring: cosines)."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)
    _, _, vt = np.linalg.svd(unit[: min(len(unit), 20_000)].astype(np.float64), full_matrices=False)
    return np.ascontiguousarray(vt[:dim].T.astype(np.float32))


def unit(x: NDArray[np.float32]) -> NDArray[np.float32]:
    out: NDArray[np.float32] = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
    return out


def projection_fidelity(teacher: NDArray[np.float32], projected: NDArray[np.float32], n: int = 2000) -> float:
    """Correlation of pairwise cosines before and after the projection, on a sample."""
    a, b = unit(teacher[:n]), projected[:n]
    return float(np.corrcoef((a @ a.T).ravel(), (b @ b.T).ravel())[0, 1])
