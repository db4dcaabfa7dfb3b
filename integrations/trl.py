"""thinkgym environments inside TRL's `GRPOTrainer`, token-exactly.

Two ways in, as TRL offers them:

- **`rollout_func`** (`EnvRollout`): any thinkgym env id. TRL hands the function only this process's
  prompts (each repeated `num_generations` times), so every prompt names its env seed on its first line
  (`[thinkgym seed=S]`, written by `EnvRollout.dataset`); the rest of the prompt is the env's observation,
  for TRL's logs, and is checked against what the env poses. The env is driven by TRL's own generation:
  its vLLM (colocate or server) when `use_vllm`, else its transformers model with its `GenerationConfig`.
  Each episode becomes one TRL row, built by thinkgym's own `episode_rows` (the learner's rows):
  `prompt_ids` are the env's `prompt_token_ids`, `completion_ids` the sampled tokens (EOS included when
  the policy ended) with the tokens the env inserted (tool outputs), `env_mask` 0 exactly on those, and
  `logprobs` log softmax(logits / T) of each sampled token (0 on inserted ones). The env's reward and its
  components ride along as extra keys; `thinkgym_reward` is the reward function that reads them and logs
  each component as `env/<name>/mean`.
- **`environment_factory`** (`CodeInterpreterTools`, `Text2SQLTools`): the envs whose tools fit TRL's
  tool-calling model. TRL renders their methods as tools with the model's chat template, runs the calls,
  and scores each rollout with `get_reward()`, which is the thinkgym env's own reward.

**Delethink cannot be trained by TRL.** A GRPOTrainer row is one prompt and one completion, scored in one
causal context, and TRL needs exactly one row per prompt copy (groups are `num_generations` consecutive
rows). A Delethink chunk after a reset was sampled from the query and its carryover, not from the whole
trace: flattened into one row, its tokens would be trained in a context the policy never saw; as one row
per chunk, a trace would need a variable number of rows. `EnvRollout` refuses Delethink (any chunk cap
above 1) with that reason, and refuses at run time any episode that is not one growing sequence.
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Iterable, Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import gymnasium as gym
import numpy as np
import thinkgym
import torch
from thinkgym.agents.rollout.collector import Collector
from thinkgym.agents.rollout.engine import Completion, GenerationRequest
from thinkgym.agents.rollout.sampling import STOP_WINDOW, find_stop
from thinkgym.agents.types import episode_rows
from thinkgym.envs.delethink import DelethinkEnv
from thinkgym.envs.tokenizer import decode
from transformers import StoppingCriteria, StoppingCriteriaList

from . import require

TRL_VERSION = ">=1.16"
SEED_LINE = "[thinkgym seed={seed}]\n"
_SEED_LINE = re.compile(r"\[thinkgym seed=(-?\d+)\]\n")


def prompt_seed(prompt: Any) -> tuple[int, str]:
    """The env seed a TRL prompt names on its first line, and the rest of the prompt (the observation)."""
    match = _SEED_LINE.match(prompt) if isinstance(prompt, str) else None
    if match is None:
        shown = repr(prompt)[:80]
        raise ValueError(f"a prompt for EnvRollout must be a string whose first line is '[thinkgym seed=N]' (the env seed "
                         f"that poses it); got {shown}. Build the dataset with EnvRollout.dataset(seeds).")
    return int(match.group(1)), prompt[match.end():]


def delethink_refusal(env_id: str, max_chunks: int) -> str:
    return (f"{env_id} resets its context between chunks (Delethink, max_chunks={max_chunks}), which TRL's GRPOTrainer "
            "cannot train: a TRL row is one prompt and one completion scored in one causal context, with exactly one "
            "row per prompt copy. A chunk after a reset was sampled from the query and its carryover, not from the "
            "whole trace, so one row per trace would train its tokens in a context the policy never saw, and one row "
            "per chunk would break TRL's one-completion-per-prompt groups. Train Delethink with `thinkgym train`, or in "
            "verl with thinkgym.integrations.verl (one output per chunk). max_chunks=1 is one context (LongCoT with a "
            "chunk_size budget) and runs here.")


def one_stop_list(stops: Iterable[tuple[str, ...]]) -> tuple[str, ...]:
    """The stop strings that every request of a vLLM round shares (TRL's vLLM call takes one list)."""
    distinct = set(stops)
    if len(distinct) > 1:
        raise ValueError(f"EnvRollout's vLLM path sends one stop list per round, and this round's steps ask for several "
                         f"({sorted(distinct)}): an env whose steps change their stop strings needs the transformers path")
    return distinct.pop()


class RowEnds(StoppingCriteria):
    """A transformers stopping criterion that ends each row at its own budget, at its first stop string, or
    at EOS, and records where and why (`ends[b] = (tokens generated, "eos" | "stop" | "length")`)."""

    def __init__(self, prompt_width: int, requests: Sequence[GenerationRequest], tokenizer: Any, eos: int):
        self.start, self.requests, self.tokenizer, self.eos = prompt_width, list(requests), tokenizer, eos
        self.ends: list[tuple[int, str] | None] = [None] * len(self.requests)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        n = input_ids.shape[1] - self.start
        last = input_ids[:, -1].tolist()
        for b, req in enumerate(self.requests):
            if self.ends[b] is not None:
                continue
            if last[b] == self.eos:
                self.ends[b] = (n, "eos")
            elif req.stop and find_stop(decode(self.tokenizer, input_ids[b, max(self.start, input_ids.shape[1] - STOP_WINDOW):].tolist()),
                                        req.stop) is not None:
                self.ends[b] = (n, "stop")
            elif n >= req.max_new_tokens:
                self.ends[b] = (n, "length")
        return torch.tensor([e is not None for e in self.ends], dtype=torch.bool, device=input_ids.device)


class TRLGeneration:
    """The part of thinkgym's Engine protocol that the `Collector` uses (`policy.tokenizer`,
    `policy.eos_token_id` and `generate`), served by a GRPOTrainer's own generation while `bound` to it.

    - transformers (`use_vllm=False`): the trainer's model, unwrapped once per rollout, generates with a
      copy of the trainer's `GenerationConfig` (temperature, top-k/p, min-p, repetition penalty, its
      `generation_kwargs`). Each row stops at its own budget, its stop strings, or the tokenizer's EOS (the
      env's EOS, the only one that ends a thinkgym action). Log-probabilities are log softmax(logits / T)
      of each sampled token, as TRL computes them for training.
    - vLLM (`use_vllm=True`, colocate or server): `trainer.vllm_generation.generate`, one call per round of
      the episodes' steps, with the steps' stop strings. Server mode gathers every process's prompts, so the
      rounds are kept in step: each process sends as many prompts as the busiest one (padding with 1-token
      dummies), every call uses the largest budget (rows are cut at their own budget and first stop string
      afterwards), and a process whose episodes are done keeps answering rounds until every process is done.
      Log-probabilities are vLLM's, in TRL's `processed_logprobs` mode.
    """

    def __init__(self, tokenizer: Any):
        if tokenizer is None or getattr(tokenizer, "eos_token_id", None) is None:
            raise ValueError("EnvRollout needs the tokenizer that GRPOTrainer gets as processing_class, with an EOS token")
        self.policy = SimpleNamespace(tokenizer=tokenizer, eos_token_id=int(tokenizer.eos_token_id))
        self.trainer: Any = None
        self.model: Any = None

    @contextlib.contextmanager
    def bound(self, trainer: Any) -> Iterator[None]:
        """Generate with `trainer` inside this block."""
        self.trainer = trainer
        try:
            if trainer.use_vllm:
                yield
                self._drain()
            else:
                unwrap = require("trl.models.utils", "trl", TRL_VERSION, "EnvRollout").unwrap_model_for_generation
                args = trainer.args
                with unwrap(trainer.model_wrapped, trainer.accelerator, gather_deepspeed3_params=args.ds3_gather_for_generation,
                            generation_kwargs=trainer.generation_kwargs,
                            gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs) as model, torch.no_grad():
                    self.model = model
                    yield
        finally:
            self.trainer = self.model = None

    def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        return self._vllm(requests) if self.trainer.use_vllm else self._transformers(requests)

    def _completion(self, ids: list[int], logps: list[float], finish: str) -> list[Completion]:
        tok = self.policy.tokenizer
        if finish == "eos":
            return [Completion(ids[:-1], decode(tok, ids[:-1]), logps[:-1], "eos", logps[-1])]
        return [Completion(ids, decode(tok, ids), logps, finish)]

    # -- transformers ---------------------------------------------------------------------------------
    def _transformers(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        tok, eos = self.policy.tokenizer, self.policy.eos_token_id
        width = max(len(r.prompt_ids) for r in requests)
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + list(r.prompt_ids) for r in requests], device=self.model.device)
        mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in requests], device=self.model.device)
        cfg = copy.deepcopy(self.trainer.generation_config)
        cfg.max_new_tokens, cfg.eos_token_id = max(r.max_new_tokens for r in requests), eos
        cfg.output_logits = cfg.return_dict_in_generate = True
        ends = RowEnds(width, requests, tok, eos)
        out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg,
                                  stopping_criteria=StoppingCriteriaList([ends]))
        new = out.sequences[:, width:]
        temperature = (cfg.temperature or 1.0) if cfg.do_sample else 1.0
        logits = torch.stack(out.logits, dim=1).float() / temperature
        logps = torch.log_softmax(logits, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
        done = []
        for b, (n, finish) in enumerate(ends.ends):
            done.append(self._completion(new[b, :n].tolist(), logps[b, :n].tolist(), finish))
        return done

    # -- vLLM -----------------------------------------------------------------------------------------
    def _round(self, n: int, budget: int, stop: tuple[str, ...]) -> tuple[int, int, tuple[str, ...]] | None:
        """One round, the same on every process: the most prompts any process sends, the largest budget,
        and the stop strings (one list for all); None once no process has prompts left."""
        from accelerate.utils import gather_object

        everyone = gather_object([(n, budget, stop)])
        busy = [e for e in everyone if e[0] > 0]
        if not busy:
            return None
        return max(e[0] for e in busy), max(e[1] for e in busy), one_stop_list(e[2] for e in busy)

    def _vllm_call(self, prompts: list[list[int]], n: int, budget: int, stop: tuple[str, ...]) -> tuple[list, list]:
        vg = self.trainer.vllm_generation
        padded = prompts + [[self.policy.eos_token_id]] * (n - len(prompts))
        saved = vg.max_completion_length, vg.generation_kwargs
        vg.max_completion_length = budget
        vg.generation_kwargs = {**saved[1], "stop": list(stop)} if stop else saved[1]
        try:
            _, completion_ids, logprobs, logprob_ids = vg.generate(prompts=padded, images=None, num_generations=1)
        finally:
            vg.max_completion_length, vg.generation_kwargs = saved
        sampled = []
        for k, ids in enumerate(completion_ids[: len(prompts)]):
            # vLLM lists each position's log-probs by rank; the sampled token's is the one under its id
            sampled.append([lp[0] if logprob_ids is None else lp[logprob_ids[k][i].index(t)] for i, (t, lp) in enumerate(zip(ids, logprobs[k]))])
        return [list(c) for c in completion_ids[: len(prompts)]], sampled

    def _vllm(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        stop = one_stop_list(tuple(r.stop) for r in requests)
        n, budget, stop = self._round(len(requests), max(r.max_new_tokens for r in requests), stop)
        all_ids, all_logps = self._vllm_call([list(r.prompt_ids) for r in requests], n, budget, stop)
        tok, eos = self.policy.tokenizer, self.policy.eos_token_id
        done = []
        for req, ids, logps in zip(requests, all_ids, all_logps):
            end, finish = min(len(ids), req.max_new_tokens), "length"
            for k, t in enumerate(ids[:end]):
                if t == eos:
                    end, finish = k + 1, "eos"
                    break
                if req.stop and find_stop(decode(tok, ids[max(0, k + 1 - STOP_WINDOW):k + 1]), req.stop) is not None:
                    end, finish = k + 1, "stop"
                    break
            done.append(self._completion(ids[:end], [float(x) for x in logps[:end]], finish))
        return done

    def _drain(self) -> None:
        """Answer the other processes' vLLM rounds until none has prompts left."""
        while (spec := self._round(0, 0, ())) is not None:
            self._vllm_call([], *spec)


class EnvRollout:
    """A `rollout_func` for `GRPOTrainer` that runs `env_id` (with `env_kwargs`) token-exactly.

    ```python
    rollout = EnvRollout("LongCoT-v0", tokenizer)
    trainer = GRPOTrainer(model, reward_funcs=thinkgym_reward, args=config, train_dataset=rollout.dataset(seeds),
                          processing_class=tokenizer, rollout_func=rollout)
    ```
    `tokenizer` must be the trainer's `processing_class`: the env tokenizes with it, so prompt ids and
    completion ids are the ones TRL trains on. The env's `max_new_tokens` bounds each step (TRL's
    `max_completion_length` does not apply here); sampling settings are TRL's.
    """

    def __init__(self, env_id: str, tokenizer: Any, env_kwargs: dict[str, Any] | None = None):
        require("trl", "trl", TRL_VERSION, "thinkgym's TRL rollout_func (EnvRollout)")
        if env_id not in gym.registry:
            raise ValueError(f"env id {env_id!r} is not registered; registered thinkgym ids: {thinkgym.ENV_IDS}")
        env_kwargs = dict(env_kwargs or {})
        if "tokenizer" in env_kwargs:
            raise ValueError("env_kwargs must not set `tokenizer`: the env tokenizes with EnvRollout's tokenizer, which must "
                             "be GRPOTrainer's processing_class")
        self.env_id = env_id
        self.engine = TRLGeneration(tokenizer)
        self.tokenizer = tokenizer
        self.env = gym.make(env_id, disable_env_checker=True, tokenizer=tokenizer, **env_kwargs).unwrapped
        if isinstance(self.env, DelethinkEnv) and self.env.max_chunks > 1:
            raise ValueError(delethink_refusal(env_id, self.env.max_chunks))
        self.collector = Collector(env_id, self.engine, env_kwargs, group_size=1)

    def dataset(self, seeds: Iterable[int]) -> Any:
        """A `datasets.Dataset` with one `prompt` per seed: its `[thinkgym seed=S]` line, then what the env poses."""
        Dataset = require("datasets", "datasets", "", "EnvRollout.dataset").Dataset
        prompts = []
        for seed in seeds:
            obs, _ = self.env.reset(seed=int(seed))
            prompts.append(SEED_LINE.format(seed=int(seed)) + obs)
        self.env.close()
        return Dataset.from_dict({"prompt": prompts})

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, list]:
        if trainer.processing_class is not self.tokenizer:
            raise ValueError("GRPOTrainer's processing_class is not the tokenizer EnvRollout was built with: the env's prompt "
                             "ids and the trainer's must come from one tokenizer")
        seeds, texts = zip(*(prompt_seed(p) for p in prompts))
        with self.engine.bound(trainer):
            batch = self.collector.collect(seeds)
        out: dict[str, list] = {k: [] for k in ("prompt_ids", "completion_ids", "logprobs", "env_mask", "env_reward",
                                                "env_reward_components")}
        for i, (ep, text) in enumerate(zip(batch.episodes, texts)):
            if text and decode(self.tokenizer, ep.steps[0].prompt_ids) != text:
                raise ValueError(f"prompt {i} (seed {ep.seed}) is not what {self.env_id} poses with these env_kwargs: the "
                                 "dataset was built for another env configuration")
            rows = episode_rows(ep, i)
            if len(rows) != 1:
                raise ValueError(f"{self.env_id}'s episode (seed {ep.seed}) is {len(rows)} sequences, not one growing one (its "
                                 "context was reset between steps), and a TRL row holds one: train it with `thinkgym train`")
            row = rows[0]
            out["prompt_ids"].append(row.input_ids[: row.prompt_len])
            out["completion_ids"].append(row.input_ids[row.prompt_len:])
            out["logprobs"].append(row.old_logprobs)
            out["env_mask"].append(row.loss_mask)
            out["env_reward"].append(ep.reward)
            out["env_reward_components"].append({k: float(v) for k, v in ep.info.get("reward_components", {}).items()})
        return out


def thinkgym_reward(completions: list[Any], env_reward: list[float], env_reward_components: list[dict[str, float]] | None = None,
                    log_metric: Any = None, **_: Any) -> list[float]:
    """TRL reward function: the env's reward that `EnvRollout` returned with each completion. Logs the mean of
    each reward component (they sum to the reward; a missing one counts 0) as `env/<name>/mean`."""
    if log_metric is not None and env_reward_components:
        for name in sorted({k for c in env_reward_components for k in c}):
            log_metric(f"env/{name}/mean", float(np.mean([c.get(name, 0.0) for c in env_reward_components])))
    return [float(r) for r in env_reward]


# -- environment_factory ---------------------------------------------------------------------------
class _ToolEnv:
    """One thinkgym env behind TRL's `environment_factory` contract: `reset(**row)` poses the problem of the
    row's `seed`, the public methods are tools, `get_reward()` is the env's reward for the episode. The
    env is stepped with text actions; an episode never answered ends, when scored, with an empty action
    (the env's reward for no answer)."""

    env_id = ""

    def __init__(self, env_kwargs: dict[str, Any] | None = None):
        self._env = gym.make(self.env_id, disable_env_checker=True, **(env_kwargs or {})).unwrapped
        self._done, self._reward = True, None

    def reset(self, seed: int | None = None, **row: Any) -> str:
        if seed is None:
            raise ValueError(f"{type(self).__name__}.reset needs the dataset's `seed` column (the env seed that poses the "
                             f"problem; one per GRPO group); the row has {sorted(row)}")
        self._env.reset(seed=int(seed))
        self._done, self._reward = False, None
        return self._question(self._env.problem)

    def get_reward(self) -> float:
        if not self._done:
            self._act("")
        return float(self._reward)

    def _question(self, problem: Any) -> str:
        raise NotImplementedError

    def _act(self, text: str) -> dict[str, Any]:
        _, reward, terminated, truncated, info = self._env.step(text)
        if terminated or truncated:
            self._done, self._reward = True, float(reward)
            self._env.close()
        return info


OVER = "The episode is over: nothing more runs."


class CodeInterpreterTools(_ToolEnv):
    """`CodeInterpreter-v0` for TRL's `environment_factory`: `python` runs code in the episode's sandboxed,
    persistent interpreter and returns its output (the env's, cut as CoRT cuts it, with its call-cap notices);
    `submit_answer` ends the episode. The reward is the env's: correctness + 0.1·(−1 if no code ran
    successfully). `functools.partial(CodeInterpreterTools, env_kwargs={...})` configures the env."""

    env_id = "CodeInterpreter-v0"

    def _question(self, problem: Any) -> str:
        return problem.prompt + "\nRun Python with the python tool as often as it helps, then give the final answer with submit_answer."

    def python(self, code: str) -> str:
        """Run Python code in a persistent sandboxed interpreter and return what it printed.

        Args:
            code: The Python source to run. Variables and imports persist between calls.

        Returns:
            The printed output, or the traceback of the error.
        """
        if self._done:
            return OVER
        if "```" in code:
            return "The code must not contain ``` (a fence ends the block)."
        info = self._act(f"```python\n{code}\n```\n")
        if self._done:
            return "The thinking budget is spent: the episode is over."
        start, end = info["env_token_spans"][-1]
        block = self._env.decode(info["prompt_token_ids"][start:end])
        return block.removeprefix("```output\n").removesuffix("\n```\n")

    def submit_answer(self, answer: str) -> str:
        """Submit the final answer, which ends the episode.

        Args:
            answer: The final answer, for example a number.

        Returns:
            A confirmation.
        """
        if self._done:
            return OVER
        self._act(f"</think>\\boxed{{{answer}}}")
        return "Answer recorded."


class Text2SQLTools(_ToolEnv):
    """`Text2SQL-v0` for TRL's `environment_factory`: `run_sql` runs a query on the episode's database
    (read-only and time-limited, as the task's own execution feedback does) and returns its rows;
    `submit_sql` ends the episode. The reward is the env's: execution accuracy of the submitted query."""

    env_id = "Text2SQL-v0"
    max_rows_shown = 20

    def _question(self, problem: Any) -> str:
        return (f"Schema:\n{problem.meta['schema']}\n\nQuestion: {problem.meta['question']}\n\nYou may try queries with "
                "run_sql; give your final SQLite query with submit_sql.")

    def run_sql(self, query: str) -> str:
        """Run a read-only SQLite query on the question's database and return its rows.

        Args:
            query: One SQLite query.

        Returns:
            The rows (at most 20 shown), or the error.
        """
        if self._done:
            return OVER
        res = self._env.task.execute(self._env.problem, query)
        if not res.ok:
            return f"error: {res.error}"
        shown = "\n".join(repr(r) for r in res.rows[: self.max_rows_shown])
        more = len(res.rows) - self.max_rows_shown
        return f"{len(res.rows)} rows\n{shown}" + (f"\n... {more} more" if more > 0 else "")

    def submit_sql(self, query: str) -> str:
        """Submit the final SQLite query, which ends the episode.

        Args:
            query: The SQLite query that answers the question.

        Returns:
            A confirmation.
        """
        if self._done:
            return OVER
        self._act(f"</think>\n```sql\n{query}\n```")
        return "Query recorded."
