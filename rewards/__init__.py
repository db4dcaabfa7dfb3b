"""Pure reward functions, reward state objects and schedules. This package imports nothing else of thinkgym but
the leaf `thinkgym.registry`.

Build a reward from one config line with `parse_reward_spec`, score samples with it, update its state
once per step and checkpoint it with `state_dict`; `available_rewards()` lists the names.
"""

from .math import after_think, correctness, extract_answer, last_boxed, math_equal
from .base import NO_THINK, THINK, Reward, Sample, SampleReward, detect_think_mode, group_indices
from .registry import REWARDS, available_rewards, get_reward, register_reward
from .format import has_repetition_loop
from .length import CosineLength, Laser, OverlongPenalty
from .laser import LaserD, LaserDE, difficulty_bucket
from .hapo import Hapo, hapo_length_reward
from .adaptive import (ADAPTTHINK_FORCED_LOGPROB, AUTOTHINK_ELLIPSIS_PREFIX, NO_THINKING_PREFIX, AdaptThink,
                       AutoThink, adaptthink_correct, adaptthink_prefixes, autothink_base_reward)
from .schedules import SiriSchedule, delethink_max_chunks
from .spec import CompositeReward, RewardOutput, parse_reward_spec

__all__ = [
    "after_think", "correctness", "extract_answer", "last_boxed", "math_equal",
    "NO_THINK", "THINK", "Reward", "Sample", "SampleReward", "detect_think_mode", "group_indices",
    "REWARDS", "available_rewards", "get_reward", "register_reward", "has_repetition_loop",
    "CosineLength", "Laser", "OverlongPenalty", "LaserD", "LaserDE", "difficulty_bucket",
    "Hapo", "hapo_length_reward",
    "ADAPTTHINK_FORCED_LOGPROB", "AUTOTHINK_ELLIPSIS_PREFIX", "NO_THINKING_PREFIX", "AdaptThink", "AutoThink",
    "adaptthink_correct", "adaptthink_prefixes", "autothink_base_reward",
    "SiriSchedule", "delethink_max_chunks", "CompositeReward", "RewardOutput", "parse_reward_spec",
]
