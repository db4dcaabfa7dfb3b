"""thinkgym environments inside other trainers: `thinkgym.integrations.trl` (TRL's `GRPOTrainer`, through
`rollout_func` or `environment_factory`) and `thinkgym.integrations.verl` (verl's `AgentLoop`).

Both modules import without TRL or verl installed; what needs the trainer imports it when it is used and,
where it is missing, says which package to install (`require`). They sit above `envs` and `agents`, whose
types (`Step`, `Episode`, `episode_rows`) they reuse, so that their rows are the rows thinkgym's own learner
trains on; nothing below imports them (tests/test_layout.py).
"""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, package: str, version: str, needed_for: str) -> ModuleType:
    """Import `module`, or raise an ImportError that names `package` and the pip command that installs it
    (and, when `package` is there but one of its own imports failed, that failure)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{needed_for} needs {package} ({package}{version}), and `import {module}` failed here ({exc}). "
                          f"Install it with: pip install '{package}{version}'") from exc
