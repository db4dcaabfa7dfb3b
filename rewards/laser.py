"""LASER-D and LASER-DE: LASER's step bonus with a target length per difficulty bucket.

A prompt's bucket comes from the accuracy of its own rollout group (K samples): acc >= 2/3 "easy",
1/3 <= acc < 2/3 "medium", acc < 1/3 "hard". The targets L_A(d) are recomputed from a monitor set
every `monitor_every` steps with the coverage rule:
    P(l, d)   = fraction of *all* monitor responses in bucket d with length <= l
    ECR(d, l) = P(l, d) · |C_d|, |C_d| = fewest correct answers the bucket implies
                (floor: ⌊2K/3⌋, ⌊K/3⌋, 1 — the code's default, which also floors ECR;
                 ceil: ⌈2K/3⌉, ⌈K/3⌉, 1 — the paper's 6/3/1 at K=8)
    L_A(d)    = smallest l in {target_length, +interval, ..., max_length} with ECR >= expected_correct,
                else max_length.
A bucket with no monitor prompt keeps its target. Before the first pass every bucket uses `target_length`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import Reward, Sample, check_length, group_indices
from .format import has_repetition_loop
from .registry import register_reward

BUCKETS = ("easy", "medium", "hard")


def difficulty_bucket(n_correct: int, k: int) -> str:
    """The bucket of a prompt with `n_correct` of `k` rollouts correct (exact integer thresholds)."""
    if k <= 0 or not 0 <= n_correct <= k:
        raise ValueError(f"need 0 <= n_correct <= k and k > 0; got n_correct={n_correct}, k={k}")
    if 3 * n_correct >= 2 * k:
        return "easy"
    return "medium" if 3 * n_correct >= k else "hard"


@register_reward("laser_d")
class LaserD(Reward):
    """S = 1 for a correct answer no longer than its bucket's target L_A, else 0 (weight it by α)."""

    stateful = True
    bounds = ((0.0, 1.0), (0.0, 0.0))

    def __init__(self, target_length: int = 4096, max_length: int = 16384, interval: int = 1024,
                 monitor_every: int = 20, expected_correct: int = 1, round_method: str = "floor"):
        for name, value in (("target_length", target_length), ("max_length", max_length), ("interval", interval)):
            check_length(name, value)
        for name, value in (("monitor_every", monitor_every), ("expected_correct", expected_correct)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if max_length < target_length:
            raise ValueError(f"max_length ({max_length}) must be >= target_length ({target_length})")
        if round_method not in ("floor", "ceil"):
            raise ValueError(f"round_method must be 'floor' or 'ceil'; got {round_method!r}")
        self.target_length, self.max_length, self.interval = target_length, max_length, interval
        self.monitor_every, self.expected_correct, self.round_method = monitor_every, expected_correct, round_method
        self.targets = {b: target_length for b in BUCKETS}
        self.coverage = {b: float("nan") for b in BUCKETS}
        self.steps = 0

    def _target_of_each(self, samples: Sequence[Sample]) -> list[int]:
        targets = [0] * len(samples)
        for idx in group_indices(samples).values():
            bucket = difficulty_bucket(sum(samples[i].is_correct for i in idx), len(idx))
            for i in idx:
                targets[i] = self.targets[bucket]
        return targets

    def __call__(self, samples: Sequence[Sample]) -> list[float]:
        return [float(s.is_correct and s.num_tokens <= t) for s, t in zip(samples, self._target_of_each(samples))]

    @property
    def monitor_due(self) -> bool:
        """Whether the next `update` recomputes the targets (so the trainer rolls out the monitor set)."""
        return self.steps % self.monitor_every == 0

    def update(self, samples: Sequence[Sample], monitor: Sequence[Sample] | None = None) -> None:
        """One training step: on monitor steps, recompute the targets from the monitor rollouts
        (the paper's 500 fixed training prompts), or from this step's samples when none are given."""
        if self.monitor_due:
            self.recompute_targets(samples if monitor is None else monitor)
        self.steps += 1

    def _min_correct(self, bucket: str, k: int) -> int:
        if bucket == "hard":
            return 1
        num = 2 * k if bucket == "easy" else k
        return num // 3 if self.round_method == "floor" else -(-num // 3)

    def recompute_targets(self, samples: Sequence[Sample]) -> None:
        """The coverage rule above, over the monitor samples grouped by prompt."""
        lengths: dict[str, list[int]] = {b: [] for b in BUCKETS}
        groups = group_indices(samples)
        k = max((len(idx) for idx in groups.values()), default=0)
        for idx in groups.values():
            bucket = difficulty_bucket(sum(samples[i].is_correct for i in idx), len(idx))
            lengths[bucket].extend(samples[i].num_tokens for i in idx)
        grid = range(self.target_length, self.max_length + 1, self.interval)
        for bucket, ls in lengths.items():
            if not ls:
                continue
            c_d, n = self._min_correct(bucket, k), len(ls)
            chosen = self.max_length
            for limit in grid:
                covered = sum(length <= limit for length in ls)
                ecr = (covered * c_d) // n if self.round_method == "floor" else covered * c_d / n
                if ecr >= self.expected_correct:
                    chosen = limit
                    break
            self.targets[bucket] = chosen
            self.coverage[bucket] = sum(length <= chosen for length in ls) / n

    def state_dict(self) -> dict[str, Any]:
        return {"targets": dict(self.targets), "coverage": dict(self.coverage), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.targets = {b: int(state["targets"][b]) for b in BUCKETS}
        self.coverage = {b: float(state["coverage"][b]) for b in BUCKETS}
        self.steps = int(state["steps"])

    def metrics(self) -> dict[str, float]:
        out = {f"target_{b}": float(t) for b, t in self.targets.items()}
        out.update({f"coverage_{b}": c for b, c in self.coverage.items() if c == c})  # NaN: not monitored yet
        return out


@register_reward("laser_de")
class LaserDE(LaserD):
    """LASER-D plus exploration: a wrong (but answered) response longer than its target, not stuck in
    a repetition loop, also scores 1 — with weight 0.5 on LASER's base score, −0.5 becomes 0."""

    bounds = ((0.0, 1.0), (0.0, 1.0))
    requires_dominance = True

    def __call__(self, samples: Sequence[Sample]) -> list[float]:
        out = []
        for s, t in zip(samples, self._target_of_each(samples)):
            if s.is_correct:
                out.append(float(s.num_tokens <= t))
            else:
                explores = not s.format_error and s.num_tokens > t and not has_repetition_loop(s.text)
                out.append(float(explores))
        return out
