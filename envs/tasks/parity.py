"""Parity: is the number of ones in a bit string odd? One line per bit, carrying the state.

Each line is `p^b=q|rest`: the parity so far, the next bit, the new parity and the bits still
to read, so the worked solution is a chain of local steps. Without them the answer is a global
function of every bit that small models do not learn: guessing it is right half the time. That makes the task a clean case of a shortcut
that works only by luck; `no_think` puts such unworked answers into the demonstrations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Problem, Task, check_positive, check_share, finish


@dataclass(frozen=True)
class ParityConfig:
    n_bits: int = 12
    no_think: float = 0.0
    """Share of demonstrations that close the think block at once and box the answer unworked: a
    policy trained on them sometimes guesses (the adaptive-thinking rewards and REDI act on that)."""

    def __post_init__(self) -> None:
        check_positive("n_bits", self.n_bits)
        check_share("no_think", self.no_think)


class ParityTask(Task):
    name = "parity"

    def __init__(self, **kwargs) -> None:
        self.config = ParityConfig(**kwargs)

    def _bits(self, seed: int) -> str:
        return "".join(map(str, np.random.default_rng(seed).integers(0, 2, size=self.config.n_bits)))

    def sample(self, seed: int) -> Problem:
        bits = self._bits(seed)
        prompt = f"Parity of {bits}: 1 if it has an odd number of ones, else 0.\n"
        return Problem(prompt, str(bits.count("1") % 2), seed, {"n_bits": self.config.n_bits})

    def demonstration(self, seed: int) -> str:
        bits = self._bits(seed)
        answer = str(bits.count("1") % 2)
        if np.random.default_rng([seed, 1]).random() < self.config.no_think:
            return finish("", answer)
        lines, p = [f"0|{bits}"], 0
        for i, b in enumerate(bits, start=1):
            lines.append(f"{p}^{b}={p ^ int(b)}|{bits[i:]}")
            p ^= int(b)
        return finish("\n".join(lines) + "\n", answer)
