"""Adaptive thinking: AutoThink's staged rewards and AdaptThink's constrained advantage.

Both let one model answer with or without thinking. A response "does not think" when its think
block is empty (`Sample.mode`, see `base.detect_think_mode`); forced prefixes set `think_mode`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np

from .base import NO_THINK, THINK, Reward, Sample, group_indices
from .format import has_repetition_loop
from .math import THINK_CLOSE
from .registry import register_reward

# AutoThink's ellipsis prompt: the assistant prefix `<think>\n...\n` instead of `<think>\n`, after
# which the model either closes the block at once (no-think) or keeps thinking.
AUTOTHINK_ELLIPSIS_PREFIX = "<think>\n...\n"
# The fixed No-Thinking prefix AutoThink and AdaptThink compare against.
NO_THINKING_PREFIX = "<think>\nOkay, I think I have finished thinking.\n</think>\n\n"


def autothink_base_reward(sample: Sample) -> float:
    """AutoThink's naive reward: think 1/0, no-think 2/−1 (correct/wrong), format error 0; a wrong
    no-think answer stuck in a repetition loop gets −2."""
    if sample.format_error:
        return 0.0
    think = sample.mode == THINK
    if sample.is_correct:
        return 1.0 if think else 2.0
    if think:
        return 0.0
    return -2.0 if has_repetition_loop(sample.text) else -1.0


@register_reward("autothink")
class AutoThink(Reward):
    """The full AutoThink reward of one stage (it includes correctness: use it alone in a spec).

    stage 1: base reward, then batch balance — if the batch's think fraction p exceeds γ
             (`balance_rate`), λ = clip(k·(p − γ), 0, 1) and each think response moves to
             (1−λ)·r + λ·r*, r* = 0 (correct) or −1 (wrong); symmetrically for no-think responses
             with r* = 1 or −2. Pass the whole batch, not one group.
    stage 2: base reward only.
    stage 3: base reward plus, within each group and separately for correct and wrong responses
             (>= 2 of them, non-zero std), z = (L − mean)/std (population std):
             correct r += exp(−α z) − 1; wrong r += 1 − exp(−β z).
    """

    def __init__(self, stage: int = 2, balance_rate: float = 0.5, slope: float = 2.0,
                 alpha: float = 0.05, beta: float = 0.05):
        if stage not in (1, 2, 3):
            raise ValueError(f"autothink stage must be 1, 2 or 3; got {stage!r}")
        if not 0.0 <= balance_rate <= 1.0 or slope < 0 or alpha < 0 or beta < 0:
            raise ValueError("autothink: balance_rate must be in [0, 1]; slope, alpha and beta >= 0")
        self.stage, self.balance_rate, self.slope, self.alpha, self.beta = stage, balance_rate, slope, alpha, beta

    def __call__(self, samples: Sequence[Sample]) -> list[float]:
        rewards = [autothink_base_reward(s) for s in samples]
        if self.stage == 1 and samples:
            self._balance(samples, rewards)
        elif self.stage == 3:
            self._length_adjust(samples, rewards)
        return rewards

    def _balance(self, samples: Sequence[Sample], rewards: list[float]) -> None:
        p_think = sum(s.mode == THINK for s in samples) / len(samples)
        for mode, p, targets in ((THINK, p_think, (0.0, -1.0)), (NO_THINK, 1.0 - p_think, (1.0, -2.0))):
            if p > self.balance_rate:
                lam = min(max(self.slope * (p - self.balance_rate), 0.0), 1.0)
                for i, s in enumerate(samples):
                    if s.mode == mode:
                        target = targets[0] if s.is_correct else targets[1]
                        rewards[i] = (1.0 - lam) * rewards[i] + lam * target

    def _length_adjust(self, samples: Sequence[Sample], rewards: list[float]) -> None:
        for idx in group_indices(samples).values():
            for correct in (True, False):
                sub = [i for i in idx if samples[i].is_correct == correct]
                lengths = np.array([samples[i].num_tokens for i in sub], dtype=float)
                if len(sub) < 2 or lengths.std() == 0:
                    continue
                z = (lengths - lengths.mean()) / lengths.std()
                for i, zi in zip(sub, z):
                    rewards[i] += math.exp(-self.alpha * zi) - 1.0 if correct else 1.0 - math.exp(-self.beta * zi)


def adaptthink_prefixes(group_size: int, think_opener: str = "Alright") -> list[str]:
    """AdaptThink's forced first tokens for a group: the first half `</think>` (NoThinking), the
    second half `think_opener` (Thinking), so π_IS(first token) = 0.5 each. The prefix is part of the
    response; its old log-prob is `ADAPTTHINK_FORCED_LOGPROB`."""
    if not isinstance(group_size, int) or group_size < 2 or group_size % 2:
        raise ValueError(f"AdaptThink forces half of each group: group_size (num_generations) must be an even "
                         f"integer >= 2; got {group_size!r}")
    if not think_opener or THINK_CLOSE in think_opener:
        raise ValueError(f"think_opener must be non-empty text without {THINK_CLOSE!r}; got {think_opener!r}")
    half = group_size // 2
    return [THINK_CLOSE] * half + [think_opener] * half


ADAPTTHINK_FORCED_LOGPROB = math.log(0.5)


def adaptthink_correct(sample: Sample) -> float:
    """AdaptThink's R: 0 if the response reopens `<think>` or closes it other than exactly once."""
    if "<think>" in sample.text or sample.text.count(THINK_CLOSE) != 1:
        return 0.0
    return float(sample.is_correct)


