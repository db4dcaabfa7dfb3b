"""The episode collector: runs groups of environments through an engine, token-exactly.

G environments reset with the same seed see the same task (a GRPO group). Every live observation
is sent to the engine with that env's own `max_new_tokens` and `stop`, through `engine.stream`: an
env's next request follows its last completion (at once with a refilling engine, else in rounds);
finished episodes leave the batch. Each step keeps the exact prompt ids the env built and the exact
ids the engine sampled, so the rows trained on are the rows generated.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Callable, Sequence

import gymnasium as gym

import thinkgym  # noqa: F401  (registers the environment ids)
from thinkgym.envs import TokenAction
from thinkgym.envs.registration import make_env

from ..types import Batch, Episode, episode_rows
from .engine import Completion, Engine, GenerationRequest, stream


def thinking_budget(env: gym.Env, reset_info: dict[str, Any]) -> int:
    """An episode's token budget over all its steps: the env's `max_thinking_tokens` (what SIRI's
    `set_thinking_budget` sets; Delethink's C + (I − 1)(C − m), where the first step gets only C), else,
    for an env without one, the first step's `max_new_tokens`."""
    return int(getattr(env, "max_thinking_tokens", reset_info["max_new_tokens"]))


class Collector:
    """Collects groups of episodes from any registered env id with any kwargs."""

    def __init__(self, env_id: str, engine: Engine, env_kwargs: dict[str, Any] | None = None, group_size: int = 8,
                 temperature: float = 1.0, top_p: float = 1.0, problem_seeds: bool = False):
        """`problem_seeds` resets each env with `options={"problem_seed": seed}` as well, so that a seed
        poses the task's problem of that number (evaluation's exact pass over a dataset) rather than one
        drawn from the seed."""
        if env_id not in gym.registry:
            raise ValueError(f"env id {env_id!r} is not registered; registered thinkgym ids: {thinkgym.ENV_IDS}")
        self.env_id, self.engine, self.group_size = env_id, engine, group_size
        self.env_kwargs = dict(env_kwargs or {})
        self.env_kwargs.setdefault("tokenizer", engine.policy.tokenizer)
        self.eos_token_id = engine.policy.eos_token_id
        self.temperature, self.top_p, self.problem_seeds = temperature, top_p, problem_seeds
        self.thinking_budget: int | None = None  # set by SIRI's schedule; None keeps the env's own
        self.policy_version = 0  # stamped on every step; asynchronous rollouts advance it as new weights arrive
        self.before_round: Callable[[], None] | None = None  # runs before each generation round (new weights may land)
        self._envs: list[gym.Env] = []
        self._pool(1)  # a bad env setting fails here, before a run writes anything

    def _pool(self, n: int) -> list[gym.Env]:
        while len(self._envs) < n:
            env = make_env(self.env_id, **self.env_kwargs).unwrapped
            if self._envs and hasattr(env, "curriculum"):  # one curriculum sees every episode's result
                env.curriculum = self._envs[0].curriculum
            self._envs.append(env)
        if self.thinking_budget is not None:
            for env in self._envs[:n]:
                env.set_thinking_budget(self.thinking_budget)
        return self._envs[:n]

    def set_thinking_budget(self, tokens: int) -> None:
        """Give every environment this thinking budget from the next episode on (SIRI)."""
        env = self._pool(1)[0]
        if not hasattr(env, "set_thinking_budget"):
            raise ValueError(f"{self.env_id} has no thinking budget to schedule (it needs set_thinking_budget)")
        self.thinking_budget = int(tokens)

    def env_state(self) -> dict[str, Any] | None:
        """Checkpointable environment state (a curriculum), shared by the whole pool."""
        env = self._pool(1)[0]
        return env.state_dict() if hasattr(env, "state_dict") else None

    def load_env_state(self, state: dict[str, Any] | None) -> None:
        if state is not None:
            self._pool(1)[0].load_state_dict(state)

    def collect(self, seeds: Sequence[int], prefixes: Sequence[Sequence[int]] | None = None) -> Batch:
        """One group of `group_size` episodes per seed. `prefixes[j]` forces the start of sample j's
        first response (AdaptThink's NoThinking / Thinking openings)."""
        G = self.group_size
        if prefixes is not None and len(prefixes) != G:
            raise ValueError(f"prefixes must have one entry per group member ({G}); got {len(prefixes)}")
        envs = self._pool(len(seeds) * G)
        episodes, infos = [], []
        t_env = time.perf_counter()
        for k, env in enumerate(envs):
            seed = int(seeds[k // G])
            _, info = env.reset(seed=seed, options={"problem_seed": seed} if self.problem_seeds else None)
            episodes.append(Episode(k // G, seed, [], budget=thinking_budget(env, info)))
            infos.append(info)
        env_time = time.perf_counter() - t_env

        def request(k: int) -> GenerationRequest:
            prefix = list(prefixes[k % G]) if (prefixes is not None and not episodes[k].steps) else []
            return GenerationRequest(infos[k]["prompt_token_ids"], infos[k]["max_new_tokens"], infos[k]["stop"],
                                     self.temperature, self.top_p, 1, prefix)

        def follow_up(k: int, c: Completion) -> GenerationRequest | None:
            """Env k's step with its completion: its next request, or None once its episode ends."""
            nonlocal env_time
            t0 = time.perf_counter()
            # the version is the one the request was sampled with: weights change only in before_round, between rounds
            episodes[k].steps.append(c.step(infos[k]["prompt_token_ids"], self.eos_token_id, self.policy_version))
            _, reward, term, trunc, info = envs[k].step(TokenAction(c.text, c.token_ids, c.finish_reason == "eos"))
            nxt = None
            if term or trunc:
                ep = episodes[k]
                ep.reward, ep.info, ep.terminated, ep.truncated = float(reward), info, bool(term), bool(trunc)
            else:
                infos[k] = info
                nxt = request(k)
            env_time += time.perf_counter() - t0
            return nxt

        t0, env_before = time.perf_counter(), env_time
        stream(self.engine, {k: request(k) for k in range(len(envs))}, follow_up, self.before_round)
        gen_time = time.perf_counter() - t0 - (env_time - env_before)
        rows = [r for i, ep in enumerate(episodes) for r in episode_rows(ep, i)]
        return Batch(episodes, rows, self._stats(episodes, gen_time, env_time))

    @staticmethod
    def _stats(episodes: list[Episode], gen_time: float, env_time: float) -> dict[str, float]:
        ends = Counter(ep.steps[-1].finish_reason for ep in episodes if ep.steps)
        return with_throughput({
            "generated_tokens": float(sum(ep.num_tokens for ep in episodes)),
            "time/rollout_s": gen_time,
            "time/env_s": env_time,
            **{f"finish/{k}": float(ends.get(k, 0)) for k in ("eos", "stop", "length")},
        })


def with_throughput(stats: dict[str, float]) -> dict[str, float]:
    """`stats` with the tokens per second of generation and of the envs, from its totals."""
    tokens = stats["generated_tokens"]
    return {**stats, "rollout_tokens_per_s": tokens / max(stats["time/rollout_s"], 1e-9),
            "env_tokens_per_s": tokens / max(stats["time/env_s"], 1e-9)}


def summed_stats(rounds: list[dict[str, float]]) -> dict[str, float]:
    """The stats of several collections taken as one (dynamic sampling's rounds): totals add up and
    the throughputs are recomputed from them."""
    keys = [k for k in rounds[0] if not k.endswith("_per_s")]
    return with_throughput({k: sum(r[k] for r in rounds) for k in keys})
