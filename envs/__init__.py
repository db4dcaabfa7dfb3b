"""Text environments for LLM policies, and the tasks they pose."""

from .core import LLMText, TextEnv, TokenAction
from .delethink import DelethinkEnv
from .masked_step import MaskedStepTask
from .reasoning import ReasoningEnv
from .registration import ENV_SPECS, register_all
from .step_reorder import StepReorderTask
from .tasks import Problem, Task, Verdict, make_task, register_task
from .tokenizer import builtin_tokenizer, resolve_tokenizer

# Tasks that live beside their environment (they build on solutions.py, which imports .tasks).
for _cls in (MaskedStepTask, StepReorderTask):
    register_task(_cls.name, _cls)
register_all()

__all__ = [
    "DelethinkEnv", "LLMText", "Problem", "ReasoningEnv", "Task", "TextEnv", "TokenAction", "Verdict",
    "ENV_SPECS", "builtin_tokenizer", "make_task", "register_task", "resolve_tokenizer",
]
