"""Delethink (The Markovian Thinker, arXiv 2510.06557): chunked thinking with a context reset.

The policy thinks in chunks of at most C tokens. When a chunk fills its budget without ending,
the context is reset to the query, the first `head` tokens of chunk 1, and the last tokens of the
latest chunk, so that the carryover is m tokens; the next chunk may write C − m tokens. The trace
ends when the policy ends its output (terminated) or after I chunks (truncated). Each context is
at most |query| + C tokens whatever the thinking length: compute grows linearly, not quadratically.
"""

from __future__ import annotations

from typing import Any

from thinkgym.rewards.schedules import delethink_max_chunks

from .reasoning import ReasoningEnv


class DelethinkEnv(ReasoningEnv):
    """Defaults are the paper's: C = 8192, m = C/2, I = 5 chunks (a 24K budget), head = 100."""

    def __init__(self, task: Any = "running_sum", chunk_size: int = 8192, carryover: int | None = None,
                 max_chunks: int = 5, head: int = 100, **kwargs: Any):
        carryover = chunk_size // 2 if carryover is None and isinstance(chunk_size, int) else carryover
        for name, value in (("chunk_size", chunk_size), ("carryover", carryover), ("max_chunks", max_chunks)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if not isinstance(head, int) or head < 0:
            raise ValueError(f"head must be an integer >= 0; got {head!r}")
        if carryover >= chunk_size:
            raise ValueError(f"carryover must be smaller than chunk_size (accepted: 0 < carryover < {chunk_size}); got {carryover}")
        if head >= carryover:
            raise ValueError(f"head must be smaller than carryover (accepted: 0 <= head < {carryover}); got {head}")
        self.chunk_size, self.carryover, self.max_chunks, self.head = chunk_size, carryover, max_chunks, head
        budget = chunk_size + (max_chunks - 1) * (chunk_size - carryover)
        super().__init__(task, max_thinking_tokens=budget, **kwargs)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        self.carried: list[bool | None] = []  # per reset: did the carryover hold the task's state?
        return super().reset(seed=seed, options=options)

    def first_budget(self) -> int:
        return self.chunk_size

    def set_thinking_budget(self, tokens: int) -> None:
        """A budget becomes a chunk cap: the most chunks whose C + (I − 1)(C − m) fits in it."""
        self.max_chunks = delethink_max_chunks(tokens, self.chunk_size, self.carryover)
        super().set_thinking_budget(self.chunk_size + (self.max_chunks - 1) * (self.chunk_size - self.carryover))

    @property
    def carry_ids(self) -> list[int]:
        """The head and tail carried into the current chunk's prompt (empty in chunk 1)."""
        return self._prompt_ids[len(self.query_ids):]

    def answer_text(self, last_ids: list[int]) -> str:
        """The last chunk with its carryover re-attached, so an answer cut by a boundary parses."""
        return self.decode(self.carry_ids + last_ids)

    def continue_after(self, ids: list[int]):
        if len(self.actions) >= self.max_chunks:
            return self.finish(None, terminated=False)
        head = self.actions[0][: self.head]
        # The tail is the end of the thinking stream (previous tail + this chunk): when m > C - m,
        # one later chunk is shorter than the tail.
        n_tail = self.carryover - len(head)
        stream = self.carry_ids[len(head):] + ids if len(self.actions) > 1 else ids
        tail = stream[max(0, len(stream) - n_tail):]
        self._prompt_ids = self.query_ids + head + tail
        self.carried.append(self.task.holds_state(self.problem, self.decode(head + tail)))
        self._budget = self.chunk_size - self.carryover
        obs, info = self.observe(self._prompt_ids, self._budget, self.stop, chunk=len(self.actions))
        return obs, 0.0, False, False, info

    def episode_stats(self) -> dict[str, Any]:
        stats = {"chunks": len(self.actions), **super().episode_stats()}
        if None not in self.carried:  # per reset, whether the trace's state survived it
            stats["carried_state"] = list(self.carried)
        return stats
