"""Worked solutions split into steps: the raw material of the MR-RLVR process tasks.

A `SolutionSource` turns a seed into a `Solution` (problem, steps, final answer) and is a pure
function of (source, seed). Every source is a task from `thinkgym.envs.tasks`, so the steps come
from `task.demonstration(seed)`: a built-in procedural task (offline, the default), or
`math_dataset` over any jsonl/parquet file with a solution field (GSM8K, MATH, ...).

How a trace is split into steps (`split`):
- "lines": one step per non-empty line. Procedural demonstrations and GSM8K write one
  calculation per line, so a line is the natural step. GSM8K's calculator annotations
  (`<<16-3-4=9>>`) are removed first: they repeat the result that follows them, so a masked number
  would otherwise be printed right next to its mask.
- "sentences": MATH-style LaTeX prose, split at paragraph breaks and at sentence ends (`.`, `!`,
  `?`, also when the period sits just inside a closing `$`) followed by a non-lowercase character,
  never inside math (`$..$`, `$$..$$`, `\\[..\\]`, `\\(..\\)`, `\\begin..\\end`). A display block
  stays inside its sentence so each step reads as a complete statement. `[asy]` figure code is
  dropped: it is drawing instructions, not reasoning. A one-sentence solution is split at its
  commas outside math (clauses); a bare chain of equalities (`$a=b=c$`, one `align`) before each
  top-level `=`, so it still has steps: "sentences, else clauses, else equations".
- "auto" (default): "sentences" when the trace has LaTeX commands (`\\frac`, `\\[`, `\\boxed`...)
  and no calculator annotations, otherwise "lines".
"""

from __future__ import annotations

import re
from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from thinkgym.rewards.math import THINK_CLOSE, THINK_OPEN, extract_answer

from .base import Problem, Task
from .registry import make_task

SPLITS = ("auto", "lines", "sentences")
_CALCULATOR = re.compile(r"<<[^<>]*>>")
_ASY = re.compile(r"\[asy\].*?\[/asy\]", re.S)
_LATEX_COMMAND = re.compile(r"\\[a-zA-Z\[\(]")
_BEGIN = re.compile(r"\\begin\{([^}]*)\}")
_DELIMS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"))
_CLOSERS = ("$", "\\]", "\\)", ")", '"', "'")
_DIGITS = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"  # 120,000 or 1.5
NUMBER = re.compile(rf"(?<![\w.]){_DIGITS}(?!\w)")
_VISIBLE_RESULT = re.compile(rf"\s*\$?\s*{_DIGITS}")


@dataclass(frozen=True)
class Solution:
    """A problem, its worked solution as steps, its final answer, and the knobs that made it."""

    problem: str
    steps: tuple[str, ...]
    answer: str
    seed: int
    difficulty: dict[str, Any] = field(default_factory=dict)
    sep: str = "\n"
    formulas: tuple[tuple[int, int, int, str], ...] = ()  # (step, start, end, equation) from annotations


def _find_close(text: str, close: str, start: int) -> int:
    """Index of the next unescaped `close` at or after `start`, or len(text) if unclosed."""
    j = start
    while True:
        j = text.find(close, j)
        if j < 0:
            return len(text)
        if close == "$" and j > 0 and text[j - 1] == "\\":
            j += 1
            continue
        return j


def math_spans(text: str) -> list[tuple[int, int, int, int]]:
    """Top-level math regions as (outer_start, inner_start, inner_end, outer_end).

    Outer bounds include the delimiters; inner bounds are the content. An unclosed region runs to
    the end of the text. Escaped dollars (`\\$`) are text.
    """
    spans, i, n = [], 0, len(text)
    while i < n:
        if text.startswith("\\$", i):
            i += 2
            continue
        m = _BEGIN.match(text, i)
        if m:
            close = f"\\end{{{m.group(1)}}}"
            j = _find_close(text, close, m.end())
            spans.append((i, m.end(), j, min(n, j + len(close))))
            i = spans[-1][3]
            continue
        for op, cl in _DELIMS:
            if text.startswith(op, i):
                j = _find_close(text, cl, i + len(op))
                spans.append((i, i + len(op), j, min(n, j + len(cl))))
                i = spans[-1][3]
                break
        else:
            i += 1
    return spans


def _ends_sentence(before: str) -> bool:
    tail = before.rstrip()
    stripped = True
    while stripped:
        stripped = False
        for c in _CLOSERS:
            if tail.endswith(c):
                tail, stripped = tail[: -len(c)].rstrip(), True
    return tail.endswith((".", "!", "?"))


