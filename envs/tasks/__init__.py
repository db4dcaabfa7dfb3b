"""Tasks by name. `make_task("running_sum", n_terms=20)`; `register_task` adds your own."""

from __future__ import annotations

from typing import Any, Callable

from .arithmetic_code import ArithmeticCodeTask
from .base import Problem, Task, Verdict
from .long_addition import LongAdditionTask
from .math_dataset import MathDatasetTask
from .parity import ParityTask
from .running_sum import RunningSumTask
from .sat import SATTask
from .text2sql import Text2SQLTask

TASKS: dict[str, Callable[..., Task]] = {}


def register_task(name: str, factory: Callable[..., Task]) -> None:
    """Add a task by name; a name registers once (a second registration is refused, not overwritten)."""
    if name in TASKS:
        raise ValueError(f"task {name!r} is already registered; registered: {sorted(TASKS)}")
    TASKS[name] = factory


def make_task(task: str | Task, **kwargs: Any) -> Task:
    """A task instance from a name and its config kwargs, or the instance itself."""
    if isinstance(task, Task):
        if kwargs:
            raise ValueError(f"task knobs {sorted(kwargs)} cannot be combined with a Task instance; configure the instance")
        return task
    if task not in TASKS:
        raise ValueError(f"task={task!r} is unknown; known tasks: {sorted(TASKS)}")
    try:
        return TASKS[task](**kwargs)
    except TypeError as exc:
        raise ValueError(f"task={task!r} got bad arguments {sorted(kwargs)}: {exc}") from exc


# The process tasks (masked_step, step_reorder) build on envs/solutions.py, which imports this
# package, so thinkgym.envs registers them.
for _cls in (RunningSumTask, LongAdditionTask, ParityTask, MathDatasetTask, SATTask, Text2SQLTask, ArithmeticCodeTask):
    register_task(_cls.name, _cls)

__all__ = ["Problem", "Task", "Verdict", "TASKS", "make_task", "register_task"]
