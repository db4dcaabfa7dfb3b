"""Where a run's metrics go: TensorBoard (the default, and what `thinkgym plot` reads), and optionally
Weights & Biases or Trackio, named as TRL's `report_to` names them.

`Trackers` is a writer with SummaryWriter's methods (`add_scalar`, `add_text`, `flush`, `close`) that sends
every scalar, under the same name, to each tracker asked for. wandb and trackio are not dependencies of
thinkgym: they are imported only when asked for, and a missing one is a one-line error naming the pip
command. As transformers' callbacks do, they receive each step's scalars in one `log` call with the step
as `train/global_step` (W&B is told to plot against it), so a warm start's SFT steps followed by RL's
step 0 need no rising step counter. Text samples go to TensorBoard only.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Any

from torch.utils.tensorboard import SummaryWriter

REPORT_TO = ("tensorboard", "wandb", "trackio")
STEP = "train/global_step"  # transformers' name for the step the other trackers plot against


def parse_report_to(text: str) -> list[str]:
    """`report_to` as tracker names (comma-separated, each once), or a one-line error: an unknown name, or
    an optional tracker that is not installed."""
    names = list(dict.fromkeys(n.strip() for n in str(text).split(",") if n.strip()))
    unknown = [n for n in names if n not in REPORT_TO]
    if not names or unknown:
        raise ValueError(f"report_to={text!r}: unknown tracker {unknown or text!r}; valid: {', '.join(REPORT_TO)}, "
                         "comma-separated (e.g. 'tensorboard,wandb')")
    for name in names:
        if name != "tensorboard":
            tracker_module(name)
    return names


def tracker_module(name: str) -> ModuleType:
    """The optional tracker's package, imported now, or a one-line error saying how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ValueError(f"report_to={name!r} needs the {name} package, which is not installed: pip install {name}") from None


class Trackers:
    """A SummaryWriter-like writer over every tracker in `report_to`; `config` is recorded as the run's settings."""

    def __init__(self, log_dir: str | Path, report_to: str = "tensorboard", config: dict[str, Any] | None = None):
        names = parse_report_to(report_to)
        self.tensorboard = SummaryWriter(str(log_dir)) if "tensorboard" in names else None
        self.runs = [self._start(tracker_module(n), n, Path(log_dir).name, config or {}) for n in names if n != "tensorboard"]
        self._step: int | None = None
        self._pending: dict[str, float] = {}

    @staticmethod
    def _start(module: ModuleType, name: str, run_name: str, config: dict[str, Any]) -> Any:
        run = module.init(project=os.environ.get(f"{name.upper()}_PROJECT", "thinkgym"), name=run_name, config=config)
        if hasattr(run, "define_metric"):  # W&B: plot every metric against the logged step, as transformers does
            run.define_metric(STEP)
            run.define_metric("*", step_metric=STEP, step_sync=True)
        return run

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        if self.tensorboard is not None:
            self.tensorboard.add_scalar(tag, value, step)
        if self.runs:
            if step != self._step:
                self._send()
            self._step = step
            self._pending[tag] = float(value)

    def add_text(self, tag: str, text: str, step: int) -> None:
        if self.tensorboard is not None:
            self.tensorboard.add_text(tag, text, step)

    def _send(self) -> None:
        """One `log` call per tracker with the scalars gathered for the current step."""
        if self._pending:
            for run in self.runs:
                run.log({**self._pending, STEP: self._step})
        self._pending = {}

    def flush(self) -> None:
        self._send()
        if self.tensorboard is not None:
            self.tensorboard.flush()

    def close(self) -> None:
        """Send what is left and end every tracker's run."""
        self.flush()
        for run in self.runs:
            run.finish()
        self.runs = []
        if self.tensorboard is not None:
            self.tensorboard.close()

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