def split_sentences(text: str) -> list[str]:
    """MATH-style prose split into sentences, never inside math (see the module docstring)."""
    text = _ASY.sub("", text)
    spans = math_spans(text)
    cuts, k = [], 0
    for m in re.finditer(r"\s+", text):
        while k < len(spans) and spans[k][3] <= m.start():
            k += 1
        if k < len(spans) and spans[k][0] <= m.start():
            continue  # inside math
        nxt = text[m.end(): m.end() + 1]
        paragraph = m.group().count("\n") >= 2
        if nxt and (paragraph or (not nxt.islower() and _ends_sentence(text[: m.start()]))):
            cuts.append(m.end())
    # MATH writes `...\\]Hence` with no space: a display block followed by a capital is a new sentence.
    cuts += [end for start, _, _, end in spans if text[start] != "$" or text.startswith("$$", start)
             if text[end: end + 1].isupper()]
    steps = _pieces(text, cuts)
    if len(steps) < 2:
        steps = _pieces(text, _clause_cuts(text, spans))
    return steps if len(steps) > 1 else _pieces(text, _equation_cuts(text, spans))


def _pieces(text: str, cuts: list[int]) -> list[str]:
    cuts = [0] + sorted(set(cuts)) + [len(text)]
    return [s for s in (text[a:b].strip() for a, b in zip(cuts, cuts[1:])) if s]


def _clause_cuts(text: str, spans: list[tuple[int, int, int, int]]) -> list[int]:
    """One-sentence fallback: cut after commas outside math."""
    inside = [False] * len(text)
    for start, _, _, end in spans:
        inside[start:end] = [True] * (end - start)
    return [m.end() for m in re.finditer(r",\s+", text) if not inside[m.start()]]


def _equation_cuts(text: str, spans: list[tuple[int, int, int, int]]) -> list[int]:
    """One-clause fallback (a bare chain of equalities): cut before each `=` (or `&=`) at brace depth 0."""
    cuts = []
    for _, inner_start, inner_end, _ in spans:
        depth = 0
        for i in range(inner_start, inner_end):
            ch = text[i]
            if text[i - 1] == "\\":
                continue
            depth += (ch == "{") - (ch == "}")
            if ch == "=" and depth == 0 and i > inner_start:
                cuts.append(i - 1 if text[i - 1] == "&" else i)
    return cuts


def split_lines(text: str) -> list[str]:
    """One step per non-empty line, with GSM8K calculator annotations removed."""
    return [line for line, _ in calculator_lines(text)]


def calculator_lines(text: str) -> list[tuple[str, list[tuple[int, int, str]]]]:
    """Non-empty lines without calculator annotations, each with the formulas they annotated.

    A formula is (start, end, equation): the visible calculation `2 hours * 500 calories/hour = 1000`
    located from the annotation `<<2*500=1000>>`, and the annotation's clean equation `2*500=1000`.
    The visible start is the first operand, found among the numbers before the annotation; an
    annotation whose calculation cannot be located is dropped.
    """
    out = []
    for raw in text.splitlines():
        line, spans, pos = "", [], 0
        for m in _CALCULATOR.finditer(raw):
            line += raw[pos:m.start()]
            pos = m.end()
            equation = m.group()[2:-2].strip()
            result = _VISIBLE_RESULT.match(raw, pos)
            start = _operand_start(line, NUMBER.findall(equation.rpartition("=")[0]))
            if result and "=" in equation and start is not None and start >= (spans[-1][1] if spans else 0):
                spans.append((start, len(line) + result.end() - pos, equation))
        line += raw[pos:]
        lead = len(line) - len(line.lstrip())
        if line.strip():
            out.append((line.strip(), [(a - lead, b - lead, eq) for a, b, eq in spans]))
    return out


def _operand_start(prefix: str, operands: list[str]) -> int | None:
    """Where the visible calculation starts: the n-th last visible number for n operands if it is
    the first operand (`5 * 5 =`), else the first operand's last visible occurrence."""
    if not operands:
        return None
    first = float(operands[0].replace(",", ""))
    nums = [(m.start(), float(m.group().replace(",", ""))) for m in NUMBER.finditer(prefix)]
    n = len(operands)
    if len(nums) >= n and nums[-n][1] == first:
        start = nums[-n][0]
    else:
        hits = [a for a, v in nums if v == first]
        if not hits:
            return None
        start = hits[-1]
    return start - 1 if prefix[start - 1: start] == "(" else start


