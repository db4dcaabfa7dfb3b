"""The task interface: a prompt and a verifier, both pure functions of a seed.

A task is what an environment asks; the environment decides how the policy answers (one shot,
in chunks, with tools). Tasks follow reasoning-gym's shape: a config dataclass that validates
itself, and a generator that is a pure function of the seed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from thinkgym.rewards.math import THINK_CLOSE, extract_answer


@dataclass(frozen=True)
class Problem:
    """One task instance. `difficulty` holds the knobs that made it (logged by the agent)."""

    prompt: str
    answer: str
    seed: int
    difficulty: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """The score of a response, its parsed answer, and whether it was malformed."""

    score: float
    answer: str | None
    format_error: bool

    @property
    def correct(self) -> bool:
        return self.score >= 1.0


class Task(ABC):
    """A family of problems. Subclasses set `name` and implement the three methods."""

    name: str = "task"

    @abstractmethod
    def sample(self, seed: int) -> Problem:
        """The problem for `seed`: the same seed gives the same problem in any process."""

    def verify(self, problem: Problem, text: str) -> Verdict:
        """Score a response: the last `\\boxed{}` after `</think>` against the gold answer."""
        ans = extract_answer(text)
        if ans is None:
            return Verdict(0.0, None, True)
        return Verdict(float(self.answers_match(ans, problem.answer)), ans, False)

    def answers_match(self, pred: str, gold: str) -> bool:
        return pred.strip() == gold.strip()

    def holds_state(self, problem: Problem, text: str) -> bool | None:
        """Whether `text` (a Delethink carryover) restates the true state of the work on `problem`,
        enough to go on without what came before; None for a task with no such notion."""
        return None

    @abstractmethod
    def demonstration(self, seed: int) -> str:
        """A correct worked response for `seed`, ending in `</think>` and a boxed answer."""


def finish(trace: str, answer: str) -> str:
    """Close a thinking trace with the boxed answer, as every built-in demonstration does."""
    return f"{trace}{THINK_CLOSE}\\boxed{{{answer}}}"


def check_positive(name: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")


def check_share(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1]; got {value!r}")
