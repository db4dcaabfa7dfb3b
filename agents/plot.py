"""`thinkgym plot RUN_DIR`: PNG curves from a run's TensorBoard event files.

One panel per quantity a GRPO run is judged by (reward and its components, held-out accuracy, loss, entropy,
grad norm, KL, clip fraction, learning rate, length, Delethink's chunks and carryover), drawn where the run
logged it, then one panel per tag asked for with `tags` (names or shell patterns: `rewards/*`). Each curve is
an exponential moving average (`smooth`, TensorBoard's smoothing weight) over its raw values, drawn faint,
except held-out evaluations (`eval/*`): each point is already a mean over the evaluation's prompts.
"""

from __future__ import annotations

import fnmatch
import io
from pathlib import Path
from typing import Sequence

import matplotlib
from PIL import Image

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

PANELS: list[tuple[str, list[str]]] = [
    ("reward", ["reward"]), ("reward components", ["rewards/*/mean"]), ("held-out accuracy", ["eval/accuracy", "eval/pass@*"]),
    ("loss", ["loss"]), ("entropy", ["entropy"]), ("grad norm", ["grad_norm"]), ("KL to the reference", ["kl"]),
    ("clip fraction", ["clip_ratio/region_mean", "clip_ratio/low_mean", "clip_ratio/high_mean"]), ("learning rate", ["learning_rate"]),
    ("length (tokens)", ["completions/mean_length"]), ("Delethink chunks", ["delethink/chunks_mean"]),
    ("resets whose carryover held the state", ["delethink/carried_state_mean"])]
COLUMNS = 4


def read_scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of every event file under `run_dir`, as (step, value) pairs."""
    out: dict[str, list[tuple[int, float]]] = {}
    for f in sorted(Path(run_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {k: sorted(v) for k, v in out.items()}


def ema(values: Sequence[float], smooth: float) -> list[float]:
    """The exponential moving average with TensorBoard's smoothing weight: s_t = smooth·s_{t-1} + (1 − smooth)·v_t,
    from s_0 = v_0 (0 leaves the values as they are)."""
    out: list[float] = []
    for v in values:
        out.append(float(v) if not out else smooth * out[-1] + (1.0 - smooth) * float(v))
    return out


def matching(patterns: Sequence[str], tags: Sequence[str]) -> list[str]:
    """The tags each pattern names (a tag or a shell pattern), in pattern order, each once."""
    out: list[str] = []
    for p in patterns:
        out += [t for t in sorted(fnmatch.filter(tags, p)) if t not in out]
    return out


def plot_run(run_dir: str | Path, out: str | Path | None = None, smooth: float = 0.6, tags: Sequence[str] = ()) -> Path:
    """Draw the run's panels into one PNG; returns its path (default RUN_DIR/curves.png). Curves hold few colours:
    a 256-colour palette looks the same at about a third of the size (under 100 KB for the demo's), small enough to commit."""
    fig = run_figure(run_dir, smooth, tags)
    path = Path(out) if out else Path(run_dir) / "curves.png"
    drawn = io.BytesIO()
    fig.savefig(drawn, format="png", dpi=100)
    plt.close(fig)
    Image.open(drawn).convert("RGB").quantize(256).save(path, optimize=True)
    return path


def run_figure(run_dir: str | Path, smooth: float = 0.6, tags: Sequence[str] = ()) -> plt.Figure:
    """The run's panels (see the module docstring), one axes each, titled; the smoothed curve of a tag is labelled with it."""
    if not 0.0 <= smooth < 1.0:
        raise ValueError(f"smooth={smooth}: the smoothing weight must be in [0, 1) (0 draws the raw values)")
    scalars = read_scalars(run_dir)
    if not scalars:
        raise ValueError(f"no TensorBoard scalars found under {run_dir}")
    unknown = [t for t in tags if not fnmatch.filter(scalars, t)]
    if unknown:
        raise ValueError(f"tags {unknown} match no scalar of {run_dir}; its tags: {sorted(scalars)}")
    panels = [(title, matching(patterns, list(scalars))) for title, patterns in PANELS]
    panels = [(title, found) for title, found in panels if found] + [(t, [t]) for t in matching(tags, list(scalars))]
    rows = -(-len(panels) // COLUMNS)
    fig, axes = plt.subplots(rows, min(COLUMNS, len(panels)), figsize=(4 * min(COLUMNS, len(panels)), 3.2 * rows), squeeze=False)
    for ax, (title, found) in zip(axes.flat, panels):
        for k, tag in enumerate(found):
            steps, values = zip(*scalars[tag])
            color, weight = f"C{k}", 0.0 if tag.startswith("eval/") else smooth  # an evaluation is already a mean over prompts
            if weight and len(values) > 1:
                ax.plot(steps, values, color=color, alpha=0.25, linewidth=1)
            ax.plot(steps, ema(values, weight), color=color, marker="o" if len(steps) < 20 else None, markersize=3, label=tag)
        if len(found) > 1:
            ax.legend(fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{Path(run_dir).name}" + (f" (EMA smoothing {smooth:g}, raw values faint)" if smooth else ""), fontsize=11)
    fig.tight_layout()
    return fig
