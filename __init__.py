"""thinkgym: reasoning tasks as text Gymnasium environments, and a GRPO agent that trains on them.

`import thinkgym` registers every environment id with Gymnasium, so `gym.make("Delethink-v0")`
works; `gym.make("thinkgym:Delethink-v0")` imports it for you. The subpackages (`envs`, `rewards`,
`agents`, `integrations`) load on first use, so `import thinkgym.rewards` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from .envs.registration import ENV_SPECS, register_all

register_all()

__version__ = "0.1.0"
ENV_IDS = [spec[0] for spec in ENV_SPECS]

__all__ = ["ENV_IDS", "__version__", "agents", "envs", "integrations", "rewards"]


def __getattr__(name: str) -> Any:
    if name in ("envs", "rewards", "agents", "integrations"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
