"""Stateless length rewards: DAPO's overlong penalty, Open-RS's cosine reward, LASER's step bonus.

Lengths are token counts (`Sample.num_tokens`). Where a length scale is left as None it is the
budget the sample was drawn under (`Sample.max_tokens`), so it follows a SIRI schedule for free.
"""

from __future__ import annotations

import math

from .base import Sample, SampleReward, check_length
from .registry import register_reward


def _scale(given: int | None, sample: Sample, what: str) -> int:
    scale = given if given is not None else sample.max_tokens
    if scale is None:
        raise ValueError(f"{what} is not set and the sample has no max_tokens")
    return scale


@register_reward("overlong")
class OverlongPenalty(SampleReward):
    """DAPO's soft overlong penalty: 0 up to L_max − L_buf, linear down to −1 at L_max, −1 beyond.

    `max_tokens` = L_max (None: the sample's budget), `buffer` = L_buf (None: L_max/5, DAPO's
    4096 of 20480, so that it follows the budget as L_max does).
    """

    def __init__(self, buffer: int | None = None, max_tokens: int | None = None):
        check_length("buffer", buffer, allow_none=True)
        check_length("max_tokens", max_tokens, allow_none=True)
        if max_tokens is not None and buffer is not None and buffer > max_tokens:
            raise ValueError(f"buffer ({buffer}) must not exceed max_tokens ({max_tokens})")
        self.buffer, self.max_tokens = buffer, max_tokens

    def score(self, sample: Sample) -> float:
        l_max = _scale(self.max_tokens, sample, "overlong max_tokens")
        buffer = self.buffer if self.buffer is not None else max(1, l_max // 5)
        if buffer > l_max:
            raise ValueError(f"overlong buffer ({buffer}) exceeds the sample's budget L_max ({l_max}): every length "
                             "would be penalised; give a smaller buffer or leave it unset (L_max/5)")
        free = l_max - buffer
        if sample.num_tokens <= free:
            return 0.0
        return max(-1.0, (free - sample.num_tokens) / buffer)


@register_reward("cosine")
class CosineLength(SampleReward):
    """Open-RS's cosine length-scaled accuracy, in tokens, with the length clipped at `max_len`.

    With p = min(L / max_len, 1) and c = cos(π p): correct r = min_c + (max_c − min_c)(1 + c)/2
    (1.0 at L=0 falling to 0.5 at max_len); wrong r = max_w + (min_w − max_w)(1 + c)/2 (−1.0 at L=0
    rising to −0.5 at max_len: a long wrong answer, which at least tried, is punished less, as the
    paper says). Differences from the Open-RS code: it counts characters, not tokens; it does not
    clip p, so past max_len the reward oscillates; its recipe's wrong-answer values (0.0, −0.5) make
    long wrong answers punished *more*, against its own docstring.
    """

    requires_dominance = True

    def __init__(self, max_len: int | None = None, min_value_correct: float = 0.5, max_value_correct: float = 1.0,
                 min_value_wrong: float = -1.0, max_value_wrong: float = -0.5):
        check_length("max_len", max_len, allow_none=True)
        if min_value_correct > max_value_correct or min_value_wrong > max_value_wrong:
            raise ValueError("cosine: min_value_* must not exceed max_value_*")
        self.max_len = max_len
        self.min_c, self.max_c = float(min_value_correct), float(max_value_correct)
        self.min_w, self.max_w = float(min_value_wrong), float(max_value_wrong)
        self.bounds = ((self.min_c, self.max_c), (self.min_w, self.max_w))

    def score(self, sample: Sample) -> float:
        p = min(sample.num_tokens / _scale(self.max_len, sample, "cosine max_len"), 1.0)
        half = 0.5 * (1.0 + math.cos(math.pi * p))
        if sample.is_correct:
            return self.min_c + (self.max_c - self.min_c) * half
        return self.max_w + (self.min_w - self.max_w) * half


@register_reward("laser")
class Laser(SampleReward):
    """LASER's step reward S: 1 for a correct answer of at most `target_length` tokens, else 0.

    The paper's R = C + α·S is the spec `laser_correctness + 0.5*laser(target_length=4096)`.
    """

    bounds = ((0.0, 1.0), (0.0, 0.0))

    def __init__(self, target_length: int = 4096):
        check_length("target_length", target_length)
        self.target_length = target_length

    def score(self, sample: Sample) -> float:
        return float(sample.is_correct and sample.num_tokens <= self.target_length)
