"""Text environments for LLM policies, and the tasks they pose."""

from .core import LLMText, TextEnv, TokenAction
from .delethink import DelethinkEnv
from .reasoning import ReasoningEnv
from .registration import ENV_SPECS, register_all
from .tasks import Problem, Task, Verdict, make_task, register_task
from .tokenizer import builtin_tokenizer, resolve_tokenizer

register_all()

__all__ = [
    "DelethinkEnv", "LLMText", "Problem", "ReasoningEnv", "Task", "TextEnv", "TokenAction", "Verdict",
    "ENV_SPECS", "builtin_tokenizer", "make_task", "register_task", "resolve_tokenizer",
]
