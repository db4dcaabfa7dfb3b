"""MaskedStep-v0: MR-RLVR's masked-then-fill task (Wang et al., arXiv 2511.17473).

Pieces of a worked solution are hidden behind `[MASK_i]` and the policy restores them. The paper
publishes neither its masking ratio nor its reward equations; the choices below are ours:

- `mask="number"` (default): hide numbers. Every source has them, a number has one right value, and
  restoring one requires redoing the calculation around it, which is the skill the process reward
  is after. `"formula"` hides a calculation: in GSM8K the span a calculator annotation marks
  (`2 hours * 500 calories/hour = 1000`, gold `2*500=1000`), in other plain lines an arithmetic run
  (`11+3=14`), in LaTeX one `$...$`/`\\[...\\]` or one row of an `align`. `"step"` hides whole steps.
- `n_masked=2` (default): a fixed count, not a ratio, so difficulty does not jump with solution
  length and a curriculum can raise it one by one; two rather than one so that a lucky guess earns
  half the reward, not all of it. Fewer candidates than `n_masked` masks them all
  (a step mask always leaves one step visible); the count used is in `difficulty["n_masked"]`.
- Answer format: after `</think>`, one line per piece, `[MASK_1]: 9`. Labelled lines keep pieces
  apart when one is missing or spans symbols a `\\boxed{}` list would split; the demonstration
  therefore ends in these lines instead of a box.
- Reward: the mean over pieces. Numbers and formulas score 1 when their normalised text matches or
  math-verify finds them equal (a value-equal rewrite such as `13-4` for `16-3-4` counts: it restores
  the quantity later steps depend on). Steps are text: `text_score="exact"` (default) needs the same
  tokens after normalisation (case, spacing, `$`, `\\left`/`\\right`), since word overlap can be
  inflated by copying neighbouring steps; `"f1"` gives token-F1 partial credit for paraphrases. A missing piece scores 0; no `</think>` or no parsable `[MASK_i]:` line is
  a format error (format reward, `info["format_error"]`).

The difficulty knobs `mask` and `n_masked` are constructor arguments, so a curriculum can drive them.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from thinkgym.rewards.math import THINK_CLOSE, after_think, math_equal

from .base import Problem, Verdict
from .solutions import NUMBER, Solution, SolutionTask, SourceConfig, math_spans, solution_rng

MASKS = ("number", "formula", "step")
TEXT_SCORES = ("exact", "f1")
_ROW_SEP = re.compile(r"\\\\|\n")  # rows of an align-like environment
_ROW_LEAD = re.compile(r"(?:\s|&|\\(?:Rightarrow|implies|iff|quad|qquad)(?![a-zA-Z]))*")
_NUM = rf"\$?{NUMBER.pattern}%?"
_PLAIN_FORMULA = re.compile(rf"{_NUM}(?:\s*[-+*/×÷–]\s*{_NUM})+(?:\s*=\s*{_NUM})?")
_LATEX_OPERATOR = re.compile(r"[=+\-*/^<>]|\\(?:frac|dfrac|cdot|times|sqrt|div|pm|le|ge)")
_FILL_LINE = re.compile(r"^\s*\[MASK_(\d+)\]\s*[:=]\s*(.*?)\s*$", re.M)
_LATEX_NOISE = re.compile(r"\\left|\\right|\\boxed|\\[,;:! ]|[${}]")
_BOXED = re.compile(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}")  # math-verify misreads `x={3}`: unbox to `x=3`
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
MAX_FORMULA_CHARS = 160


def tokens(text: str) -> list[str]:
    """Normalised tokens: lower case; `$`, braces, `\\boxed`, `\\left`/`\\right`, LaTeX spacing and a final period dropped."""
    text = _LATEX_NOISE.sub(" ", text.lower()).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return re.findall(r"\w+|[^\w\s]", text.strip().rstrip("."))


def text_score(pred: str, gold: str, how: str = "exact") -> float:
    p, g = tokens(pred), tokens(gold)
    if how == "exact" or not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    return 0.0 if common == 0 else 2 * common / (len(p) + len(g))


def math_score(pred: str, gold: str) -> float:
    """1.0 when the texts match after normalisation or math-verify finds them equal."""
    if tokens(pred) == tokens(gold):
        return 1.0
    if len(pred) > 4 * len(gold) + 64:  # far longer than the piece: not a fill, and slow to parse
        return 0.0
    clean = [_THOUSANDS.sub("", _BOXED.sub(r"\1", x)).replace("$", "").strip() for x in (pred, gold)]
    return float(all(clean) and math_equal(clean[0], clean[1]))


def _flat(text: str) -> str:
    return " ".join(text.split())


def _latex_formulas(step: str) -> list[tuple[int, int, str]]:
    """Math regions with an operator; align-like environments give one formula per row.

    Leading arrows/spacing (`\\Rightarrow \\qquad`) and trailing punctuation stay visible.
    """
    out = []
    for outer, a, b, _ in math_spans(step):
        rows = [(a, b)]
        if step.startswith("\\begin", outer):
            seps = [(a, a)] + [(a + m.start(), a + m.end()) for m in _ROW_SEP.finditer(step[a:b])] + [(b, b)]
            rows = [(prev[1], nxt[0]) for prev, nxt in zip(seps, seps[1:])]
        for r0, r1 in rows:
            r0 += _ROW_LEAD.match(step, r0, r1).end() - r0
            while r1 > r0 and (step[r1 - 1].isspace() or step[r1 - 1] in ".,;"):
                r1 -= 1
            gold = _flat(step[r0:r1].replace("&", ""))
            if 0 < len(gold) <= MAX_FORMULA_CHARS and _LATEX_OPERATOR.search(gold):
                out.append((r0, r1, gold))
    return out


def candidates(solution: Solution, kind: str) -> list[tuple[int, int, int, str]]:
    """Maskable pieces as (step index, start, end, gold fill), in reading order.

    Formulas come from GSM8K's calculator annotations where the solution has them (the gold is the
    annotation's clean equation), else from arithmetic runs in plain lines or math in LaTeX.
    """
    if kind == "formula" and solution.formulas:
        return list(solution.formulas)
    out: list[tuple[int, int, int, str]] = []
    for i, step in enumerate(solution.steps):
        if kind == "step":
            out.append((i, 0, len(step), _flat(step)))
        elif kind == "number":
            out += [(i, m.start(), m.end(), m.group()) for m in NUMBER.finditer(step)]
        elif solution.sep == "\n":
            out += [(i, m.start(), m.end(), m.group()) for m in _PLAIN_FORMULA.finditer(step)]
        else:
            out += [(i, a, b, gold) for a, b, gold in _latex_formulas(step)]
    return out


@dataclass(frozen=True)
class MaskedStepConfig(SourceConfig):
    mask: str = "number"
    n_masked: int = 2
    text_score: str = "exact"

    def __post_init__(self) -> None:
        if self.mask not in MASKS:
            raise ValueError(f"mask must be one of {MASKS}; got {self.mask!r}")
        if not isinstance(self.n_masked, int) or isinstance(self.n_masked, bool) or self.n_masked < 1:
            raise ValueError(f"n_masked must be an integer >= 1; got {self.n_masked!r}")
        if self.text_score not in TEXT_SCORES:
            raise ValueError(f"text_score must be one of {TEXT_SCORES}; got {self.text_score!r}")
        super().__post_init__()


class MaskedStepTask(SolutionTask):
    name = "masked_step"
    config_type = MaskedStepConfig

    def build(self, solution: Solution, seed: int) -> tuple[Problem, str] | None:
        kind, steps = self.config.mask, list(solution.steps)
        pool = candidates(solution, kind)
        n = min(self.config.n_masked, len(pool) - (kind == "step"))
        if n < 1:
            return None
        rng = solution_rng(solution, 1)
        chosen = sorted(pool[int(j)] for j in rng.choice(len(pool), size=n, replace=False))
        golds = [gold for *_, gold in chosen]
        for label, (i, a, b, _) in reversed(list(enumerate(chosen, start=1))):
            steps[i] = f"{steps[i][:a]}[MASK_{label}]{steps[i][b:]}"
        fills = "\n".join(f"[MASK_{k}]: {g}" for k, g in enumerate(golds, start=1))
        plural = "s" if n > 1 else ""
        prompt = (
            f"{solution.problem}\n\nHere is a worked solution with {n} hidden {kind}{plural}, each shown as [MASK_i]:\n\n"
            f"{solution.sep.join(steps)}\n\nRestore the hidden {kind}{plural}. After your reasoning, write one line "
            f"per hidden {kind}, in the form\n[MASK_1]: <the hidden {kind}>\n"
            + ("Write a formula as an equation with its result, e.g. 12*3=36.\n" if kind == "formula" else "")
        )
        difficulty = {**solution.difficulty, "source": self.source.name, "mask": kind, "n_masked": n,
                      "n_steps": len(steps)}
        problem = Problem(prompt, fills, seed, difficulty, {"golds": golds, "solution_seed": solution.seed})
        demo = "The full solution reads:\n" + solution.sep.join(solution.steps) + f"\n{THINK_CLOSE}\n{fills}"
        return problem, demo

    def verify(self, problem: Problem, text: str) -> Verdict:
        tail = after_think(text)
        golds = problem.meta["golds"]
        fills: dict[int, str] = {}
        for m in _FILL_LINE.finditer(tail or ""):
            fills.setdefault(int(m.group(1)), m.group(2))  # the first line for a label counts
        fills = {k: v for k, v in fills.items() if 1 <= k <= len(golds)}
        if not fills:
            return Verdict(0.0, None, True)
        scores = [self.piece_score(fills[k], g) if k in fills else 0.0 for k, g in enumerate(golds, start=1)]
        answer = "\n".join(f"[MASK_{k}]: {v}" for k, v in sorted(fills.items()))
        return Verdict(sum(scores) / len(scores), answer, False)

    def piece_score(self, pred: str, gold: str) -> float:
        if self.config.mask == "step":
            return text_score(pred, gold, self.config.text_score)
        return math_score(pred, gold)
