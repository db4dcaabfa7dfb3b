"""Tasks by name. `make_task("running_sum", n_terms=20)`; `register_task` adds your own."""

from __future__ import annotations

from .arithmetic_code import ArithmeticCodeTask
from .base import Problem, Task, Verdict
from .long_addition import LongAdditionTask
from .masked_step import MaskedStepTask
from .math_dataset import MathDatasetTask
from .parity import ParityTask
from .registry import TASKS, make_task, register_task
from .running_sum import RunningSumTask
from .sat import SATTask
from .step_reorder import StepReorderTask
from .text2sql import Text2SQLTask

for _cls in (RunningSumTask, LongAdditionTask, ParityTask, MathDatasetTask, SATTask, Text2SQLTask, ArithmeticCodeTask,
             MaskedStepTask, StepReorderTask):
    register_task(_cls.name, _cls)

__all__ = ["Problem", "Task", "Verdict", "TASKS", "make_task", "register_task"]
