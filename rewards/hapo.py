"""HAPO: a length reward relative to each problem's history (the shortest correct length so far).

With h the history of the sample's prompt *before* this step's update and f = cos(π/2 · L/h) for
L < 2h, else −1 (f = 1 at L=0, 0 at L=h, −1 from L=2h on):
    no history yet (no correct answer seen): r = 0
    correct: r = max(f, −0.7)      wrong: r = min(f, 0)
The linear variant: correct 1 − L/h below h, 0 up to 1.1h, then max(−0.7, −(L − 1.1h)/h); wrong 0
below 1.1h, then max(−1, −(L − 1.1h)/h). The paper's reward is `correctness + w*hapo` with w in
[0, 1], so any correct answer (>= 1 − 0.7w > 0) beats any wrong one (<= 0); a spec enforces that.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

from .base import Reward, Sample, group_indices
from .registry import register_reward


def hapo_length_reward(length: int, history: float | None, correct: bool, shape: str = "cosine") -> float:
    """The formula above for one response; `history` None means no correct answer seen yet."""
    if history is None:
        return 0.0
    h = max(float(history), 1.0)  # a zero-token correct answer would make L/h undefined
    if shape == "cosine":
        f = math.cos(math.pi / 2 * length / h) if length < 2 * h else -1.0
        return max(f, -0.7) if correct else min(f, 0.0)
    over = -(length - 1.1 * h) / h
    if correct:
        return 1.0 - length / h if length < h else (0.0 if length < 1.1 * h else max(-0.7, over))
    return 0.0 if length < 1.1 * h else max(-1.0, over)


@register_reward("hapo")
class Hapo(Reward):
    """HAPO's history-aware length term; `update` folds in each step's correct lengths."""

    name = "hapo"
    stateful = True
    requires_dominance = True
    bounds = ((-0.7, 1.0), (-1.0, 0.0))

    def __init__(self, shape: str = "cosine"):
        if shape not in ("cosine", "linear"):
            raise ValueError(f"hapo shape must be 'cosine' or 'linear'; got {shape!r}")
        self.shape = shape
        self.history: dict[Hashable, int] = {}

    def __call__(self, samples: Sequence[Sample]) -> list[float]:
        return [hapo_length_reward(s.num_tokens, self.history.get(s.prompt_id), s.is_correct, self.shape)
                for s in samples]

    def update(self, samples: Sequence[Sample], monitor: Sequence[Sample] | None = None) -> None:
        """h ← min(h, shortest correct length of this step), per prompt."""
        for pid, idx in group_indices(samples).items():
            correct = [samples[i].num_tokens for i in idx if samples[i].is_correct]
            if correct:
                best = min(correct)
                self.history[pid] = min(self.history.get(pid, best), best)

    def check_weights(self, weights: dict[str, float]) -> None:
        if "correctness" not in weights:
            raise ValueError("hapo is a term on top of correctness: write e.g. 'correctness + 1.0*hapo'")
        w, wc = weights[self.name], weights["correctness"]
        if not 0.0 <= w <= wc:
            raise ValueError(f"hapo's weight must be in [0, correctness weight] = [0, {wc:g}] so that correct answers "
                             f"always beat wrong ones (HAPO's w in [0, 1]); got {w:g}")

    def state_dict(self) -> dict[str, Any]:
        # pairs, not a dict: prompt ids keep their type (int vs str) through JSON or torch.save
        return {"history": [[pid, h] for pid, h in self.history.items()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = {(tuple(pid) if isinstance(pid, list) else pid): int(h) for pid, h in state["history"]}

    def metrics(self) -> dict[str, float]:
        n = len(self.history)
        out = {"problems_with_history": float(n)}
        if n:
            out["history_mean"] = sum(self.history.values()) / n
        return out
