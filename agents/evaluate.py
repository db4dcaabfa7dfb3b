"""Evaluation on held-out seeds: accuracy, unbiased pass@k, lengths and chunk counts."""

from __future__ import annotations

from math import comb
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from .rollout.collector import Collector
from .rollout.engine import Engine
from .types import Episode


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator 1 - C(n-c, k) / C(n, k) (Chen et al., 2021)."""
    if k > n:
        raise ValueError(f"k={k} must be <= n={n}")
    return 1.0 if n - c < k else 1.0 - comb(n - c, k) / comb(n, k)


def evaluate(engine: Engine, env_id: str, seeds: Sequence[int], n: int = 1, env_kwargs: dict[str, Any] | None = None,
             temperature: float = 1.0, ks: Sequence[int] = (1,), seeds_per_call: int = 64,
             progress: str | None = None, per_episode: Mapping[str, Callable[[Episode], float]] | None = None) -> dict[str, float]:
    """Run `n` samples per seed; report accuracy, pass@k for each k <= n, mean tokens and chunks,
    where the env reports it, the share of Delethink resets whose carryover held the task's state, and
    the mean over episodes of each `per_episode` function (e.g. whether a trace is in some format).

    Seeds go to the engine `seeds_per_call` at a time; `progress` names a progress bar over those calls."""
    collector = Collector(env_id, engine, env_kwargs, group_size=n, temperature=temperature)
    seeds = list(seeds)
    calls = [seeds[i:i + seeds_per_call] for i in range(0, len(seeds), seeds_per_call)]
    episodes = [ep for part in tqdm(calls, desc=progress, disable=progress is None, dynamic_ncols=True)
                for ep in collector.collect(part).episodes]
    correct = np.array([bool(ep.info.get("correct", False)) for ep in episodes]).reshape(len(seeds), n)
    out = {
        "accuracy": float(correct.mean()),
        "mean_tokens": float(np.mean([ep.num_tokens for ep in episodes])),
        "mean_chunks": float(np.mean([ep.info.get("chunks", len(ep.steps)) for ep in episodes])),
        "truncated_frac": float(np.mean([ep.truncated for ep in episodes])),
    }
    carried = [held for ep in episodes for held in ep.info.get("carried_state", [])]
    if carried:  # pooled over every reset
        out["carried_state"] = float(np.mean(carried))
    for name, fn in (per_episode or {}).items():
        out[name] = float(np.mean([fn(ep) for ep in episodes]))
    for k in ks:
        if k <= n:
            out[f"pass@{k}"] = float(np.mean([pass_at_k(n, int(c), k) for c in correct.sum(1)]))
    return out
