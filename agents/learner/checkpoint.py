"""Checkpoints that lose no progress: weights (safetensors), optimizer, scheduler, every RNG,
the step, and any reward or environment state; resuming continues the run exactly.

`policy/` is what `Policy.from_pretrained` loads (for a LoRA run, peft's adapter folder). Under FSDP
every rank also writes its shards of the fp32 weights and of the optimizer state into `sharded/`
(torch.distributed.checkpoint), which resuming reads instead; `trainer_state.pt` then has no optimizer.

A checkpoint is complete once its `trainer_state.pt` exists, which is written last and atomically
(write, then rename), as is the `latest` pointer: a kill at any moment leaves either the old or the
new checkpoint to resume from. Retention keeps the newest `keep` of them, and always checkpoint-0,
the weights RL started from."""

from __future__ import annotations

import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from ..rollout.engine import Engine

LATEST = "latest"
SHARDED = "sharded"  # FSDP's DCP folder inside a checkpoint


def rng_state(engine: Engine) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "engine": engine.get_rng_state()}


def set_rng_state(state: dict[str, Any], engine: Engine) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if state.get("engine") is not None:  # None: written before the vllm engine saved its RNG
        engine.set_rng_state(state["engine"])


def _replace(path: Path, write: Any) -> None:
    """Write a file through a temporary name and rename it into place (atomic on POSIX)."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """The complete `checkpoint-<step>` folders, oldest first."""
    found = [(int(m.group(1)), p) for p in Path(output_dir).glob("checkpoint-*")
             if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and (p / "trainer_state.pt").exists()]
    return [p for _, p in sorted(found)]


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"checkpoint-{step}"


def save_checkpoint(output_dir: str | Path, step: int, policy: Any, trainer_state: dict[str, Any], keep: int = 0) -> Path:
    """Write `checkpoint-<step>/` (its `sharded/` folder, if any, is already there), point `latest` at it,
    then delete all but the newest `keep` checkpoints (0 keeps every one), checkpoint-0 excepted."""
    root = Path(output_dir)
    path = checkpoint_path(root, step)
    path.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(path / "policy")
    _replace(path / "trainer_state.pt", lambda tmp: torch.save(trainer_state, tmp))
    _replace(root / LATEST, lambda tmp: tmp.write_text(path.name))
    if keep > 0:
        for old in complete_checkpoints(root)[:-keep]:
            if old.name not in ("checkpoint-0", path.name):
                shutil.rmtree(old)
    return path


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint `latest` points at; if that pointer is missing or names no complete checkpoint,
    the newest complete one (with a warning); None where there is none."""
    pointer = Path(output_dir) / LATEST
    named = Path(output_dir) / pointer.read_text().strip() if pointer.exists() else None
    if named is not None and (named / "trainer_state.pt").exists():
        return named
    found = complete_checkpoints(output_dir)
    if found:
        warnings.warn(f"{pointer} {'names no complete checkpoint' if pointer.exists() else 'is missing'}; "
                      f"resuming from the newest complete one, {found[-1].name}", stacklevel=2)
        return found[-1]
    return None


def load_trainer_state(path: Path) -> dict[str, Any]:
    return torch.load(path / "trainer_state.pt", weights_only=False)
