"""Evaluation on held-out seeds: accuracy, unbiased pass@k, lengths and chunk counts."""

from __future__ import annotations

from math import comb
from typing import Any, Sequence

import numpy as np

from .collector import Collector
from .engine import Engine


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator 1 - C(n-c, k) / C(n, k) (Chen et al., 2021)."""
    if k > n:
        raise ValueError(f"k={k} must be <= n={n}")
    return 1.0 if n - c < k else 1.0 - comb(n - c, k) / comb(n, k)


def evaluate(engine: Engine, env_id: str, seeds: Sequence[int], n: int = 1, env_kwargs: dict[str, Any] | None = None,
             temperature: float = 1.0, ks: Sequence[int] = (1,)) -> dict[str, float]:
    """Run `n` samples per seed; report accuracy, pass@k for each k <= n, mean tokens and chunks."""
    batch = Collector(env_id, engine, env_kwargs, group_size=n, temperature=temperature).collect(list(seeds))
    correct = np.array([bool(ep.info.get("correct", False)) for ep in batch.episodes]).reshape(len(seeds), n)
    out = {
        "accuracy": float(correct.mean()),
        "mean_tokens": float(np.mean([ep.num_tokens for ep in batch.episodes])),
        "mean_chunks": float(np.mean([ep.info.get("chunks", len(ep.steps)) for ep in batch.episodes])),
        "truncated_frac": float(np.mean([ep.truncated for ep in batch.episodes])),
    }
    for k in ks:
        if k <= n:
            out[f"pass@{k}"] = float(np.mean([pass_at_k(n, int(c), k) for c in correct.sum(1)]))
    return out
