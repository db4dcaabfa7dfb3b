"""`Registry`: names to objects, the one shape of every thinkgym registry (tasks, rewards, losses, advantage
estimators, engines).

A name registers once: a second registration is refused rather than silently replacing the first (which would
make a run's meaning depend on import order). An unknown name is a one-line error listing the valid ones.
This module imports nothing of thinkgym's, so every layer (rewards at the bottom included) can use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, overload

T = TypeVar("T")


class Registry(Generic[T]):
    """Objects by name. `kind` names what is registered in errors, as its config field does (`loss_type`)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T) -> T: ...

    def register(self, name, obj=None):
        """`register(name, obj)`, or `@register(name)` above a function or class; returns `obj` unchanged."""
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered; registered: {self.names()}")
        if obj is None:
            def deco(target: T) -> T:
                return self.register(name, target)
            return deco
        self._items[name] = obj
        return obj

    def get(self, name: str) -> T:
        """The object registered as `name`; a ValueError listing the valid names if there is none."""
        if name not in self._items:
            raise ValueError(f"{self.kind}={name!r} is unknown; valid names: {self.names()}")
        return self._items[name]

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
