"""`lazy_attributes`: a package's main names, imported from their modules on first use (PEP 562), so that
importing the package stays cheap (`thinkgym.envs` loads no environment, `thinkgym.agents` no learner).
This module imports nothing of thinkgym's."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_attributes(package: str, home: dict[str, str]) -> Callable[[str], Any]:
    """A module-level `__getattr__` for `package`: each name of `home` comes from its submodule `home[name]`."""
    def __getattr__(name: str) -> Any:
        if name not in home:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f".{home[name]}", package), name)
    return __getattr__
