"""SAT (SATURN, arXiv 2505.16368): find an assignment that satisfies an n-SAT formula.

An instance has k variables named A, B, C, ... (so k <= 26) and l distinct clauses of n literals.
The default generator is SATURN's planted construction: a random assignment is drawn first and
every clause keeps at least one literal that agrees with it, so every instance is satisfiable.
The "random" generator draws uniformly random n-SAT and keeps the first satisfiable draw
(python-sat decides). Instances can also be read from SATURN's released jsonl files (`path`).

Answers follow SATURN's grader: the last `\\boxed{}` of the response holds one character per
variable in order; '1' makes a variable true and '0' false; a missing character counts as '0'
(short answers are zero-padded) and characters past the k-th are ignored. Any satisfying
assignment scores 1. Unlike SATURN's regex, the box content may span lines, nested braces are
balanced, and surrounding whitespace is stripped (thinkgym.rewards.math.last_boxed).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from thinkgym.rewards.math import extract_answer

from .base import Problem, Task, Verdict, check_positive, finish
from .math_dataset import PROMPT_SUFFIX, load_records

Clause = tuple[int, ...]  # DIMACS literals: +v / -v for variable v (1-based, A = 1)
GENERATORS = ("planted", "random")
MAX_VARIABLES = 26
_LITERAL = re.compile(r"!?[A-Z]")
# SATURN's released curriculum stages (1.5B: the first two, 7B: the last two) and its 10 test levels.
SATURN_STAGES = ((3, 5, 5), (3, 5, 6), (3, 5, 13), (3, 5, 15))
SATURN_TEST_LEVELS = ((3, 5, 20), (3, 5, 25), (3, 6, 20), (3, 7, 20), (3, 7, 40),
                      (4, 7, 20), (4, 7, 40), (4, 8, 40), (5, 8, 40), (6, 7, 40))

_PROMPT_HEAD = (
    "Solve this SAT (Boolean satisfiability) problem. It is given as JSON with three fields:\n"
    '- "n_sat": how many literals each clause has (an n-SAT problem);\n'
    '- "k": how many variables there are, named A, B, C, ... in order;\n'
    '- "clause": the formula. Clauses are joined by " & " (AND), the literals of a clause are written '
    'side by side (OR), and "!" in front of a variable negates it.\n\n'
    "Answer with a string of k characters, each 0 or 1: the values of the variables in order "
    "(1 = true, 0 = false). Any assignment that satisfies every clause is accepted."
)
_PROMPT_EXAMPLE = '\n\nExample:\n{"n_sat": 2, "k": 3, "clause": "!AB & !B!C & AC"}\nFinal answer: \\boxed{110}\n\nThe problem to solve:\n'


def difficulty(n: int, k: int, l: int) -> float:
    """SATURN's estimate D(n, k, l) = log2 k + 2 log2 l - n + k/n: higher is harder for LLMs."""
    return math.log2(k) + 2 * math.log2(l) - n + k / n


def max_clauses(n: int, k: int) -> int:
    """Distinct n-clauses a satisfiable formula over k variables can hold: C(k,n)(2^n - 1).

    Any assignment falsifies exactly one sign pattern per set of n variables.
    """
    return math.comb(k, n) * (2**n - 1)


_LITERAL_TEXT = {sign * v: ("!" if sign < 0 else "") + chr(64 + v) for v in range(1, MAX_VARIABLES + 1) for sign in (1, -1)}


def clause_text(clause: Clause) -> str:
    return "".join(map(_LITERAL_TEXT.__getitem__, clause))


def format_formula(clauses: list[Clause]) -> str:
    """SATURN's text: literals side by side, `!` negates, clauses sorted and joined by ' & '."""
    return " & ".join(sorted(map(clause_text, clauses)))


def parse_formula(text: str) -> list[Clause]:
    """Clauses of a SATURN formula string, e.g. '!AB!C & A!CE'."""
    clauses = []
    for part in text.split(" & "):
        lits = _LITERAL.findall(part)
        if not lits or "".join(lits) != part:
            raise ValueError(f"not a SATURN clause: {part!r} (expected letters A-Z, each optionally preceded by '!')")
        clauses.append(tuple((-1 if s[0] == "!" else 1) * (ord(s[-1]) - 64) for s in lits))
    return clauses


def to_dimacs(clauses: list[Clause], k: int) -> str:
    """The formula in DIMACS CNF, with all k variables declared (via python-sat)."""
    from pysat.formula import CNF  # python-sat is the optional `sat` extra; only these paths need it

    cnf = CNF(from_clauses=[list(c) for c in clauses])
    cnf.nv = k
    return cnf.to_dimacs()


