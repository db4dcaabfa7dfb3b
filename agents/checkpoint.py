"""Checkpoints that lose no progress: weights (safetensors), optimizer, scheduler, every RNG,
the step, and any reward or environment state; resuming continues the run exactly."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

LATEST = "latest"


def rng_state(engine_generator: torch.Generator | None) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "engine": engine_generator.get_state() if engine_generator is not None else None}


def set_rng_state(state: dict[str, Any], engine_generator: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if engine_generator is not None and state.get("engine") is not None:
        engine_generator.set_state(state["engine"])


def save_checkpoint(output_dir: str | Path, step: int, policy: Any, trainer_state: dict[str, Any]) -> Path:
    """Write `checkpoint-<step>/` and point `latest` at it (the pointer is written last)."""
    root = Path(output_dir)
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(path / "policy")
    torch.save(trainer_state, path / "trainer_state.pt")
    (root / LATEST).write_text(path.name)
    return path


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    pointer = Path(output_dir) / LATEST
    if not pointer.exists():
        return None
    path = Path(output_dir) / pointer.read_text().strip()
    return path if (path / "trainer_state.pt").exists() else None


def load_trainer_state(path: Path) -> dict[str, Any]:
    return torch.load(path / "trainer_state.pt", weights_only=False)
