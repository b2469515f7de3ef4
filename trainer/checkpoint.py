"""Checkpoints: safetensors for tensors, JSON for the rest (nothing pickled), written atomically.

``run_dir/checkpoint`` holds the live weights, the best weights so far, the optimizer's state, torch's
RNG state and ``RunState`` (where the run is, its history and this epoch's mined negatives), so a run
killed at any step resumes to the same weights as one never interrupted.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from worker.model.directory import state_tensors


@dataclass
class RunState:
    """Where a run is; what a checkpoint restores besides tensors."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    elapsed_s: float = 0.0
    examples_seen: int = 0
    best_score: float = -math.inf
    best_step: int = -1
    history: list[dict[str, float]] = field(default_factory=list)
    mined: dict[int, list[int]] = field(default_factory=dict)
    mined_epoch: int = -1


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the weights on CPU (``state_dict`` alone aliases the live parameters on CPU)."""
    return {name: value.detach().to("cpu", copy=True) for name, value in module.state_dict().items()}


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a complete checkpoint to resume from."""
    return (run_dir / "checkpoint" / "state.json").is_file()


def save_checkpoint(
    run_dir: Path,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: RunState,
    best: dict[str, torch.Tensor] | None,
    settings_json: str,
) -> None:
    """Write ``run_dir/checkpoint`` atomically: weights, optimizer, best weights, RNG, state."""
    tmp = run_dir / "checkpoint.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(state_tensors(module), str(tmp / "model.safetensors"))
    if best is not None:
        save_file(best, str(tmp / "best.safetensors"))
    opt = optimizer.state_dict()
    tensors = {
        f"{index}.{key}": value.detach().cpu().contiguous()
        for index, slot in opt["state"].items()
        for key, value in slot.items()
        if isinstance(value, torch.Tensor)
    }
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    meta = {
        "state": {**state.__dict__, "mined": {str(k): v for k, v in state.mined.items()}},
        "param_groups": opt["param_groups"],
        "settings": json.loads(settings_json),
    }
    (tmp / "state.json").write_text(json.dumps(meta), encoding="utf-8")
    final = run_dir / "checkpoint"
    if final.exists():
        old = run_dir / "checkpoint.old"
        final.rename(old)
        tmp.rename(final)
        for file in old.iterdir():
            file.unlink()
        old.rmdir()
    else:
        tmp.rename(final)


def load_checkpoint(
    run_dir: Path, module: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[RunState, dict[str, torch.Tensor] | None]:
    """Restore what ``save_checkpoint`` wrote; returns the run state and the best weights."""
    folder = run_dir / "checkpoint"
    meta = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    module.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    tensors = load_file(str(folder / "optimizer.safetensors"))
    torch.set_rng_state(tensors.pop("rng.torch"))
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        slots.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": slots, "param_groups": meta["param_groups"]})
    raw = meta["state"]
    raw["mined"] = {int(k): v for k, v in raw["mined"].items()}
    best_file = folder / "best.safetensors"
    best = load_file(str(best_file)) if best_file.is_file() else None
    return RunState(**raw), best
