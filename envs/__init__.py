"""Text environments for LLM policies, and the tasks they pose.

Names load on first use (PEP 562): `import thinkgym` registers every environment id through
`envs.registration`, which needs only Gymnasium, so importing thinkgym (or `thinkgym.rewards`) does
not load transformers or any environment until one is used.
"""

from __future__ import annotations

from thinkgym.lazy import lazy_attributes

_HOME = {
    "LLMText": "core", "TextEnv": "core", "TokenAction": "core", "DelethinkEnv": "delethink", "ReasoningEnv": "reasoning",
    "ENV_SPECS": "registration", "Problem": "tasks", "Task": "tasks", "Verdict": "tasks", "make_task": "tasks",
    "register_task": "tasks", "builtin_tokenizer": "tokenizer", "resolve_tokenizer": "tokenizer",
}
__all__ = sorted(_HOME)


__getattr__ = lazy_attributes(__name__, _HOME)
