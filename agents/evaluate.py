"""Evaluation on held-out seeds: greedy accuracy, or avg@n and unbiased pass@k of n samples; lengths and chunks.

Two modes. Greedy decoding (`temperature=0`) gives one answer per problem: its score is `accuracy`, and
pass@k would only repeat it. Sampling (`temperature > 0`) draws `n` answers per problem and reports
`avg@n` (the mean score of a sample, also `accuracy`) and pass@k for every k <= n.

`out=` writes one JSON line per problem: the prompt, the gold answer, and per sample its completion,
parsed answer, reward, reward components, correctness, tokens and chunks; the metrics are means over these lines.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from math import comb
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import gymnasium as gym
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


class PosedProblems:
    """The prompt and gold answer a seed poses, read from an env of its own: `reset(seed=s)` fully determines
    the task (the env contract), so this env sees the problem the rollouts saw. The gold answer is the env's
    `problem.answer` (every thinkgym env has one; None for an env without)."""

    def __init__(self, env_id: str, env_kwargs: dict[str, Any], problem_seeds: bool = False):
        self.env = gym.make(env_id, disable_env_checker=True, **env_kwargs).unwrapped
        self.problem_seeds = problem_seeds

    def __call__(self, seed: int, prompt_ids: Sequence[int] | None = None) -> tuple[str, str | None]:
        """The observation and gold answer of `seed`. Given the `prompt_ids` a rollout saw, the gold answer is
        None unless this env poses the same prompt (a curriculum's level can change what a seed poses)."""
        obs, info = self.env.reset(seed=int(seed), options={"problem_seed": int(seed)} if self.problem_seeds else None)
        gold = getattr(getattr(self.env, "problem", None), "answer", None)
        if gold is None or (prompt_ids is not None and list(prompt_ids) != list(info["prompt_token_ids"])):
            return obs, None
        return obs, str(gold)


def completion_text(ep: Episode, tokenizer: Any) -> str:
    """Everything the policy wrote in `ep`, its chunks concatenated."""
    return "".join(tokenizer.decode(s.action_ids, skip_special_tokens=False) for s in ep.steps)


def problem_record(env_id: str, seed: int, posed: tuple[str, str | None], episodes: Sequence[Episode], tokenizer: Any) -> dict[str, Any]:
    """One problem's line of `--out`: what was asked, and each sample's answer and scores."""
    prompt, gold = posed
    return {"env": env_id, "seed": int(seed), "prompt": prompt, "gold": gold,
            "completions": [completion_text(ep, tokenizer) for ep in episodes],
            "answers": [None if ep.info.get("answer") is None else str(ep.info["answer"]) for ep in episodes],
            "rewards": [float(ep.reward) for ep in episodes],
            "reward_components": [{k: float(v) for k, v in ep.info.get("reward_components", {}).items()} for ep in episodes],
            "correct": [bool(ep.info.get("correct", False)) for ep in episodes],
            "tokens": [ep.num_tokens for ep in episodes],
            "chunks": [int(ep.info.get("chunks", len(ep.steps))) for ep in episodes],
            "truncated": [bool(ep.truncated) for ep in episodes]}


def evaluate(engine: Engine, env_id: str, seeds: Sequence[int], n: int = 1, env_kwargs: dict[str, Any] | None = None,
             temperature: float = 1.0, ks: Sequence[int] | None = None, seeds_per_call: int = 64,
             progress: str | None = None, out: str | Path | None = None, problem_seeds: bool = False,
             per_episode: Mapping[str, Callable[[Episode], float]] | None = None) -> dict[str, float]:
    """Score the policy on `seeds`: greedy at `temperature=0` (one sample per seed, whatever `n`), else `n`
    samples per seed, with pass@k for each k of `ks` (default: every k <= n). Also mean tokens, chunks, the
    truncated share, where the env reports it, the share of Delethink resets whose carryover held the
    task's state, and the mean over episodes of each `per_episode` function (e.g. whether a trace is in some format).

    Seeds go to the engine `seeds_per_call` at a time; `progress` names a progress bar over the seeds.
    `out` (a path) is overwritten with one JSON line per seed (`problem_record`). `problem_seeds` resets each
    env with `options={"problem_seed": seed}`: a dataset task then poses its records in a fixed order, so
    seeds 0..N-1 of a dataset of N records pose each exactly once (without it, as in training, a seed draws its problem)."""
    greedy = temperature == 0
    n = 1 if greedy else n
    if n < 1:
        raise ValueError(f"n={n}: samples per seed must be >= 1")
    bad = [k for k in (ks or ()) if not 1 <= k <= n]
    if bad and not greedy:
        raise ValueError(f"pass@k needs 1 <= k <= n={n}; got ks={list(ks)}")
    collector = Collector(env_id, engine, env_kwargs, group_size=n, temperature=temperature, problem_seeds=problem_seeds)
    posed = PosedProblems(env_id, collector.env_kwargs, problem_seeds) if out is not None else None
    seeds = [int(s) for s in seeds]
    episodes: list[Episode] = []
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") if out is not None else nullcontext() as writer, \
            tqdm(total=len(seeds), desc=progress, unit="problem", disable=progress is None, dynamic_ncols=True) as bar:
        for i in range(0, len(seeds), seeds_per_call):
            part = seeds[i:i + seeds_per_call]
            got = collector.collect(part).episodes
            episodes += got
            if writer is not None:  # a call's problems at once, so that an interrupted run keeps whole lines
                mine = [got[j * n:(j + 1) * n] for j in range(len(part))]
                writer.write("".join(json.dumps(problem_record(env_id, s, posed(s, eps[0].steps[0].prompt_ids), eps, engine.policy.tokenizer))
                                     + "\n" for s, eps in zip(part, mine)))
                writer.flush()
            bar.update(len(part))
            bar.set_postfix(accuracy=f"{np.mean([bool(ep.info.get('correct', False)) for ep in episodes]):.3f}")
    correct = np.array([bool(ep.info.get("correct", False)) for ep in episodes]).reshape(len(seeds), n)
    res = {
        "accuracy": float(correct.mean()),
        "mean_tokens": float(np.mean([ep.num_tokens for ep in episodes])),
        "mean_chunks": float(np.mean([ep.info.get("chunks", len(ep.steps)) for ep in episodes])),
        "truncated_frac": float(np.mean([ep.truncated for ep in episodes])),
    }
    carried = [held for ep in episodes for held in ep.info.get("carried_state", [])]
    if carried:  # pooled over every reset
        res["carried_state"] = float(np.mean(carried))
    for name, fn in (per_episode or {}).items():
        res[name] = float(np.mean([fn(ep) for ep in episodes]))
    if not greedy:
        res[f"avg@{n}"] = res["accuracy"]
        for k in ks or range(1, n + 1):
            res[f"pass@{k}"] = float(np.mean([pass_at_k(n, int(c), k) for c in correct.sum(1)]))
    return res
