"""Running sum: add a list of digits, one line per step, carrying the state on every line.

Each line is `acc+d=new|rest`: the running total and the digits still to add. So any window that
holds one whole line holds the full state, which is what a Markovian thinker needs: its
reasoning length grows linearly with `n_terms`, the difficulty knob.

`restate < 1` makes the remaining demonstrations write `acc+d=new` instead. That line holds the
total but not where the sum stands, which only the lines before it tell: after a Delethink reset
it is lost. A policy taught on such a mix sometimes writes Markovian traces, the starting point
that The Markovian Thinker describes for off-the-shelf reasoning models.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .base import Problem, Task, check_positive, check_share, finish


@dataclass(frozen=True)
class RunningSumConfig:
    n_terms: int = 12
    max_digit: int = 9
    recheck: float = 0.0
    """Share of demonstrations that needlessly re-check every line (length-shaping experiments)."""
    restate: float = 1.0
    """Share of demonstrations that restate the digits still to add on every line (`|rest`)."""

    def __post_init__(self) -> None:
        check_positive("n_terms", self.n_terms, 2)
        if not 1 <= self.max_digit <= 9:
            raise ValueError(f"max_digit must be in 1..9; got {self.max_digit!r}")
        check_share("recheck", self.recheck)
        check_share("restate", self.restate)


# A whole restated state: the total (after `=` or a newline, so never a cut number) and the digits left, up to the newline.
_STATE_LINE = re.compile(r"[\n=](\d+)\|(\d*)\n")


class RunningSumTask(Task):
    name = "running_sum"

    def __init__(self, **kwargs) -> None:
        self.config = RunningSumConfig(**kwargs)

    def _digits(self, seed: int) -> list[int]:
        rng = np.random.default_rng(seed)
        return [int(d) for d in rng.integers(1, self.config.max_digit + 1, size=self.config.n_terms)]

    def sample(self, seed: int) -> Problem:
        digits = self._digits(seed)
        prompt = "Add: " + " ".join(map(str, digits)) + "\n"
        return Problem(prompt, str(sum(digits)), seed, {"n_terms": self.config.n_terms})

    def demonstration(self, seed: int) -> str:
        digits = self._digits(seed)
        verbose = np.random.default_rng([seed, 1]).random() < self.config.recheck
        restate = np.random.default_rng([seed, 2]).random() < self.config.restate
        rest = (lambda i: "|" + "".join(map(str, digits[i:]))) if restate else (lambda i: "")
        acc = digits[0]
        lines = [f"{acc}{rest(1)}"]
        for i, d in enumerate(digits[1:], start=2):
            lines.append(f"{acc}+{d}={acc + d}{rest(i)}")
            if verbose:
                lines.append(f"check {acc}+{d}={acc + d} ok")
            acc += d
        return finish("\n".join(lines) + "\n", str(acc))

    def holds_state(self, problem: Problem, text: str) -> bool:
        """Whether the last whole state line in `text` restates a true state: the digits still to add
        and the total of those before them. A Delethink carryover that does lets the next chunk go on
        without the lines before it."""
        states = _STATE_LINE.findall(text)
        if not states:
            return False
        total, rest = states[-1]
        digits = "".join(map(str, self._digits(problem.seed)))
        done = len(digits) - len(rest)
        return 0 < done and digits[done:] == rest and int(total) == sum(map(int, digits[:done]))
