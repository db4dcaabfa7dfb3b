"""Advantage estimators (a registry, as in verl's core_algos) and MGPO's group weighting.

Every estimator has one signature, `fn(rewards, scale_rewards) -> advantages`: a [groups, G] array of
rewards to advantages of the same shape, every row of a rollout (every Delethink chunk of a trace)
sharing its rollout's advantage. `@register_advantage(name)` adds one (`thinkgym.registry.Registry`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from thinkgym.registry import Registry

AdvantageFn = Callable[[np.ndarray, str], np.ndarray]
ADVANTAGE_ESTIMATORS: Registry[AdvantageFn] = Registry("advantage_estimator")
register_advantage = ADVANTAGE_ESTIMATORS.register


STD_EPS = 1e-4
SCALE_REWARDS = ("group", "batch", "none")


@register_advantage("grpo")
def grpo_advantage(rewards: np.ndarray, scale_rewards: str) -> np.ndarray:
    """r − group mean, divided by the group std (DeepSeekMath), the batch std ("Lite PPO"), or
    nothing (Dr. GRPO: `scale_rewards="none"`)."""
    centred = rewards - rewards.mean(axis=1, keepdims=True)
    if scale_rewards == "group":
        return centred / (rewards.std(axis=1, keepdims=True) + STD_EPS)
    if scale_rewards == "batch":
        return centred / (rewards.std() + STD_EPS)
    if scale_rewards == "none":
        return centred
    raise ValueError(f"scale_rewards={scale_rewards!r} is unknown; valid: {list(SCALE_REWARDS)}")


@register_advantage("rloo")
def rloo_advantage(rewards: np.ndarray, scale_rewards: str) -> np.ndarray:
    """r − the mean of the other G−1 rewards of the group (REINFORCE leave-one-out); unscaled, as
    in verl and TRL's RLOO, whatever `scale_rewards` says."""
    G = rewards.shape[1]
    if G < 2:
        raise ValueError("rloo needs num_generations >= 2")
    return (rewards - rewards.mean(axis=1, keepdims=True)) * G / (G - 1)


@register_advantage("raw")
def raw_advantage(rewards: np.ndarray, scale_rewards: str) -> np.ndarray:
    """The reward itself: for rewards that already are advantages (AdaptThink's δ·1[NoThink] + R − R̄_ref);
    never scaled."""
    return rewards.astype(float)


def mgpo_weight(accuracy: np.ndarray, lam: float) -> np.ndarray:
    """VibeThinker's MGPO weight exp(−λ·KL(Bernoulli(p) ‖ Bernoulli(0.5))) per group accuracy p."""
    p = np.clip(accuracy, 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(p > 0, p * np.log(p / 0.5), 0.0) + np.where(p < 1, (1 - p) * np.log((1 - p) / 0.5), 0.0)
    return np.exp(-lam * kl)
