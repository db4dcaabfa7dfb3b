"""Big-number arithmetic: a sum of signed products of long integers, where running code pays.

By hand the work is a long multiplication per term and every digit is a chance to slip; one line
of Python gets it exactly. So it is the default task of `CodeInterpreter-v0`: a policy that learns
to call the interpreter wins. `digits` (per operand) and `n_terms` (products) set the difficulty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thinkgym.rewards.math import math_equal

from .base import Problem, Task, check_positive, finish


@dataclass(frozen=True)
class ArithmeticCodeConfig:
    digits: int = 12
    n_terms: int = 3

    def __post_init__(self) -> None:
        check_positive("digits", self.digits)
        check_positive("n_terms", self.n_terms)
        if self.digits > 100:
            raise ValueError(f"digits must be <= 100; got {self.digits}")


class ArithmeticCodeTask(Task):
    name = "arithmetic_code"

    def __init__(self, **kwargs) -> None:
        self.config = ArithmeticCodeConfig(**kwargs)

    def _expression(self, seed: int) -> str:
        """`a × b + c × d − ...` with operands of exactly `digits` digits (first sign always +)."""
        rng = np.random.default_rng(seed)
        n = self.config.digits

        def operand() -> str:
            return str(int(rng.integers(1, 10))) + "".join(map(str, rng.integers(0, 10, size=n - 1)))

        parts = []
        for i in range(self.config.n_terms):
            sign = "" if i == 0 else (" + " if rng.integers(0, 2) else " - ")
            parts.append(f"{sign}{operand()} × {operand()}")
        return "".join(parts)

    def sample(self, seed: int) -> Problem:
        expr = self._expression(seed)
        return Problem(f"Compute {expr}.", str(eval(expr.replace("×", "*"))), seed,  # noqa: S307 (our own digits)
                       {"digits": self.config.digits, "n_terms": self.config.n_terms})

    def answers_match(self, pred: str, gold: str) -> bool:
        return math_equal(pred, gold)

    def demonstration(self, seed: int) -> str:
        """A trace that writes one python block, reads its output (inserted by the env), answers."""
        expr = self._expression(seed)
        value = eval(expr.replace("×", "*"))  # noqa: S307
        return finish(f"Multiplying these by hand is long and error-prone; python does it exactly.\n"
                      f"```python\nprint({expr.replace('×', '*')})\n```\n"
                      f"The interpreter printed the value, so the result is {value}.\n", str(value))
