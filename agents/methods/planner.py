"""Generator–discriminator planning: sample N candidates, score each, submit the best.

Re-ranking as in "When Reasoning Beats Scale" (arXiv 2505.03786): the generator samples N
answers (temperature 0.2, N = 5 by default), a `Discriminator` gives each a soft score, and the
highest score wins (ties go to the lexicographically smallest answer). With `check_exec` a
candidate that does not run loses 1 (execution feedback, where the task can run answers without
the gold one, as Text2SQL can); with `use_exec_res` its first result rows go into the judging
prompt. A candidate with no answer to extract cannot be right and scores `NO_ANSWER`.

The oracle label (the task's verdict against the gold answer) is recorded for the metrics only;
it never enters the selection. Works on any `ReasoningEnv` whose task verifies a final answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import nan
from typing import Any, Sequence

import numpy as np

from thinkgym.envs import TokenAction

from ..rollout.engine import Completion, Engine, GenerationRequest
from .discriminator import Discriminator, Judgement

NO_ANSWER = -2.0
EXEC_PENALTY = 1.0
RESULT_ROWS = 5


@dataclass
class Candidate:
    completion: Completion
    answer: str | None
    correct: bool  # oracle label: for metrics only
    executable: bool | None = None
    judgement: Judgement | None = None
    score: float = 0.0


def ranking(scores: Sequence[float], keys: Sequence[str]) -> list[int]:
    """Candidate indices best first: higher score, then the lexicographically smaller answer."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], keys[i]))


def ranking_metrics(groups: Sequence[tuple[Sequence[float], Sequence[bool], Sequence[str]]], threshold: float = 0.5) -> dict[str, float]:
    """The paper's metrics over questions, each a (scores, labels, answers) list of its candidates.

    - pws_acc: over candidate pairs of one question with different labels, the fraction where the
      correct one scores higher (a tie counts 1/2, the chance of a coin flip);
    - f1_pos / f1_neg / macro_f1: labels predicted as score > threshold, over all candidates;
    - hit@1, mrr: over questions with at least one correct candidate, the top-ranked one is correct /
      1 / rank of the first correct one;
    - exec_acc: over all questions, the selected candidate is correct (end-to-end accuracy).
    NaN where a metric has nothing to average.
    """
    pairs, tp, fp, fn, tn, hits, rr, selected = [], 0, 0, 0, 0, [], [], []
    for scores, labels, keys in groups:
        order = ranking(scores, keys)
        selected.append(bool(labels[order[0]]))
        if any(labels):
            hits.append(float(labels[order[0]]))
            rr.append(1.0 / (1 + next(r for r, i in enumerate(order) if labels[i])))
        for i, si in enumerate(scores):
            pred = si > threshold
            tp, fp, fn, tn = tp + (pred and labels[i]), fp + (pred and not labels[i]), fn + (not pred and labels[i]), tn + (not pred and not labels[i])
            pairs += [1.0 if si > sj else 0.5 if si == sj else 0.0 for j, sj in enumerate(scores) if labels[i] and not labels[j]]
    f1_pos = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else nan
    f1_neg = 2 * tn / (2 * tn + fn + fp) if tn + fn + fp else nan
    mean = lambda xs: float(np.mean(xs)) if len(xs) else nan  # noqa: E731
    return {"pws_acc": mean(pairs), "f1_pos": f1_pos, "f1_neg": f1_neg, "macro_f1": (f1_pos + f1_neg) / 2,
            "hit@1": mean(hits), "mrr": mean(rr), "exec_acc": mean(selected),
            "questions": len(groups), "pairs": len(pairs), "oracle": mean([any(g[1]) for g in groups])}


def random_selection_metrics(groups: Sequence[tuple[Sequence[float], Sequence[bool], Sequence[str]]], draws: int = 500,
                             seed: int = 0) -> dict[str, float]:
    """The same metrics for a selector that scores the same candidates uniformly at random (mean of draws)."""
    rng = np.random.default_rng(seed)
    runs = [ranking_metrics([(rng.random(len(s)).tolist(), lab, keys) for s, lab, keys in groups]) for _ in range(draws)]
    return {k: float(np.mean([r[k] for r in runs])) for k in runs[0]} if runs else {}


