"""Reasoning in one context: the policy thinks, then answers; `LongCoT-v0` is this env.

The context is append-only: if an action stops before ending (a stop string), the next
observation is the query plus everything written so far, and the budget is what remains.
Other task environments subclass `ReasoningEnv` and change only the task or the continuation.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping

import numpy as np
from gymnasium.error import ResetNeeded

from .compute import compare_with_longcot
from .core import TextEnv, TokenAction
from .tasks import Problem, Task, Verdict, make_task
from .tokenizer import THINK_OPEN, TokenizerLike

# Plain strings longer than this many characters per budget token are cut before tokenising, so a
# 1 MB action costs no more than a long one; no real tokenizer averages 32 characters a token.
_CHARS_PER_TOKEN_CAP = 32


def split_task_kwargs(config: type, task_kwargs: dict[str, Any] | None,
                      kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The task's knobs, from `task_kwargs` and from keyword arguments named after `config`'s fields
    (`gym.make("SAT-v0", k=6)`), and the keyword arguments left for the env. A knob given both ways
    is refused: silently preferring one would hide a typo or a stale default."""
    names = {f.name for f in fields(config)}
    flat = {k: v for k, v in kwargs.items() if k in names}
    given = dict(task_kwargs or {})
    both = sorted(flat.keys() & given.keys())
    if both:
        raise ValueError(f"{both} given both as keyword arguments and in task_kwargs; give each once")
    return {**flat, **given}, {k: v for k, v in kwargs.items() if k not in names}