@register_reward("adaptthink")
class AdaptThink(Reward):
    """The constrained advantage A = δ·1[NoThinking] + R − R̄_ref(prompt), used as is (no group
    normalisation: `raw_advantage`). R̄_ref is the reference model's mean accuracy on the prompt,
    set once from pre-sampled reference responses with `set_reference`. Half of each group opens
    with `</think>`, half with `think_opener` (`openings`). The paper's ratio is sequence-level
    (the trainer's `loss_type="gspo"`)."""

    stateful = True
    raw_advantage = True

    def __init__(self, delta: float = 0.05, think_opener: str = "Alright"):
        if not isinstance(delta, (int, float)) or delta < 0:
            raise ValueError(f"adaptthink delta must be a number >= 0; got {delta!r}")
        adaptthink_prefixes(2, think_opener)  # checks the opener
        self.delta, self.think_opener = float(delta), think_opener
        self.reference: dict[Hashable, float] = {}

    def openings(self, group_size: int) -> list[str]:
        return adaptthink_prefixes(group_size, self.think_opener)

    def missing_reference(self, prompt_ids: Iterable[Hashable]) -> set[Hashable]:
        return set(prompt_ids) - self.reference.keys()

    def set_reference(self, samples: Sequence[Sample]) -> None:
        """R̄_ref per prompt = the mean of R over that prompt's reference samples."""
        for pid, idx in group_indices(samples).items():
            self.reference[pid] = sum(adaptthink_correct(samples[i]) for i in idx) / len(idx)

    def __call__(self, samples: Sequence[Sample]) -> list[float]:
        missing = {s.prompt_id for s in samples} - self.reference.keys()
        if missing:
            raise ValueError(f"adaptthink has no reference accuracy for prompts {sorted(map(str, missing))[:5]}; "
                             "call set_reference(reference_samples) first")
        return [self.delta * (s.mode == NO_THINK) + adaptthink_correct(s) - self.reference[s.prompt_id]
                for s in samples]

    def state_dict(self) -> dict[str, Any]:
        return {"reference": [[pid, r] for pid, r in self.reference.items()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reference = {(tuple(pid) if isinstance(pid, list) else pid): float(r) for pid, r in state["reference"]}

    def metrics(self) -> dict[str, float]:
        if not self.reference:
            return {}
        return {"reference_accuracy": sum(self.reference.values()) / len(self.reference)}
