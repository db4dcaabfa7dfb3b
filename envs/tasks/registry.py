"""Tasks by name: `register_task` adds one (once), `make_task` builds one from its name and knobs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import Task

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
