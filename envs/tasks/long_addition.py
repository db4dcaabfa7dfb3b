"""Long addition of two numbers, column by column with the carry written out.

The trace has one line per column, so its length grows with `digits`, the difficulty knob.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Problem, Task, check_positive, finish


@dataclass(frozen=True)
class LongAdditionConfig:
    digits: int = 8

    def __post_init__(self) -> None:
        check_positive("digits", self.digits)
        if self.digits > 200:
            raise ValueError(f"digits must be <= 200; got {self.digits}")


class LongAdditionTask(Task):
    name = "long_addition"

    def __init__(self, **kwargs) -> None:
        self.config = LongAdditionConfig(**kwargs)

    def _operands(self, seed: int) -> tuple[str, str]:
        rng = np.random.default_rng(seed)
        n = self.config.digits
        a, b = (str(int(rng.integers(1, 10))) + "".join(map(str, rng.integers(0, 10, size=n - 1))) for _ in range(2))
        return a, b

    def sample(self, seed: int) -> Problem:
        a, b = self._operands(seed)
        return Problem(f"Compute {a} + {b}.\n", str(int(a) + int(b)), seed, {"digits": self.config.digits})

    def demonstration(self, seed: int) -> str:
        a, b = self._operands(seed)
        carry, out, lines = 0, [], []
        for i, (x, y) in enumerate(zip(reversed(a), reversed(b)), start=1):
            s = int(x) + int(y) + carry
            lines.append(f"col {i}: {x}+{y}+{carry}={s}, write {s % 10}, carry {s // 10}")
            out.append(str(s % 10))
            carry = s // 10
        if carry:
            out.append(str(carry))
        total = "".join(reversed(out))
        return finish("\n".join(lines) + "\n", total)
