"""A difficulty curriculum for any task with knobs: SATURN's promotion rule, reusable.

Levels are ordered knob settings (for SAT, task kwargs such as {"n": 3, "k": 5, "l": 6}). Every
`check_every` recorded episodes, pass@1 over the last `window` results at the current level is
compared with the thresholds: above `promote_above` (SATURN's epsilon: 0.5 for 1.5B models, 0.75
for 7B, checked every 250 samples) moves one level up; below `demote_below` (off by default) moves
one level down. A move clears the window, so the next decision only sees the new level.
The state (level, counters, window, history of moves) goes into checkpoints via `state_dict`.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Sequence


def levels_from_attributes(**attributes: Sequence[Any]) -> list[dict[str, Any]]:
    """Levels from per-attribute value lists, reasoning-gym style: level i takes the i-th value of
    each attribute (a one-value list holds for every level). E.g. l=[5, 6, 13], n=[3]."""
    lengths = {len(v) for v in attributes.values() if len(v) != 1}
    if not attributes or any(len(v) == 0 for v in attributes.values()) or len(lengths) > 1:
        raise ValueError(f"attributes must be non-empty lists of one common length (or of length 1); got {attributes!r}")
    count = lengths.pop() if lengths else 1
    return [{name: values[i if len(values) > 1 else 0] for name, values in attributes.items()} for i in range(count)]


class Curriculum:
    def __init__(self, levels: Sequence[dict[str, Any]], promote_above: float = 0.5, check_every: int = 250,
                 window: int | None = None, demote_below: float | None = None, start_level: int = 0):
        if not levels or not all(isinstance(level, dict) for level in levels):
            raise ValueError(f"levels must be a non-empty sequence of dicts of knob values; got {levels!r}")
        if not 0.0 <= promote_above <= 1.0:
            raise ValueError(f"promote_above must be in [0, 1]; got {promote_above!r}")
        if demote_below is not None and not 0.0 <= demote_below < promote_above:
            raise ValueError(f"demote_below must be None or in [0, promote_above={promote_above}); got {demote_below!r}")
        window = check_every if window is None else window
        for name, value in (("check_every", check_every), ("window", window)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if not isinstance(start_level, int) or not 0 <= start_level < len(levels):
            raise ValueError(f"start_level must be in 0..{len(levels) - 1}; got {start_level!r}")
        self.levels = [dict(level) for level in levels]
        self.promote_above, self.demote_below = float(promote_above), demote_below
        self.check_every, self.window = check_every, window
        self.level = start_level
        self.episodes = 0  # results recorded in all
        self._since_check = 0
        self._results: deque[float] = deque(maxlen=window)
        self.history: list[dict[str, Any]] = []  # one entry per move

    @property
    def knobs(self) -> dict[str, Any]:
        """The current level's knob values."""
        return dict(self.levels[self.level])

    @property
    def pass_at_1(self) -> float | None:
        return sum(self._results) / len(self._results) if self._results else None

    def record(self, correct: bool | float) -> bool:
        """Add one episode's result (1 = solved); returns whether the level changed."""
        self._results.append(float(correct))
        self.episodes += 1
        self._since_check += 1
        if self._since_check < self.check_every:
            return False
        self._since_check = 0
        return self.decide(self.pass_at_1)

    def decide(self, pass_at_1: float) -> bool:
        """Apply the rule to a pass@1 (e.g. measured on a held-out validation set); True if moved."""
        step = 0
        if pass_at_1 > self.promote_above and self.level + 1 < len(self.levels):
            step = 1
        elif self.demote_below is not None and pass_at_1 < self.demote_below and self.level > 0:
            step = -1
        if step:
            self.history.append({"episode": self.episodes, "from": self.level, "to": self.level + step, "pass_at_1": pass_at_1})
            self.level += step
            self._results.clear()
            self._since_check = 0
        return bool(step)

    def info(self) -> dict[str, Any]:
        """What environments report in `info["curriculum"]` (the agent logs `curriculum/level`).

        Counters stay out so that the same seed and action give the same info; see `state_dict`.
        """
        return {"level": self.level, "num_levels": len(self.levels), "knobs": self.knobs}

    def state_dict(self) -> dict[str, Any]:
        return {"levels": [dict(x) for x in self.levels], "level": self.level, "episodes": self.episodes,
                "since_check": self._since_check, "results": list(self._results),
                "history": [dict(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["levels"] != self.levels:
            raise ValueError("state_dict was saved with different levels; build the Curriculum with the same levels")
        self.level, self.episodes, self._since_check = int(state["level"]), int(state["episodes"]), int(state["since_check"])
        self._results = deque((float(r) for r in state["results"]), maxlen=self.window)
        self.history = [dict(h) for h in state["history"]]
