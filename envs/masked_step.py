"""MaskedStep-v0: the environment of the `masked_step` task (envs/tasks/masked_step.py, where the task's design
choices are written down)."""

from __future__ import annotations

from typing import Any

from .reasoning import ReasoningEnv, split_task_kwargs
from .tasks.masked_step import MaskedStepConfig, MaskedStepTask


class MaskedStepEnv(ReasoningEnv):
    """Fill the masked pieces of a worked solution; defaults run offline on `running_sum`.

    The task is `masked_step`; its knobs (see `MaskedStepConfig`: source, source_kwargs, path, fields,
    split, mask, n_masked, text_score) go in `task_kwargs` or as keyword arguments (`mask="step"`).
    Which task's solutions are masked is the `source` knob. Other keyword arguments go to `ReasoningEnv`.
    """

    task_type = MaskedStepTask

    def __init__(self, task: str | MaskedStepTask = "masked_step", task_kwargs: dict[str, Any] | None = None,
                 **kwargs: Any):
        task_kwargs, kwargs = split_task_kwargs(MaskedStepConfig, task_kwargs, kwargs)
        super().__init__(task, task_kwargs, **kwargs)
