"""`thinkgym plot RUN_DIR`: PNG curves from a run's TensorBoard event files."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

PANELS = [("reward", "reward"), ("length (tokens)", "completions/mean_length"), ("held-out accuracy", "eval/accuracy"),
          ("Delethink chunks", "delethink/chunks_mean"), ("resets whose carryover held the state", "delethink/carried_state_mean")]


def read_scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of every event file under `run_dir`, as (step, value) pairs."""
    out: dict[str, list[tuple[int, float]]] = {}
    for f in sorted(Path(run_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {k: sorted(v) for k, v in out.items()}


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    scalars = read_scalars(run_dir)
    if not scalars:
        raise ValueError(f"no TensorBoard scalars found under {run_dir}")
    panels = [(t, k) for t, k in PANELS if k in scalars]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, (title, key) in zip(axes[0], panels):
        steps, values = zip(*scalars[key])
        ax.plot(steps, values, marker="o" if len(steps) < 20 else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(out) if out else Path(run_dir) / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
