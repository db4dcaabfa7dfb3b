"""SIRI's schedule of the maximum rollout length over training steps.

SIRI alternates compression (the budget falls to L_min) and expansion (it rises back to L_max) with
period T steps; the trainer feeds L(t) to the environments as their budget (`max_new_tokens`, or
Delethink's chunk budget). With phase φ = 2π (t mod T)/T and mid = (L_max+L_min)/2, amp = (L_max−L_min)/2:
    cosine:       L = mid + amp·cos φ  (L_max at t=0, L_min at T/2, L_max again at T)
    stair:        L_min for the first half of each cycle (compression), L_max for the second (expansion)
    stair-cosine: L_max for φ < π/4 or φ >= 7π/4; L_min for 3π/4 <= φ < 5π/4; in between
                  mid + amp·cos(2(φ − π/4)) falling, mid + amp·cos(2(φ − 3π/4)) rising.
The paper gives the stair shape only as "L_max during expansion, L_min during compression"; we put
compression first, where the cosine shape has it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .base import check_length

SHAPES = ("cosine", "stair", "stair_cosine")


@dataclass(frozen=True)
class SiriSchedule:
    """`schedule(step)` = the max rollout length (tokens) at training step `step` (from 0)."""

    l_min: int = 8192
    l_max: int = 16384
    period: int = 640
    shape: str = "cosine"

    def __post_init__(self) -> None:
        check_length("l_min", self.l_min)
        check_length("l_max", self.l_max)
        if self.l_min > self.l_max:
            raise ValueError(f"l_min ({self.l_min}) must not exceed l_max ({self.l_max})")
        if isinstance(self.period, bool) or not isinstance(self.period, int) or self.period < 2:
            raise ValueError(f"period must be an integer number of steps >= 2; got {self.period!r}")
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}; got {self.shape!r}")

    def __call__(self, step: int) -> int:
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative integer; got {step!r}")
        t = step % self.period
        mid, amp = (self.l_max + self.l_min) / 2, (self.l_max - self.l_min) / 2
        phi = 2 * math.pi * t / self.period
        if self.shape == "cosine":
            value = mid + amp * math.cos(phi)
        elif self.shape == "stair":
            value = self.l_min if 2 * t < self.period else self.l_max
        elif phi < math.pi / 4 or phi >= 7 * math.pi / 4:
            value = self.l_max
        elif phi < 3 * math.pi / 4:
            value = mid + amp * math.cos(2 * (phi - math.pi / 4))
        elif phi < 5 * math.pi / 4:
            value = self.l_min
        else:
            value = mid + amp * math.cos(2 * (phi - 3 * math.pi / 4))
        return int(round(value))


def delethink_max_chunks(budget: int, chunk_size: int, carryover: int) -> int:
    """The most chunks I whose thinking budget C + (I − 1)(C − m) fits in `budget` (at least 1),
    so a scheduled length L(t) can drive Delethink's iteration cap."""
    for name, value in (("budget", budget), ("chunk_size", chunk_size), ("carryover", carryover)):
        check_length(name, value)
    if carryover >= chunk_size:
        raise ValueError(f"carryover ({carryover}) must be smaller than chunk_size ({chunk_size})")
    return max(1, 1 + (budget - chunk_size) // (chunk_size - carryover))
