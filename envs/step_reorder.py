"""StepReorder-v0: the environment of the `step_reorder` task (envs/tasks/step_reorder.py, where the task's design
choices are written down)."""

from __future__ import annotations

from typing import Any

from .reasoning import ReasoningEnv, split_task_kwargs
from .tasks.step_reorder import StepReorderConfig, StepReorderTask


class StepReorderEnv(ReasoningEnv):
    """Restore the order of k shuffled steps; defaults run offline on `running_sum`.

    The task is `step_reorder`; its knobs (see `StepReorderConfig`: source, source_kwargs, path, fields,
    split, k, reward) go in `task_kwargs` or as keyword arguments (`k=4`). Which task's solutions are
    shuffled is the `source` knob. Other keyword arguments go to `ReasoningEnv`.
    """

    task_type = StepReorderTask

    def __init__(self, task: str | StepReorderTask = "step_reorder", task_kwargs: dict[str, Any] | None = None,
                 **kwargs: Any):
        task_kwargs, kwargs = split_task_kwargs(StepReorderConfig, task_kwargs, kwargs)
        super().__init__(task, task_kwargs, **kwargs)
