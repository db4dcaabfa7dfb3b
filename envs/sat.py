"""SAT-v0 and SATCurriculum-v0: SATURN's SAT task in one context, alone or under a curriculum.

Reward (SATURN's): 1 when every clause holds, 0 for a boxed answer that fails, and
`format_reward` (-1 by default) when no answer can be read, truncated responses included, since
SATURN's grader sees no box in them either. The final `info` adds `assignment` (the k bits as
read), `satisfied_clauses` and `num_clauses`; `info["difficulty"]` holds n, k, l and D(n, k, l).
"""

from __future__ import annotations

from typing import Any, Sequence

from .curriculum import Curriculum
from .reasoning import ReasoningEnv, split_task_kwargs
from .tasks import make_task
from .tasks.sat import SATURN_STAGES, SATConfig, SATTask

# SATURN generates up to 10,000 (1.5B) or 8,192 (7B) tokens.
DEFAULT_BUDGET = 10000


class SATEnv(ReasoningEnv):
    """One SAT instance per episode. The task's knobs (SATConfig: n, k, l, generator, path,
    require_think, max_tries) go in `task_kwargs` or as keyword arguments (`k=6`)."""

    task_type = SATTask

    def __init__(self, task: str | SATTask = "sat", task_kwargs: dict[str, Any] | None = None,
                 max_thinking_tokens: int = DEFAULT_BUDGET, format_reward: float = -1.0, **kwargs: Any):
        task_kwargs, kwargs = split_task_kwargs(SATConfig, task_kwargs, kwargs)
        super().__init__(task, task_kwargs, max_thinking_tokens=max_thinking_tokens, format_reward=format_reward, **kwargs)

    def finish(self, text: str | None, terminated: bool, malformed: bool = False):
        obs, reward, term, trunc, info = super().finish(text, terminated, malformed or text is None)
        info.update(self.task.report(self.problem, info["answer"]))
        return obs, reward, term, trunc, info


def level_kwargs(shared: dict[str, Any], level: dict[str, Any]) -> dict[str, Any]:
    """A level's task kwargs over the shared ones; a knob set both ways would be silently overridden."""
    both = sorted(shared.keys() & level.keys())
    if both:
        raise ValueError(f"{both} set both for every level and by the level {level}; set it in one place")
    return {**shared, **level}


class SATCurriculumEnv(SATEnv):
    """SAT-v0 whose (n, k, l) follows a Curriculum; it starts from SATURN's released stages.

    Each level is a dict of SAT task kwargs (a level may also be {"path": SATURN_FILE}); knobs in
    `task_kwargs` (or given as keyword arguments, e.g. `require_think=True`) apply to every level.
    `options={"level": i}` poses one episode at level i without recording its result.
    """

    option_keys = (*SATEnv.option_keys, "level")

    def __init__(self, levels: Sequence[dict[str, Any]] | None = None, promote_above: float = 0.5,
                 check_every: int = 250, window: int | None = None, demote_below: float | None = None,
                 start_level: int = 0, task: str = "sat", task_kwargs: dict[str, Any] | None = None, **kwargs: Any):
        if not (isinstance(task, str) and task == SATTask.name):
            raise ValueError(f"task={task!r}: SATCurriculumEnv builds one SAT task per level, so task must be "
                             f"{SATTask.name!r} (knobs for every level go in task_kwargs)")
        shared, kwargs = split_task_kwargs(SATConfig, task_kwargs, kwargs)
        levels = [dict(n=n, k=k, l=l) for n, k, l in SATURN_STAGES] if levels is None else list(levels)
        self.curriculum = Curriculum(levels, promote_above, check_every, window, demote_below, start_level)
        self._tasks = [make_task(task, **level_kwargs(shared, lv)) for lv in levels]
        super().__init__(self._tasks[0], **kwargs)
        self._recorded = True

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        forced = self.read_options(options).get("level")
        if forced is not None and not (isinstance(forced, int) and 0 <= forced < len(self._tasks)):
            raise ValueError(f"options['level'] must be in 0..{len(self._tasks) - 1}; got {forced!r}")
        self._level = self.curriculum.level if forced is None else forced
        self._recorded = forced is None
        self.task = self._tasks[self._level]
        obs, info = super().reset(seed=seed, options=options)
        return obs, {**info, "curriculum": {**self.curriculum.info(), "episode_level": self._level}}

    def finish(self, text: str | None, terminated: bool, malformed: bool = False):
        obs, reward, term, trunc, info = super().finish(text, terminated, malformed)
        if self._recorded:
            self.curriculum.record(info["correct"])
        info["curriculum"] = {**self.curriculum.info(), "episode_level": self._level}
        return obs, reward, term, trunc, info

    def state_dict(self) -> dict[str, Any]:
        return self.curriculum.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.curriculum.load_state_dict(state)