def split_style(trace: str, split: str = "auto") -> str:
    """"lines" or "sentences": `split` itself, or for "auto" the one that suits the trace."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    if split == "auto":
        return "sentences" if _LATEX_COMMAND.search(trace) and not _CALCULATOR.search(trace) else "lines"
    return split


def split_steps(trace: str, split: str = "auto") -> tuple[list[str], str]:
    """The steps of a trace and the style used ("lines" or "sentences")."""
    style = split_style(trace, split)
    return (split_sentences(trace) if style == "sentences" else split_lines(trace)), style


class SolutionSource:
    """Seeds to worked solutions, from a task's demonstrations.

    `source` is a task name (default "running_sum", offline) with `source_kwargs`, or a Task.
    `path` (a .jsonl/.parquet file with a solution field, e.g. GSM8K or MATH-500) selects the
    `math_dataset` task instead, with `fields` mapping its column names; the math prompt suffix is
    dropped because the process tasks ask their own question.
    """

    def __init__(self, source: str | Task = "running_sum", source_kwargs: dict[str, Any] | None = None,
                 path: str | None = None, fields: dict[str, str] | None = None, split: str = "auto"):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
        if path is not None:
            if source_kwargs:
                raise ValueError("source_kwargs cannot be combined with path; use fields to map columns")
            self.task = make_task("math_dataset", path=str(path), fields=dict(fields or {}), prompt_suffix="")
            self.name = Path(str(path)).stem
        else:
            if fields:
                raise ValueError("fields needs path (a dataset file)")
            self.task = make_task(source, **(source_kwargs or {}))
            self.name = getattr(self.task, "name", type(self.task).__name__)
        self.split = split

    def __len__(self) -> int:
        """The number of distinct items (datasets), or 0 for an unbounded procedural source."""
        return len(self.task) if hasattr(self.task, "__len__") else 0

    def solution(self, seed: int) -> Solution:
        problem = self.task.sample(seed)
        demo = self.task.demonstration(seed)
        trace = demo.split(THINK_CLOSE)[0].replace(THINK_OPEN, "")
        answer = extract_answer(demo) or problem.answer
        if split_style(trace, self.split) == "sentences":
            return Solution(problem.prompt.strip(), tuple(split_sentences(trace)), answer, seed,
                            dict(problem.difficulty), "\n\n")
        lines = calculator_lines(trace)
        formulas = tuple((i, a, b, eq) for i, (_, spans) in enumerate(lines) for a, b, eq in spans)
        return Solution(problem.prompt.strip(), tuple(line for line, _ in lines), answer, seed,
                        dict(problem.difficulty), "\n", formulas)


@dataclass(frozen=True)
class SourceConfig:
    """Where a process task's worked solutions come from (see `SolutionSource`); each task's config
    adds its own knobs."""

    source: Any = "running_sum"
    source_kwargs: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    split: str = "auto"

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}; got {self.split!r}")


class SolutionTask(Task):
    """A task posed on a worked solution. Subclasses set `config_type` (a `SourceConfig`) and
    implement `build`.

    An item whose solution cannot make an episode (too few steps, nothing to mask) is skipped:
    `sample(seed)` takes the first of seed, seed+1, ... that builds, so it stays a pure function
    of the seed and an episode is always well-formed.
    """

    max_tries = 64
    config_type: type

    def __init__(self, **kwargs: Any):
        self.config = c = self.config_type(**kwargs)
        self.source = SolutionSource(c.source, c.source_kwargs, c.path, c.fields, c.split)

    @abstractmethod
    def build(self, solution: Solution, seed: int) -> tuple[Problem, str] | None:
        """The problem and its demonstration for one solution, or None if it cannot make one."""

    def episode(self, seed: int) -> tuple[Problem, str]:
        for s in range(seed, seed + self.max_tries):
            built = self.build(self.source.solution(s), seed)
            if built is not None:
                return built
        raise ValueError(f"{self.name}: no item in seeds {seed}..{seed + self.max_tries - 1} of source "
                         f"{self.source.name!r} can make an episode with these knobs; lower them or change the source")

    def sample(self, seed: int) -> Problem:
        return self.episode(seed)[0]

    def demonstration(self, seed: int) -> str:
        return self.episode(seed)[1]


def solution_rng(solution: Solution, salt: int) -> np.random.Generator:
    """The generator for an episode's choices: a function of the item's seed only."""
    return np.random.default_rng([solution.seed, salt])
