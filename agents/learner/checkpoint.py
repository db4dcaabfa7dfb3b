"""Checkpoints that lose no progress: weights (safetensors), optimizer, scheduler, every RNG,
the step, and any reward or environment state; resuming continues the run exactly.

`policy/` is what `Policy.from_pretrained` loads (for a LoRA run, peft's adapter folder). Under FSDP
every rank also writes its shards of the fp32 weights and of the optimizer state into `sharded/`
(torch.distributed.checkpoint), which resuming reads instead; `trainer_state.pt` then has no optimizer.

A checkpoint is complete once its `manifest.json` exists: the size and sha256 of every other file in
it, written last and atomically (write, then rename), as is the `latest` pointer. Resuming verifies
the manifest, so a kill at any moment, a truncated or damaged file, or a damaged `latest` leaves a
checkpoint that is skipped with a warning naming it and why, and the run resumes from the newest
one that verifies. Retention keeps the newest `keep` checkpoints, and always checkpoint-0, the
weights RL started from; it renames a folder before deleting it, so a kill mid-delete leaves no
half-deleted checkpoint, and each save clears what killed saves and deletes left behind."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import lora
from ..policy import Policy

if TYPE_CHECKING:
    from ..rollout.engine import Engine

LATEST = "latest"
SHARDED = "sharded"  # FSDP's DCP folder inside a checkpoint
MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.pt"
DELETING = ".deleting"  # retention's suffix for a folder it is removing
_NAME = re.compile(r"checkpoint-(\d+)")


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


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(path: Path) -> None:
    """Record the size and sha256 of every file in checkpoint `path`; the last write of a save."""
    files = {f.relative_to(path).as_posix(): {"bytes": f.stat().st_size, "sha256": _sha256(f)}
             for f in sorted(path.rglob("*")) if f.is_file() and f.name != MANIFEST and not f.name.endswith(".tmp")}
    _replace(path / MANIFEST, lambda tmp: tmp.write_text(json.dumps({"files": files}, indent=1)))


def checkpoint_problem(path: Path) -> str | None:
    """Why checkpoint `path` cannot be resumed from, or None when every file matches its manifest."""
    if not path.is_dir():
        return "it does not exist"
    if not (path / MANIFEST).is_file():
        return f"it has no {MANIFEST} (its save did not finish)"
    try:
        files = json.loads((path / MANIFEST).read_text())["files"]
        listed = {str(rel): (int(want["bytes"]), str(want["sha256"])) for rel, want in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"its {MANIFEST} is unreadable ({exc.__class__.__name__}: {exc})"
    if TRAINER_STATE not in listed:
        return f"its {MANIFEST} lists no {TRAINER_STATE}"
    for rel, (size, digest) in listed.items():
        f = path / rel
        if not f.is_file():
            return f"{rel} is missing"
        if f.stat().st_size != size:
            return f"{rel} has {f.stat().st_size} bytes where {MANIFEST} records {size} (truncated or overwritten)"
        if _sha256(f) != digest:
            return f"{rel} does not match its sha256 in {MANIFEST} (damaged)"
    return None


def _step(path: Path) -> int | None:
    m = _NAME.fullmatch(path.name)
    return int(m.group(1)) if m and path.is_dir() else None


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """The `checkpoint-<step>` folders whose save wrote its trainer state (or its manifest), oldest first."""
    found = sorted((step, p) for p in Path(output_dir).glob("checkpoint-*") if (step := _step(p)) is not None)
    return [p for _, p in found if (p / MANIFEST).is_file() or (p / TRAINER_STATE).is_file()]


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"checkpoint-{step}"


def save_checkpoint(output_dir: str | Path, step: int, policy: Any, trainer_state: dict[str, Any], keep: int = 0) -> Path:
    """Write `checkpoint-<step>/` (its `sharded/` folder, if any, is already there) and its manifest, point
    `latest` at it, then delete all but the newest `keep` checkpoints (0 keeps every one), checkpoint-0 excepted."""
    root = Path(output_dir)
    path = checkpoint_path(root, step)
    path.mkdir(parents=True, exist_ok=True)
    (path / MANIFEST).unlink(missing_ok=True)  # a folder left by a save that did not finish is rewritten
    policy.save_pretrained(path / "policy")
    _replace(path / TRAINER_STATE, lambda tmp: torch.save(trainer_state, tmp))
    write_manifest(path)
    _replace(root / LATEST, lambda tmp: tmp.write_text(path.name))
    clear_leftovers(root)
    if keep > 0:
        for old in complete_checkpoints(root)[:-keep]:
            if old.name not in ("checkpoint-0", path.name):
                doomed = old.with_name(old.name + DELETING)
                os.replace(old, doomed)  # gone from the checkpoints at once, whatever rmtree then manages
                shutil.rmtree(doomed)
    return path


def clear_leftovers(output_dir: str | Path) -> None:
    """Remove what killed saves and deletes leave: `*.tmp` files, folders retention had begun to delete,
    and checkpoint folders holding no file at all."""
    root = Path(output_dir)
    for tmp in [*root.glob("*.tmp"), *root.glob("checkpoint-*/**/*.tmp")]:
        if tmp.is_file():
            tmp.unlink()
    for folder in root.glob("checkpoint-*"):
        if folder.name.endswith(DELETING) and folder.is_dir():
            shutil.rmtree(folder)
        elif _step(folder) is not None and not any(f.is_file() for f in folder.rglob("*")):
            shutil.rmtree(folder)


def _pointer(root: Path) -> tuple[Path | None, str | None]:
    """The checkpoint `latest` names, or why it names none this run can use."""
    pointer = root / LATEST
    if not pointer.exists():
        return None, "is missing"
    try:
        name = pointer.read_bytes().decode("utf-8").strip()
    except IsADirectoryError:
        return None, "is a directory, not a file naming a checkpoint"
    except UnicodeDecodeError:
        return None, "is not UTF-8 text"
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror})"
    if _NAME.fullmatch(name) is None:
        return None, f"names {name!r}, not a checkpoint-<step> folder of this run"
    return root / name, None


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint `latest` points at if it verifies; else (with a warning naming each one skipped and
    why) the newest complete checkpoint that verifies; None where there is none."""
    root = Path(output_dir)
    named, why = _pointer(root)
    complete = complete_checkpoints(root)
    verify = any((p / MANIFEST).is_file() for p in complete)  # False: all saved before checkpoints had a manifest
    candidates = ([named] if named is not None else []) + [p for p in reversed(complete) if p != named]
    for path in candidates:
        problem = checkpoint_problem(path) if verify else (None if (path / TRAINER_STATE).is_file() else "it has no trainer state")
        if problem is None:
            if why is not None and complete:
                warnings.warn(f"{root / LATEST} {why}; resuming from the newest complete one, {path.name}", stacklevel=2)
            return path
        warnings.warn(f"skipping checkpoint {path}: {problem}", stacklevel=2)
        why = f"names {named.name}, which was skipped" if path == named else why
    return None


def load_trainer_state(path: Path) -> dict[str, Any]:
    return torch.load(path / TRAINER_STATE, weights_only=False)


def resume_latest(output_dir: str | Path, policy: Any, opt: Any, sched: Any, g: torch.Generator) -> int:
    """Load a one-process loop's latest checkpoint in `output_dir` (SFT's, REDI's: weights, optimizer, schedule
    and the batch sampler's generator) into `policy`, `opt`, `sched` and `g`; its step, 0 where there is none."""
    path = latest_checkpoint(output_dir)
    if path is None:
        return 0
    state = load_trainer_state(path)
    if lora.is_adapted(policy.model):
        lora.load_adapter(policy.model, path / "policy")
    else:
        saved = Policy.from_pretrained(str(path / "policy"), device=str(policy.device), dtype=policy.dtype)
        policy.model.load_state_dict(saved.model.state_dict())
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    g.set_state(state["sampler"])
    return int(state["step"])