def satisfied_count(clauses: list[Clause], bits: str) -> int:
    """How many clauses `bits` satisfies, read as SATURN reads it ('1' true, '0' or missing false)."""
    def true(lit: int) -> bool:
        i = abs(lit) - 1
        return (bits[i] if i < len(bits) else "0") == ("1" if lit > 0 else "0")

    return sum(any(true(lit) for lit in c) for c in clauses)


@lru_cache(maxsize=None)
def _comb(a: int, b: int) -> int:
    return math.comb(a, b)


def _subset(rank: int, k: int, n: int) -> list[int]:
    """The rank-th n-subset of 0..k-1 in lexicographic order (combinatorial number system)."""
    out, v = [], 0
    for pos in range(n):
        while True:
            count = _comb(k - v - 1, n - pos - 1)
            if rank < count:
                break
            rank -= count
            v += 1
        out.append(v)
        v += 1
    return out


def _draw_clauses(rng: np.random.Generator, n: int, k: int, l: int, planted: list[int] | None) -> list[Clause]:
    """l distinct clauses, uniform among those with n distinct variables (and, if `planted` is
    given, among those that assignment satisfies): each clause is an index (subset, sign pattern)."""
    patterns = 2**n - 1 if planted is not None else 2**n
    picks = rng.choice(_comb(k, n) * patterns, size=l, replace=False)
    clauses = []
    for idx in picks.tolist():
        variables = _subset(idx // patterns, k, n)
        mask = idx % patterns
        if planted is not None:  # mask 1..2^n-1: bit j set means literal j agrees with the plant
            mask += 1
            positive = [(mask >> j & 1) == planted[v] for j, v in enumerate(variables)]
        else:
            positive = [bool(mask >> j & 1) for j in range(n)]
        clauses.append(tuple((v + 1) if p else -(v + 1) for v, p in zip(variables, positive)))
    return sorted(clauses, key=clause_text)  # the order the prompt lists them in


@dataclass(frozen=True)
class SATConfig:
    """n literals per clause, k variables, l clauses; or `path`, a SATURN jsonl file to read."""

    n: int = 3
    k: int = 5
    l: int = 5
    generator: str = "planted"
    path: str = ""
    require_think: bool = False  # SATURN reads the last box anywhere; True reads it after </think>
    max_tries: int = 1000  # the random generator's draws before giving up

    def __post_init__(self) -> None:
        check_positive("n", self.n)
        check_positive("k", self.k)
        check_positive("l", self.l)
        check_positive("max_tries", self.max_tries)
        if self.k > MAX_VARIABLES:
            raise ValueError(f"k must be <= {MAX_VARIABLES}: SATURN names variables A..Z; got k={self.k}")
        if self.n > self.k:
            raise ValueError(f"n (literals per clause) must be <= k (variables); got n={self.n}, k={self.k}")
        if self.l > max_clauses(self.n, self.k):
            raise ValueError(
                f"l must be <= {max_clauses(self.n, self.k)}, the number of distinct {self.n}-clauses over "
                f"{self.k} variables a satisfiable formula can hold (C(k,n)*(2^n-1)); got l={self.l}"
            )
        if self.generator not in GENERATORS:
            raise ValueError(f"generator must be one of {GENERATORS}; got {self.generator!r}")


class SATTask(Task):
    name = "sat"

    def __init__(self, **kwargs) -> None:
        self.config = SATConfig(**kwargs)
        self.records = load_records(self.config.path) if self.config.path else []
        if self.config.path and not self.records:
            raise ValueError(f"path={self.config.path!r}: the file holds no instances")

    def __len__(self) -> int:
        return len(self.records)

    # -- instances --------------------------------------------------------------------------------
    def generate(self, seed: int) -> tuple[list[Clause], str]:
        """Clauses and one satisfying assignment, a pure function of the seed."""
        c = self.config
        rng = np.random.default_rng(seed)
        if c.generator == "planted":
            plant = rng.integers(0, 2, size=c.k).tolist()
            return _draw_clauses(rng, c.n, c.k, c.l, plant), "".join(map(str, plant))
        from pysat.solvers import Solver

        for _ in range(c.max_tries):
            clauses = _draw_clauses(rng, c.n, c.k, c.l, None)
            with Solver(name="minisat22", bootstrap_with=[list(x) for x in clauses]) as s:
                if s.solve():
                    model = s.get_model()
                    return clauses, "".join("1" if v > 0 else "0" for v in model[: c.k]).ljust(c.k, "0")
        raise RuntimeError(f"no satisfiable random formula with n={c.n}, k={c.k}, l={c.l} in {c.max_tries} draws; "
                           "lower l or use generator='planted'")

    def sample(self, seed: int) -> Problem:
        if self.records:
            row = self.records[seed % len(self.records)]
            clauses, n, k = parse_formula(row["clause"]), int(row["n_sat"]), int(row["k"])
            return self._problem(row["prompt"], clauses, n, k, str(row["solution"]), seed, row.get("id"))
        clauses, plant = self.generate(seed)
        c = self.config
        return self._problem(self.prompt(clauses, c.n, c.k), clauses, c.n, c.k, plant, seed, None)

    @staticmethod
    def _problem(prompt: str, clauses: list[Clause], n: int, k: int, gold: str, seed: int, rid) -> Problem:
        knobs = {"n": n, "k": k, "l": len(clauses), "D": difficulty(n, k, len(clauses))}
        return Problem(prompt, gold, seed, knobs, {"clauses": tuple(clauses), "id": rid})

    @staticmethod
    def prompt(clauses: list[Clause], n: int, k: int) -> str:
        """SATURN's prompt shape (fields, one example, boxed answer) in thinkgym's own words."""
        instance = json.dumps({"n_sat": n, "k": k, "clause": format_formula(clauses)})
        return _PROMPT_HEAD + PROMPT_SUFFIX + _PROMPT_EXAMPLE + instance + "\n"

    def dimacs(self, seed: int) -> str:
        p = self.sample(seed)
        return to_dimacs(list(p.meta["clauses"]), p.difficulty["k"])

    # -- scoring ----------------------------------------------------------------------------------
    def verify(self, problem: Problem, text: str) -> Verdict:
        ans = extract_answer(text, self.config.require_think)
        if ans is None:
            return Verdict(0.0, None, True)
        clauses = problem.meta["clauses"]
        return Verdict(float(satisfied_count(clauses, ans) == len(clauses)), ans, False)

    def report(self, problem: Problem, answer: str | None) -> dict:
        """What the env adds to the final `info`: the assignment as read and the clauses it satisfies."""
        k, clauses = problem.difficulty["k"], problem.meta["clauses"]
        bits = None if answer is None else answer[:k].ljust(k, "0")
        return {"assignment": bits, "satisfied_clauses": 0 if bits is None else satisfied_count(clauses, bits),
                "num_clauses": len(clauses)}

    # -- warm-start data --------------------------------------------------------------------------
    def demonstration(self, seed: int) -> str:
        """A DPLL trace (unit propagation, then try 1 before 0) that ends in a satisfying box.

        python-sat does not expose its search steps, so this small search exists only to write them.
        """
        p = self.sample(seed)
        clauses, k = list(p.meta["clauses"]), p.difficulty["k"]
        lines: list[str] = [f"{len(clauses)} clauses over {_variables(k)}. Propagate units, then branch."]
        model = _dpll(clauses, {}, lines)
        if model is None:
            raise ValueError(f"seed={seed}: the formula is unsatisfiable")
        bits = "".join("1" if model.get(v, False) else "0" for v in range(1, k + 1))
        assert satisfied_count(clauses, bits) == len(clauses)
        lines.append(f"All {len(clauses)} clauses hold (unset variables take 0): {bits}.")
        return finish("\n".join(lines) + "\n", bits)


def _variables(k: int) -> str:
    return "A" if k == 1 else f"A..{chr(64 + k)}"


def _name(lit: int) -> str:
    return f"{chr(64 + abs(lit))}={int(lit > 0)}"


def _dpll(clauses: list[Clause], assign: dict[int, bool], lines: list[str], depth: int = 0) -> dict[int, bool] | None:
    assign, pad = dict(assign), "  " * depth
    while True:  # unit propagation
        unit = None
        for c in clauses:
            if any(assign.get(abs(x)) == (x > 0) for x in c):
                continue
            free = [x for x in c if abs(x) not in assign]
            if not free:
                lines.append(f"{pad}  conflict: {clause_text(c)} is false; back up.")
                return None
            if len(free) == 1:
                unit = (free[0], c)
                break
        if unit is None:
            break
        assign[abs(unit[0])] = unit[0] > 0
        lines.append(f"{pad}  {_name(unit[0])} (only way to satisfy {clause_text(unit[1])})")
    open_clause = next((c for c in clauses if not any(assign.get(abs(x)) == (x > 0) for x in c)), None)
    if open_clause is None:
        return assign
    var = next(abs(x) for x in open_clause if abs(x) not in assign)
    for value in (True, False):
        lines.append(f"{pad}Try {_name(var if value else -var)}:")
        found = _dpll(clauses, {**assign, var: value}, lines, depth + 1)
        if found is not None:
            return found
    return None