class ReasoningEnv(TextEnv):
    """A task posed once, answered in one growing context with a total thinking budget."""

    # An env built around one task narrows this: `task=` must then be that task's name or an instance.
    task_type: type[Task] = Task
    # The keys `reset(options=...)` reads; a subclass that reads more adds them.
    option_keys: tuple[str, ...] = ("problem_seed",)

    def __init__(
        self,
        task: str | Task = "running_sum",
        task_kwargs: dict[str, Any] | None = None,
        max_thinking_tokens: int = 24576,
        tokenizer: TokenizerLike = None,
        chat_template: bool | str = "auto",
        format_reward: float = 0.0,
        stop: tuple[str, ...] | list[str] = (),
        render_mode: str | None = None,
    ):
        super().__init__(tokenizer, render_mode)
        if not isinstance(max_thinking_tokens, int) or max_thinking_tokens <= 0:
            raise ValueError(f"max_thinking_tokens must be a positive integer; got {max_thinking_tokens!r}")
        if chat_template not in (True, False, "auto"):
            raise ValueError(f"chat_template must be True, False or 'auto'; got {chat_template!r}")
        self.check_task(task)
        self.task = make_task(task, **(task_kwargs or {}))
        self.max_thinking_tokens = max_thinking_tokens
        self.use_chat_template = chat_template is True or (chat_template == "auto" and bool(getattr(self.tokenizer, "chat_template", None)))
        self.format_reward = float(format_reward)
        self.stop = list(stop)
        self.problem: Problem | None = None
        self._done = True

    def check_task(self, task: Any) -> None:
        """Refuse, before building it, a task this env cannot pose (its `task_type` decides)."""
        kind = self.task_type
        if kind is Task or (task == kind.name if isinstance(task, str) else isinstance(task, kind)):
            return
        shown = repr(task) if isinstance(task, str) else f"<{type(task).__name__}>"
        raise ValueError(f"task={shown} is not a task {type(self).__name__} can pose: task must be "
                         f"{kind.name!r} or a {kind.__name__}")

    # -- prompt -----------------------------------------------------------------------------------
    def format_prompt(self, prompt: str) -> str:
        """The query text: the task prompt, R1-style chat-templated with a `<think>` opening if asked."""
        if not self.use_chat_template:
            return prompt
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        return text if text.rstrip().endswith(THINK_OPEN) else text + THINK_OPEN + "\n"

    # -- episode ----------------------------------------------------------------------------------
    def read_options(self, options: Any) -> dict[str, Any]:
        """`reset`'s options as a dict, refused by name when they are not a dict, hold a key this env
        does not read (a typo would otherwise be ignored), or a `problem_seed` that is not an integer >= 0."""
        if options is None:
            return {}
        if not isinstance(options, Mapping):
            raise ValueError(f"options must be a dict (keys {list(self.option_keys)}) or None; got {type(options).__name__}: {options!r}")
        unknown = sorted(map(repr, set(options) - set(self.option_keys)))
        if unknown:
            raise ValueError(f"options has unknown key(s) {', '.join(unknown)}; {type(self).__name__} reads {list(self.option_keys)}")
        seed = options.get("problem_seed")
        if seed is not None and not (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0):
            raise ValueError(f"options['problem_seed'] must be an integer >= 0; got {seed!r}")
        return dict(options)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        options = self.read_options(options)
        super().reset(seed=seed)
        problem_seed = int(options["problem_seed"]) if options.get("problem_seed") is not None else int(self.np_random.integers(0, 2**31 - 1))
        self.problem = self.task.sample(problem_seed)
        self.query_ids = self.encode(self.format_prompt(self.problem.prompt))
        self.actions: list[list[int]] = []
        self.segments: list[tuple[int, int]] = []
        self._done = False
        self._prompt_ids = list(self.query_ids)
        self._budget = self.first_budget()
        return self.observe(self._prompt_ids, self._budget, self.stop, difficulty=dict(self.problem.difficulty))

    def first_budget(self) -> int:
        return self.max_thinking_tokens

    def set_thinking_budget(self, tokens: int) -> None:
        """Change the total thinking budget from the next episode on (SIRI's length schedule)."""
        if not isinstance(tokens, int) or tokens <= 0:
            raise ValueError(f"the thinking budget must be a positive integer; got {tokens!r}")
        self.max_thinking_tokens = tokens

    def step(self, action: Any) -> tuple[str, float, bool, bool, dict]:
        if self._done:
            raise ResetNeeded("the episode is over: call reset() before step()")
        if isinstance(action, str) and not isinstance(action, TokenAction):
            action = action[: self._budget * _CHARS_PER_TOKEN_CAP]
        ids, ended, malformed = self.parse_action(action, self._budget)
        self.actions.append(ids)
        self.segments.append((len(self._prompt_ids), len(ids)))
        if ended or malformed:
            return self.finish(self.answer_text(ids), terminated=True, malformed=malformed)
        return self.continue_after(ids)

    @property
    def thinking_tokens(self) -> int:
        return sum(len(a) for a in self.actions)

    def answer_text(self, last_ids: list[int]) -> str:
        """The text the answer is read from once the policy ends: here, everything it wrote."""
        return self.decode([t for a in self.actions for t in a])

    def continue_after(self, ids: list[int]) -> tuple[str, float, bool, bool, dict]:
        """An action that did not end: append it, or truncate once the budget is spent."""
        remaining = self.max_thinking_tokens - self.thinking_tokens
        if remaining <= 0:
            return self.finish(None, terminated=False)
        self._prompt_ids = self._prompt_ids + ids
        self._budget = remaining
        obs, info = self.observe(self._prompt_ids, remaining, self.stop)
        return obs, 0.0, False, False, info

    def finish(self, text: str | None, terminated: bool, malformed: bool = False) -> tuple[str, float, bool, bool, dict]:
        """End the episode: score `text` (None when a budget ran out) and report everything."""
        self._done = True
        verdict = Verdict(0.0, None, malformed) if text is None or malformed else self.task.verify(self.problem, text)
        components = {"correctness": verdict.score}
        if verdict.format_error:
            components["format"] = self.format_reward
        reward = float(sum(components.values()))
        info = {
            "correct": verdict.correct,
            "answer": verdict.answer,
            "reward_components": components,
            "format_error": verdict.format_error,
            "thinking_tokens": self.thinking_tokens,
            "difficulty": dict(self.problem.difficulty),
            **self.episode_stats(),
            **self.final_info(),
        }
        return "", reward, terminated, not terminated, info

    def episode_stats(self) -> dict[str, Any]:
        return {"compute": compare_with_longcot(self.segments, len(self.query_ids))}
