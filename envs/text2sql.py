"""`Text2SQL-v0`: answer a question about a SQLite database with one query, scored by execution.

It is a `ReasoningEnv` whose task is `text2sql`; the only addition is `info["sql_error"]` at the
end of an episode: the syntax, runtime, permission or time-limit error of the policy's query (None
when it ran), so an agent can tell a wrong query from one that did not run.
"""

from __future__ import annotations

from typing import Any

from .reasoning import ReasoningEnv
from .tasks.text2sql import Text2SQLTask


class Text2SQLEnv(ReasoningEnv):
    task_type = Text2SQLTask

    def __init__(self, task: Any = "text2sql", **kwargs: Any):
        super().__init__(task, **kwargs)

    def finish(self, text: str | None, terminated: bool, malformed: bool = False):
        obs, reward, term, trunc, info = super().finish(text, terminated, malformed)
        scored = text is not None and not malformed
        info["sql_error"] = self.task.verify(self.problem, text).error if scored else None  # cached verdict
        return obs, reward, term, trunc, info
