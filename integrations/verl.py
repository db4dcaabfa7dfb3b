"""thinkgym environments inside verl, as an `AgentLoop` that runs any env id token-exactly.

`ThinkgymAgentLoop` (registered with verl as `thinkgym`) is built from verl's `AgentLoopBase` when first
looked up, so this module imports without verl. verl instantiates one loop per sample, with the keyword
arguments of its agent-loop config entry (`env_id`, `env_kwargs`), and calls `run(sampling_params,
**sample)`:

- the sample's `extra_info.seed` poses the problem (`env.reset(seed=...)`), so the `rollout.n` copies of
  a prompt form a GRPO group on one problem (`dataset_rows` writes such rows);
- each step is `await server_manager.generate(request_id, prompt_ids=info["prompt_token_ids"],
  sampling_params=...)` with the env's budget (`max_tokens`) and stop strings and `logprobs=True`, one
  request id per trajectory (verl's sticky session, so its prefix cache serves the next step); the
  sampled ids go back to the env as a `TokenAction`, EOS kept in the output with its log-probability;
- the outputs are thinkgym's own training rows (`episode_rows`): one `AgentLoopOutput` per Delethink
  chunk, and one per append-only episode (tool calls), whose `response_mask` is 0 exactly on the tokens
  the env inserted. Every output carries the episode's reward as `reward_score`, its log-probabilities,
  and `extra_fields` `trajectory_id`, `output_index`, `is_last`, `reward_components` (and the env's final
  `info` on the last).

A trajectory of one row returns one `AgentLoopOutput`, which every verl agent-loop worker takes. Delethink
returns a list, one output per chunk: verl's v1 trainer (`verl.trainer.ppo.v1`, the TransferQueue agent
loop) takes a list per sample, copies the last output's reward to the others and, for GRPO, broadcasts
the trajectory's advantage to all its chunks. The classic `AgentLoopWorker` takes one output per sample.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Iterable
from typing import Any
from uuid import uuid4

import gymnasium as gym
import thinkgym
from thinkgym.agents.rollout.engine import Completion
from thinkgym.agents.rollout.sampling import STOP_WINDOW, find_stop
from thinkgym.agents.types import Episode, group_row, step_groups
from thinkgym.envs import TokenAction
from thinkgym.envs.tokenizer import decode

from . import require

AGENT_NAME = "thinkgym"
VERL_VERSION = ">=0.9"
# verl makes one loop per sample; the envs outlive them, so a task's data loads once per worker. An env
# serves one trajectory at a time: the loops of a worker share its event loop, which takes and returns them.
_IDLE_ENVS: dict[tuple, list[gym.Env]] = {}


def __getattr__(name: str) -> Any:
    if name == "ThinkgymAgentLoop":
        return agent_loop_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def dataset_rows(env_id: str, seeds: Iterable[int], env_kwargs: dict[str, Any] | None = None,
                 agent_name: str = AGENT_NAME) -> list[dict[str, Any]]:
    """verl dataset rows (write them to parquet) for the samples of `seeds`: the env's question as the chat
    prompt (verl filters prompts by length on it), `agent_name`, and `extra_info` with the env seed."""
    if env_id not in gym.registry:
        raise ValueError(f"env id {env_id!r} is not registered; registered thinkgym ids: {thinkgym.ENV_IDS}")
    env = gym.make(env_id, disable_env_checker=True, **(env_kwargs or {})).unwrapped
    rows = []
    for i, seed in enumerate(seeds):
        env.reset(seed=int(seed))
        rows.append({"data_source": f"thinkgym/{env_id}", "agent_name": agent_name,
                     "prompt": [{"role": "user", "content": env.problem.prompt}],
                     "reward_model": {"style": "rule", "ground_truth": str(env.problem.answer)},
                     "extra_info": {"seed": int(seed), "index": i}})
    env.close()
    return rows


def sample_seed(sample: dict[str, Any]) -> int:
    """The env seed of a verl sample: `extra_info["seed"]`."""
    extra = sample.get("extra_info")
    if not isinstance(extra, dict) or "seed" not in extra:
        raise ValueError("a thinkgym agent-loop sample needs extra_info.seed (the env seed that poses its problem); got "
                         f"extra_info={extra!r}. Build the dataset with thinkgym.integrations.verl.dataset_rows.")
    return int(extra["seed"])


def row_outputs(ep: Episode, trajectory_id: str) -> list[dict[str, Any]]:
    """The `AgentLoopOutput` fields of each training row of `ep` (thinkgym's `episode_rows`), in order."""
    components = {k: float(v) for k, v in ep.info.get("reward_components", {}).items()}
    rows = [(g, group_row(g, 0)) for g in step_groups(ep.steps)]
    rows = [(g, r) for g, r in rows if r.completion_len > 0]
    outs = []
    for i, (group, row) in enumerate(rows):
        last = i == len(rows) - 1
        outs.append({
            "prompt_ids": row.input_ids[: row.prompt_len], "response_ids": row.input_ids[row.prompt_len:],
            "response_mask": row.loss_mask, "response_logprobs": row.old_logprobs, "reward_score": float(ep.reward),
            "num_turns": 2 * len(group),  # verl counts user, assistant and tool turns: user + (assistant, env output)...
            "extra_fields": {"trajectory_id": trajectory_id, "output_index": i, "is_last": last,
                             "reward_components": components, "env_info": dict(ep.info) if last else None},
        })
    return outs


@functools.cache
def agent_loop_class() -> type:
    """verl's `AgentLoopBase` subclass that runs thinkgym envs, registered as `thinkgym`."""
    base = require("verl.experimental.agent_loop.agent_loop", "verl", VERL_VERSION, "thinkgym's verl AgentLoop")

    class ThinkgymAgentLoop(base.AgentLoopBase):
        """Runs one episode of `env_id` per sample; see `thinkgym.integrations.verl`."""

        def __init__(self, *args: Any, env_id: str, env_kwargs: Any = None, **kwargs: Any):
            super().__init__(*args, **kwargs)
            if env_id not in gym.registry:
                raise ValueError(f"env_id {env_id!r} is not registered; registered thinkgym ids: {thinkgym.ENV_IDS}")
            if env_kwargs is not None and not isinstance(env_kwargs, dict):
                env_kwargs = require("omegaconf", "omegaconf", "", "a verl agent-loop config").OmegaConf.to_container(env_kwargs, resolve=True)
            if "tokenizer" in (env_kwargs or {}):
                raise ValueError("env_kwargs must not set `tokenizer`: the env tokenizes with verl's (the model's) tokenizer")
            self.env_id, self.env_kwargs = env_id, dict(env_kwargs or {})

        async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> Any:
            loop = asyncio.get_running_loop()
            key = (self.env_id, repr(self.env_kwargs), id(self.tokenizer))
            idle = _IDLE_ENVS.setdefault(key, [])
            env = idle.pop() if idle else gym.make(self.env_id, disable_env_checker=True, tokenizer=self.tokenizer,
                                                   **self.env_kwargs).unwrapped
            eos = int(self.tokenizer.eos_token_id)
            seed, request_id = sample_seed(kwargs), uuid4().hex
            gen_s = env_s = 0.0
            try:
                t0 = time.perf_counter()
                _, info = await loop.run_in_executor(None, lambda: env.reset(seed=seed))
                env_s += time.perf_counter() - t0
                ep, done = Episode(0, seed, []), False
                while not done:
                    params = {**sampling_params, "max_tokens": int(info["max_new_tokens"]), "logprobs": True}
                    if info["stop"]:
                        params["stop"] = list(info["stop"])
                    prompt = list(info["prompt_token_ids"])
                    t0 = time.perf_counter()
                    out = await self.server_manager.generate(request_id, prompt_ids=prompt, sampling_params=params)
                    gen_s += time.perf_counter() - t0
                    ids, logps = list(out.token_ids), out.log_probs
                    if logps is None or len(logps) != len(ids):
                        raise ValueError("the rollout server returned no log-probability per token although the thinkgym agent "
                                         "loop asked for logprobs; its outputs carry them")
                    ended = bool(ids) and ids[-1] == eos
                    action = ids[:-1] if ended else ids
                    finish = "eos" if ended else ("stop" if info["stop"] and find_stop(
                        decode(self.tokenizer, action[-STOP_WINDOW:]), info["stop"]) is not None else "length")
                    c = Completion(action, decode(self.tokenizer, action), [float(x) for x in logps[: len(action)]], finish,
                                   float(logps[-1]) if ended else None)
                    ep.steps.append(c.step(prompt, eos))
                    t0 = time.perf_counter()
                    _, reward, terminated, truncated, info = await loop.run_in_executor(
                        None, env.step, TokenAction(c.text, c.token_ids, ended))
                    env_s += time.perf_counter() - t0
                    done = terminated or truncated
                ep.reward, ep.info, ep.terminated, ep.truncated = float(reward), info, bool(terminated), bool(truncated)
            finally:
                env.close()
                idle.append(env)
            rollout = self.config.actor_rollout_ref.rollout
            outputs = []
            for fields in row_outputs(ep, request_id):
                for key, limit in (("prompt_ids", "prompt_length"), ("response_ids", "response_length")):
                    if len(fields[key]) > getattr(rollout, limit):
                        raise ValueError(f"a {self.env_id} output has {len(fields[key])} {key.split('_')[0]} tokens but "
                                         f"actor_rollout_ref.rollout.{limit} is {getattr(rollout, limit)}: raise it to the "
                                         "env's largest row (verl pads every output to these lengths)")
                outputs.append(base.AgentLoopOutput(**fields, metrics={"generate_sequences": gen_s, "tool_calls": env_s}))
            return outputs[0] if len(outputs) == 1 else outputs

    ThinkgymAgentLoop.__module__, ThinkgymAgentLoop.__qualname__ = __name__, "ThinkgymAgentLoop"
    return base.register(AGENT_NAME)(ThinkgymAgentLoop)
