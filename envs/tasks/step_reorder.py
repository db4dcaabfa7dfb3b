"""StepReorder-v0: MR-RLVR's step-reordering task (Wang et al., arXiv 2511.17473).

`k` consecutive steps of a worked solution are shuffled and labelled `[S1]..[Sk]`; the other
steps stay in place as context. The policy answers, after `</think>`, with the original order as
a permutation of the labels: `\\boxed{2,3,1}` means [S2] came first. The paper publishes neither
its window size nor its reward equation; the choices below are ours:

- `k=3` (default): the smallest window with more than one wrong order per position, cheap for a
  small model to read; a curriculum raises it. A solution with fewer than k steps shuffles all of
  them (at least 2 are needed); the size used is in `difficulty["k"]`. The window is placed
  uniformly among windows holding at least two different steps, and the shown order always
  differs from the original.
- `reward="position"` (default): the fraction of steps put in their original position, the
  step-position matching that the only description of the paper's reward mentions. Steps with the
  same text are interchangeable. `reward="kendall"`: (1 + Kendall tau) / 2, the fraction of step
  pairs in the right relative order, which gives credit for an order that is right up to one
  displaced step (position matching can give that 0).
- Anything in the box other than a permutation of 1..k (labels may be written `S2` or `2`) is a
  format error: it gets the format reward and `info["format_error"]`.

The difficulty knob `k` is a constructor argument, so a curriculum can drive it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from thinkgym.rewards.math import extract_answer

from .base import Problem, Verdict, finish
from .solutions import Solution, SolutionTask, SourceConfig, solution_rng

REWARDS = ("position", "kendall")
_LABEL_TEXT = re.compile(r"^[\s\[\]()Ss\d,;]*$")


@dataclass(frozen=True)
class StepReorderConfig(SourceConfig):
    k: int = 3
    reward: str = "position"

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or isinstance(self.k, bool) or not 2 <= self.k <= 50:
            raise ValueError(f"k must be an integer in 2..50; got {self.k!r}")
        if self.reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}; got {self.reward!r}")
        super().__post_init__()


def parse_order(text: str, k: int) -> list[int] | None:
    """The labels (1-based) in a `\\boxed{...}` answer after `</think>`, if they are a permutation of 1..k."""
    boxed = extract_answer(text)
    if boxed is None or not _LABEL_TEXT.match(boxed):
        return None
    labels = [int(x) for x in re.findall(r"\d+", boxed)]
    return labels if sorted(labels) == list(range(1, k + 1)) else None


class StepReorderTask(SolutionTask):
    name = "step_reorder"
    config_type = StepReorderConfig

    def build(self, solution: Solution, seed: int) -> tuple[Problem, str] | None:
        steps = list(solution.steps)
        k = min(self.config.k, len(steps))
        starts = [s for s in range(len(steps) - k + 1) if len(set(steps[s:s + k])) > 1]
        if k < 2 or not starts:
            return None
        rng = solution_rng(solution, 2)
        start = starts[int(rng.integers(len(starts)))]
        window = steps[start:start + k]
        perm = [int(x) for x in rng.permutation(k)]  # shown slot j holds original step perm[j]
        while [window[p] for p in perm] == window:
            perm = [int(x) for x in rng.permutation(k)]
        gold = [perm.index(p) + 1 for p in range(k)]
        shown = [f"[S{j + 1}] {window[p]}" for j, p in enumerate(perm)]
        text = solution.sep.join(steps[:start] + shown + steps[start + k:])
        prompt = (
            f"{solution.problem}\n\nHere is a worked solution in which {k} consecutive steps, labelled [S1] to [S{k}], "
            f"have been shuffled; the other steps are in their original places:\n\n{text}\n\n"
            f"Give the original order of the shuffled steps as their labels, comma-separated, in \\boxed{{}}: "
            f"\\boxed{{2,1,...}} would mean that [S2] came first, then [S1].\n"
        )
        answer = ",".join(map(str, gold))
        difficulty = {**solution.difficulty, "source": self.source.name, "k": k, "n_steps": len(steps)}
        problem = Problem(prompt, answer, seed, difficulty, {"shown": [window[p] for p in perm], "window": window,
                                                            "solution_seed": solution.seed})
        demo = "In their original order the steps read:\n" + "\n".join(f"[S{g}] {window[p]}" for p, g in enumerate(gold))
        return problem, finish(demo + "\n", answer)

    def verify(self, problem: Problem, text: str) -> Verdict:
        window, shown = problem.meta["window"], problem.meta["shown"]
        order = parse_order(text, len(window))
        if order is None:
            return Verdict(0.0, None, True)
        placed = [shown[label - 1] for label in order]
        if self.config.reward == "position":
            score = sum(a == b for a, b in zip(placed, window)) / len(window)
        else:
            ranks = [window.index(s) for s in placed]  # equal texts share a rank: interchangeable
            pairs = [(i, j) for i in range(len(ranks)) for j in range(i + 1, len(ranks))]
            score = sum(ranks[i] <= ranks[j] for i, j in pairs) / len(pairs)
        return Verdict(score, ",".join(map(str, order)), False)
