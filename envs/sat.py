"""SAT-v0 and SATCurriculum-v0: SATURN's SAT task in one context, alone or under a curriculum.

Reward (SATURN's): 1 when every clause holds, 0 for a boxed answer that fails, and
`format_reward` (-1 by default) when no answer can be read, truncated responses included, since
SATURN's grader sees no box in them either. The final `info` adds `assignment` (the k bits as
read), `satisfied_clauses` and `num_clauses`; `info["difficulty"]` holds n, k, l and D(n, k, l).
"""

from __future__ import annotations

from typing import Any, Sequence

from .curriculum import Curriculum
from .reasoning import ReasoningEnv
from .tasks import make_task
from .tasks.sat import SATURN_STAGES, SATTask

# SATURN generates up to 10,000 (1.5B) or 8,192 (7B) tokens.
DEFAULT_BUDGET = 10000


class SATEnv(ReasoningEnv):
    """One SAT instance per episode; knobs n, k, l, generator, path and require_think as in SATConfig."""

    def __init__(self, n: int = 3, k: int = 5, l: int = 5, generator: str = "planted", path: str = "",
                 require_think: bool = False, max_thinking_tokens: int = DEFAULT_BUDGET,
                 format_reward: float = -1.0, **kwargs: Any):
        task = SATTask(n=n, k=k, l=l, generator=generator, path=path, require_think=require_think)
        super().__init__(task, max_thinking_tokens=max_thinking_tokens, format_reward=format_reward, **kwargs)

    def finish(self, text: str | None, terminated: bool, malformed: bool = False):
        obs, reward, term, trunc, info = super().finish(text, terminated, malformed or text is None)
        info.update(self.task.report(self.problem, info["answer"]))
        return obs, reward, term, trunc, info


class SATCurriculumEnv(SATEnv):
    """SAT-v0 whose (n, k, l) follows a Curriculum; it starts from SATURN's released stages.

    Each level is a dict of SAT task kwargs (a level may also be {"path": SATURN_FILE}).
    `options={"level": i}` poses one episode at level i without recording its result.
    """

    def __init__(self, levels: Sequence[dict[str, Any]] | None = None, promote_above: float = 0.5,
                 check_every: int = 250, window: int | None = None, demote_below: float | None = None,
                 start_level: int = 0, generator: str = "planted", require_think: bool = False, **kwargs: Any):
        levels = [dict(n=n, k=k, l=l) for n, k, l in SATURN_STAGES] if levels is None else list(levels)
        self.curriculum = Curriculum(levels, promote_above, check_every, window, demote_below, start_level)
        self._tasks = [make_task("sat", **{"generator": generator, "require_think": require_think, **lv}) for lv in levels]
        super().__init__(**{"generator": generator, "require_think": require_think, **levels[0]}, **kwargs)
        self._recorded = True

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        forced = (options or {}).get("level")
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
