"""Running sum: add a list of digits, one line per step, carrying the state on every line.

Each line is `acc+d=new|rest`: the running total and the digits still to add. So any window that
holds one whole line holds the full state, which is what a Markovian thinker needs: its
reasoning length grows linearly with `n_terms`, the difficulty knob.

`restate < 1` makes the other demonstrations first label the digits (`m4 k7 n9 ...`) and then add
them in the order of their labels (`k:4+7=11`, `l:...`), which is not the prompt's order. Such a line
holds the total, but which digits are still to add is written only in the table at the start of the
trace, which a Delethink reset drops. Two shortcuts were found and closed:
- with labels `a b c ...` in the prompt's order, a policy found the next digit after a reset by
  counting the label into the prompt; the labels now run on from a letter drawn per problem;
- with labels in the prompt's order, the last few digits in the carryover locate their place in the
  prompt (an induction-head lookup), so the next digit is the one after them; the labels are now
  shuffled over the digits, so the order of addition is not the prompt's.
A policy taught on such a mix sometimes writes Markovian traces, the starting point that The
Markovian Thinker describes for off-the-shelf reasoning models.
"""

from __future__ import annotations

import re
import string
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
    """Share of demonstrations that restate the digits still to add on every line (`|rest`); the others
    label the digits once and add them by label."""

    def __post_init__(self) -> None:
        check_positive("n_terms", self.n_terms, 2)
        if not 1 <= self.max_digit <= 9:
            raise ValueError(f"max_digit must be in 1..9; got {self.max_digit!r}")
        check_share("recheck", self.recheck)
        check_share("restate", self.restate)
        if self.restate < 1 and self.n_terms > len(LABELS):
            raise ValueError(f"restate < 1 labels each digit with a letter: n_terms must be <= {len(LABELS)}; got {self.n_terms}")


LABELS = string.ascii_letters


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
        acc = digits[0]
        if np.random.default_rng([seed, 2]).random() < self.config.restate:
            lines = [f"{acc}|{''.join(map(str, digits[1:]))}"]
            step = lambda i, d: f"{acc}+{d}={acc + d}|{''.join(map(str, digits[i + 1:]))}"  # noqa: E731
        else:  # a table of shuffled labels over the prompt's digits, then one line per label, in label order
            rng = np.random.default_rng([seed, 3])
            first = int(rng.integers(len(LABELS) - len(digits) + 1))
            label = LABELS[first:first + len(digits)]
            order = rng.permutation(len(digits))  # order[j]: the prompt position that label[j] names
            name = dict(zip(order.tolist(), label))
            table = " ".join(f"{name[pos]}{d}" for pos, d in enumerate(digits))
            digits = [digits[pos] for pos in order]
            acc = digits[0]
            lines = [table, f"{label[0]}:{acc}"]
            step = lambda i, d: f"{label[i]}:{acc}+{d}={acc + d}"  # noqa: E731
        for i, d in enumerate(digits[1:], start=1):
            lines.append(step(i, d))
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