class Planner:
    """Sample N candidates from a generator engine, score them, and act with the best one."""

    def __init__(self, generator: Engine, discriminator: Discriminator | None = None, n: int = 5, temperature: float = 0.2,
                 top_p: float = 1.0, max_new_tokens: int | None = None, check_exec: bool = False, use_exec_res: bool = False,
                 include_schema: bool = True):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer; got {n!r}")
        if discriminator is None and use_exec_res:
            raise ValueError("use_exec_res=True needs a discriminator (the result rows go into its prompt)")
        self.generator, self.discriminator, self.n = generator, discriminator, n
        self.temperature, self.top_p, self.max_new_tokens = temperature, top_p, max_new_tokens
        self.check_exec, self.use_exec_res, self.include_schema = check_exec, use_exec_res, include_schema
        self.candidates: list[Candidate] = []

    def sample(self, info: dict) -> list[Completion]:
        """N completions of the observation's prompt ids, within the env's budget (and the planner's cap)."""
        budget = min(info["max_new_tokens"], self.max_new_tokens or info["max_new_tokens"])
        req = GenerationRequest(list(info["prompt_token_ids"]), budget, info["stop"], self.temperature, self.top_p, self.n)
        return self.generator.generate([req])[0]

    def score(self, env: Any, completions: Sequence[Completion]) -> list[Candidate]:
        """Label, execute and judge the candidates of the env's current problem."""
        env = env.unwrapped
        task, problem = env.task, env.problem
        cands = []
        for c in completions:
            verdict = task.verify(problem, c.text)
            cands.append(Candidate(c, verdict.answer, verdict.correct))
        runs = hasattr(task, "execute") and (self.check_exec or self.use_exec_res)
        results = {}
        for cand in cands:
            if runs and cand.answer is not None:
                results[id(cand)] = task.execute(problem, cand.answer)
                cand.executable = results[id(cand)].ok
        to_judge = [c for c in cands if c.answer is not None]
        if self.discriminator is not None and to_judge:
            question = problem.meta.get("question", problem.prompt)
            schema = problem.meta.get("schema", "") if self.include_schema else ""
            items = [(question, c.answer, self._context(schema, results.get(id(c)))) for c in to_judge]
            for cand, judgement in zip(to_judge, self.discriminator.judge(items)):
                cand.judgement, cand.score = judgement, judgement.score
        for cand in cands:
            if cand.answer is None:
                cand.score = NO_ANSWER
            elif self.check_exec and cand.executable is False:
                cand.score -= EXEC_PENALTY
        return cands

    def _context(self, schema: str, result: Any) -> str:
        parts = [f"Schema:\n{schema}"] if schema else []
        if self.use_exec_res and result is not None:
            rows = "\n".join(map(str, result.rows[:RESULT_ROWS])) if result.ok else f"error: {result.error}"
            parts.append(f"Result (first {RESULT_ROWS} rows):\n{rows}")
        return "\n\n".join(parts)

    def select(self, cands: Sequence[Candidate]) -> int:
        return ranking([c.score for c in cands], [c.answer or "" for c in cands])[0]

    def act(self, env: Any, info: dict) -> TokenAction:
        """The chosen candidate as the final action (candidates are in `self.candidates`)."""
        self.candidates = self.score(env, self.sample(info))
        best = self.candidates[self.select(self.candidates)].completion
        return TokenAction(best.text, best.token_ids, eos=True)

    def evaluate(self, env: Any, seeds: Sequence[int]) -> tuple[dict[str, float], dict[str, float]]:
        """Play one episode per seed; the planner's metrics and random selection's over the same candidates."""
        groups, rewards = [], []
        for seed in seeds:
            _, info = env.reset(seed=seed)
            action = self.act(env, info)
            rewards.append(env.step(action)[1])
            groups.append(([c.score for c in self.candidates], [c.correct for c in self.candidates],
                           [c.answer or "" for c in self.candidates]))
        metrics = {**ranking_metrics(groups), "mean_reward": float(np.mean(rewards)) if rewards else nan}
        return metrics, random_selection_metrics(groups)
