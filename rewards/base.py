"""What a reward sees (`Sample`) and what every reward is (`Reward`).

A reward scores a list of samples: one prompt's group, or a whole step's batch. Group-relative
rewards (LASER-D buckets, AutoThink z-scores, HAPO histories) group by `Sample.prompt_id`, so
passing the whole batch is always correct, and batch-level ones (AutoThink stage 1) need it.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .math import THINK_CLOSE, correctness, extract_answer

THINK = "think"
NO_THINK = "nothink"


def detect_think_mode(text: str) -> str:
    """`"nothink"` if the response closes its think block before writing anything, else `"think"`.

    The response is what follows the assistant prefix (`<think>\\n` or AutoThink's `<think>\\n...\\n`),
    so an empty think block shows as a leading `</think>`; a fully decoded sequence shows it as
    `<think>\\n...\\n</think>` (AutoThink's detector accepts both).
    """
    return NO_THINK if text.lstrip().startswith(THINK_CLOSE) or "<think>\n...\n</think>" in text else THINK


@dataclass(frozen=True)
class Sample:
    """One response as a reward sees it.

    text: the response (what the policy wrote after the prompt, forced prefixes included).
    num_tokens: its length in tokens (all chunks for a Delethink trace).
    prompt_id: the prompt it answers; samples with equal ids form a group. Keep it stable across
        steps (the problem's seed or dataset index): HAPO's history is keyed by it.
    correct: the verdict if known (e.g. the env's `info["correct"]`); else computed from `gold`.
    gold: the reference answer, checked by math-verify when `correct` is None.
    finished: it ended by itself (EOS/answer), not by running out of budget; an unfinished sample
        is never correct (DeepScaleR/SIRI length capping: whatever was cut off scores 0).
    think_mode: `"think"`/`"nothink"` when known (forced prefix); else detected from the text.
    max_tokens: the length budget it was sampled under (default length scale for some rewards).
    """

    text: str
    num_tokens: int
    prompt_id: Hashable = 0
    correct: bool | None = None
    gold: str | None = None
    finished: bool = True
    think_mode: str | None = None
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.num_tokens, int) or self.num_tokens < 0:
            raise ValueError(f"num_tokens must be a non-negative integer; got {self.num_tokens!r}")
        if self.think_mode not in (None, THINK, NO_THINK):
            raise ValueError(f"think_mode must be None, {THINK!r} or {NO_THINK!r}; got {self.think_mode!r}")

    @cached_property
    def answer(self) -> str | None:
        """The last `\\boxed{}` after `</think>`; None is a format error."""
        return extract_answer(self.text)

    @cached_property
    def is_correct(self) -> bool:
        if not self.finished:
            return False
        if self.correct is not None:
            return bool(self.correct)
        if self.gold is None:
            raise ValueError("a Sample needs `correct` or `gold` to be scored for correctness")
        return correctness(self.text, self.gold) == 1.0

    @property
    def format_error(self) -> bool:
        return self.answer is None

    @property
    def mode(self) -> str:
        return self.think_mode or detect_think_mode(self.text)


def group_indices(samples: Sequence[Sample]) -> dict[Hashable, list[int]]:
    """Indices of the samples of each prompt, in first-seen order."""
    groups: dict[Hashable, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(s.prompt_id, []).append(i)
    return groups


def check_length(name: str, value: Any, allow_none: bool = False) -> None:
    """Lengths are positive integers (token counts); anything else is a config error."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer number of tokens; got {value!r}")


class Reward:
    """A reward over a list of samples. Stateless by default; stateful ones override the hooks.

    `bounds` = ((lo, hi) on correct samples, (lo, hi) on wrong ones), or None where the value does
    not depend on correctness that way; a spec checks correctness dominance from them when a
    component sets `requires_dominance`. `raw_advantage` marks a value that already is the advantage
    (AdaptThink): the trainer must not normalise it within the group.
    """

    name: str = ""
    stateful: bool = False
    raw_advantage: bool = False
    requires_dominance: bool = False
    bounds: tuple[tuple[float, float], tuple[float, float]] | None = None

    def __call__(self, samples: Sequence[Sample]) -> list[float]:
        raise NotImplementedError

    def update(self, samples: Sequence[Sample], monitor: Sequence[Sample] | None = None) -> None:
        """Called once per training step, after scoring, with that step's samples; `monitor` holds
        rollouts of a fixed monitor set when the trainer drew them (LASER-D uses them if given)."""

    def openings(self, group_size: int) -> list[str] | None:
        """The response opening the trainer forces on each member of a group, or None to sample freely.
        An opening given to k of the G members was drawn with probability k/G (AdaptThink's π_IS)."""
        return None

    def missing_reference(self, prompt_ids: Iterable[Hashable]) -> set[Hashable]:
        """Prompts of `prompt_ids` that still need samples from the policy RL starts from (AdaptThink's R̄_ref)."""
        return set()

    def set_reference(self, samples: Sequence[Sample]) -> None:
        """Take in samples of the starting policy for the prompts that `missing_reference` named."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""

    def metrics(self) -> dict[str, float]:
        """Scalars worth logging about the state (e.g. current targets)."""
        return {}

    def check_weights(self, weights: dict[str, float]) -> None:
        """Raise ValueError if the spec's weights break a rule of this method."""


class SampleReward(Reward):
    """A reward that scores each sample on its own."""

    def score(self, sample: Sample) -> float:
        raise NotImplementedError

    def __call__(self, samples: Sequence[Sample]) -> list[float]:
        return [float(self.score(s)) for s in samples]
