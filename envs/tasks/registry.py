"""Tasks by name: `register_task(name, factory)` adds one (once), `make_task` builds one from its name and knobs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from thinkgym.registry import Registry

from .base import Task

TASKS: Registry[Callable[..., Task]] = Registry("task")
register_task = TASKS.register


def make_task(task: str | Task, **kwargs: Any) -> Task:
    """A task instance from a name and its config kwargs, or the instance itself."""
    if isinstance(task, Task):
        if kwargs:
            raise ValueError(f"task knobs {sorted(kwargs)} cannot be combined with a Task instance; configure the instance")
        return task
    factory = TASKS.get(task)
    try:
        return factory(**kwargs)
    except TypeError as exc:
        raise ValueError(f"task={task!r} got bad arguments {sorted(kwargs)}: {exc}") from exc
