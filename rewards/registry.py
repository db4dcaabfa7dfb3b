"""Rewards by name, so a config line can switch them on and users can plug in their own.

Register either a `Reward` subclass (built with the keyword arguments given to `get_reward`), a
per-sample function `fn(sample, **params) -> float`, or, with `group=True`, a group function
`fn(samples, **params) -> list[float]`:

    @register_reward("short_bonus")
    def short_bonus(sample, limit=100):
        return float(sample.is_correct and sample.num_tokens <= limit)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from thinkgym.registry import Registry

from .base import Reward, Sample

REWARDS: Registry[Callable[..., Reward]] = Registry("reward")
"""Each reward's factory: keyword arguments in, a fresh `Reward` out (`get_reward`)."""


class FunctionReward(Reward):
    """A registered function with its parameters bound."""

    def __init__(self, fn: Callable[..., Any], group: bool, params: dict[str, Any]):
        self.fn, self.group, self.params = fn, group, params

    def __call__(self, samples: Sequence[Sample]) -> list[float]:
        if self.group:
            out = [float(v) for v in self.fn(list(samples), **self.params)]
            if len(out) != len(samples):
                raise ValueError(f"reward {self.name!r} returned {len(out)} values for {len(samples)} samples")
            return out
        return [float(self.fn(s, **self.params)) for s in samples]


def _bind(name: str, fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> None:
    """Check keyword arguments against the signature, so typos fail at build time."""
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as err:
        params = [p for p in inspect.signature(fn).parameters if p not in ("self", "sample", "samples")]
        raise ValueError(f"reward {name!r}: {err}; accepted arguments: {params}") from None


def register_reward(name: str, *, group: bool = False, bounds=None, requires_dominance: bool = False):
    """Decorator registering a Reward subclass or a reward function under `name` (returned unchanged).

    `bounds`/`requires_dominance` describe a function reward as the `Reward` attributes of those names do.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"reward names must be Python identifiers (usable in a spec); got {name!r}")

    add = REWARDS.register(name)  # a duplicate is refused here, before the reward is defined

    def deco(obj):
        if isinstance(obj, type) and issubclass(obj, Reward):
            if bounds is not None or requires_dominance:
                raise TypeError("set bounds/requires_dominance as class attributes of a Reward subclass")

            def factory(**kwargs):
                _bind(name, obj.__init__, (None,), kwargs)
                reward = obj(**kwargs)
                reward.name = name
                return reward
        elif callable(obj):
            def factory(**kwargs):
                _bind(name, obj, (None,), kwargs)
                reward = FunctionReward(obj, group, kwargs)
                reward.name, reward.bounds, reward.requires_dominance = name, bounds, requires_dominance
                return reward
        else:
            raise TypeError(f"register_reward expects a Reward subclass or a function; got {obj!r}")
        add(factory)
        return obj

    return deco


available_rewards = REWARDS.names


def get_reward(name: str, **kwargs: Any) -> Reward:
    """A fresh reward object built with `kwargs`; ValueError naming the registered rewards if `name` is unknown."""
    return REWARDS.get(name)(**kwargs)
