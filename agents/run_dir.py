"""Run folders that never mix.

A fresh run refuses a folder that already holds files, unless it is told to continue the run there
(`resume`) or to replace it (`overwrite`): otherwise two runs' checkpoints and curves would interleave.
A run given no folder gets a new time-stamped one, `runs/<YYYYmmdd-HHMMSS>`, and `runs/latest` becomes
a link to it, which a resume given no folder continues.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from pathlib import Path

from . import distributed

RUNS = Path("runs")
RUN_MARKS = ("latest", "checkpoint-*", "events.out.tfevents.*")  # what every run writes at its top level


def fresh_run_dir(base: Path = RUNS) -> Path:
    """A folder name no run has used, `base/<YYYYmmdd-HHMMSS>` (with `-2`, `-3`, ... if that is taken),
    chosen by rank 0 for every rank. The run creates it, once its settings have passed their checks."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, k = base / stamp, 1
    while path.exists():
        k += 1
        path = base / f"{stamp}-{k}"
    return Path(distributed.gather(str(path))[0])


def link_latest(path: str | Path, base: Path = RUNS) -> None:
    """Point `base/latest` at the run folder `path` (rank 0, atomically)."""
    latest = base / "latest"
    if not distributed.is_main():
        return
    if latest.exists() and not latest.is_symlink():
        warnings.warn(f"{latest} is a folder (a run of an older thinkgym), not a link: it is left as it is, "
                      f"and this run is in {path}", stacklevel=2)
        return
    tmp = base / f".latest-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(os.path.relpath(Path(path).resolve(), base.resolve()), target_is_directory=True)
    os.replace(tmp, latest)


def latest_run(base: Path = RUNS) -> Path:
    """The run folder `base/latest` links to: what a resume given no folder continues."""
    latest = base / "latest"
    if not latest.is_dir():
        raise ValueError(f"there is no {latest} to resume (no run has started here without an output folder): "
                         "pass the run's folder as --output-dir")
    return base / os.readlink(latest) if latest.is_symlink() else latest


def looks_like_run(path: Path) -> bool:
    """A folder that a thinkgym run wrote: its top level, or a stage's folder in it, holds a run's files."""
    folders = [path, *(p for p in path.iterdir() if p.is_dir())]
    return any(any(d.glob(mark)) for d in folders for mark in RUN_MARKS)


def prepare_output_dir(path: str | Path, resume: bool = False, overwrite: bool = False) -> None:
    """Check, before anything is written, that a run may write into `path`: a fresh run refuses a folder
    that holds files; `overwrite` deletes the run that is there first (only a thinkgym run's folder);
    `resume` continues it. Every rank checks before any rank goes on to write; rank 0 deletes."""
    if _must_delete(Path(path), resume, overwrite) and distributed.is_main():
        shutil.rmtree(path)
    distributed.barrier()


def _must_delete(p: Path, resume: bool, overwrite: bool) -> bool:
    if resume and overwrite:
        raise ValueError("--resume continues the run in the output folder and --overwrite deletes it: pass one of them")
    if resume or not p.exists():
        return False
    if not p.is_dir():
        raise ValueError(f"output folder {str(p)!r} is a file; pass a folder as --output-dir")
    if not any(p.iterdir()):
        return False
    if not overwrite:
        raise ValueError(f"output folder {str(p)!r} already holds files (an earlier run?): pass --resume to continue "
                         "that run, --overwrite to replace it, or another --output-dir")
    if not looks_like_run(p):
        raise ValueError(f"--overwrite: {str(p)!r} holds files that no thinkgym run wrote, so they are not deleted; "
                         "pass another --output-dir")
    return True
