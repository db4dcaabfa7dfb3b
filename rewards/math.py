"""Answer extraction and checking for math-style answers, through math-verify.

The answer is the last `\\boxed{...}` in the text after the first `</think>` (as in Delethink's and
the R1-style reward managers); a missing `</think>` or box is a format error, not a wrong answer.

math-verify bounds its work with SIGALRM, which exists only in the main thread; called from any
other thread (trainers and servers verify in threads), `math_equal` runs it in a helper process of
rewards/math_worker.py instead, killed when it outlasts the bound (`9^{9^{9^{9}}}` is one C call).
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from functools import lru_cache
from pathlib import Path

from .worker import WorkerPool

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# A `$` that opens or closes LaTeX math; `\$` is a dollar sign (MATH's `\$36`), not a delimiter.
_MATH_DELIMITER = re.compile(r"(?<!\\)\$")
TIMEOUT_S = 5  # math-verify's own bound on parsing, and on verifying, in seconds
_KILL_AFTER_S = 3 * TIMEOUT_S + 1.0  # two parses and a verify; a helper not back by then is stuck in C
_START_TIMEOUT_S = 60.0  # importing math-verify and sympy in a new helper
# Helpers at once: each holds sympy (~100 MB) and verifying is short, so 32 verifying threads share a few.
_MAX_HELPERS = min(4, os.cpu_count() or 1)


def after_think(text: str, require_think: bool = True) -> str | None:
    """The text after the first `</think>`; None if it is missing and required."""
    idx = text.find(THINK_CLOSE)
    if idx < 0:
        return None if require_think else text
    return text[idx + len(THINK_CLOSE):]


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`), with nested braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j].strip()
    return None


def extract_answer(text: str, require_think: bool = True) -> str | None:
    """The final answer of a response: the last box after `</think>`."""
    tail = after_think(text, require_think)
    return None if tail is None else last_boxed(tail)


def _timeout() -> int | None:
    # math-verify's timeouts use signals, which only work in the main thread.
    return TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=1)
def _helpers() -> WorkerPool:
    # This process's import path, so the helper imports the same thinkgym and math-verify.
    return WorkerPool((Path(__file__).parent / "math_worker.py").read_text(), (json.dumps(sys.path),),
                      isolated=False, start_timeout_s=_START_TIMEOUT_S, max_workers=_MAX_HELPERS)


def parse_math(expr: str):
    """math-verify's parse of an answer string (wrapped in $...$ so LaTeX is recognised)."""
    from math_verify import parse

    t = _timeout()
    text = expr if _MATH_DELIMITER.search(expr) or "\\boxed" in expr else f"${expr}$"
    return parse(text, parsing_timeout=t) if t else parse(text, parsing_timeout=None)


def math_equal(pred: str, gold: str) -> bool:
    """Whether two answer strings are mathematically equal, by math-verify, within its time bound
    from any thread; an answer that cannot be checked in time is not equal."""
    if _timeout() is None:
        return _math_equal_in_helper(pred, gold)
    from math_verify import verify

    g, p = parse_math(gold), parse_math(pred)
    if not g or not p:
        return False
    try:
        return bool(verify(g, p, timeout_seconds=TIMEOUT_S))
    except Exception:  # math-verify raises on pathological input; that is simply not equal
        return False


def _math_equal_in_helper(pred: str, gold: str) -> bool:
    """`math_equal` in a helper process's main thread, where math-verify's timeouts work."""
    pool = _helpers()
    w = pool.acquire()
    reply = w.request({"pred": pred, "gold": gold}, None, _KILL_AFTER_S)
    if reply is None:
        pool.discard(w)
        return False
    pool.release(w)
    return bool(reply.get("equal"))


def correctness(text: str, gold: str, require_think: bool = True) -> float:
    """1.0 if the response's final answer equals `gold` by math-verify, else 0.0."""
    ans = extract_answer(text, require_think)
    return float(ans is not None and math_equal(ans, gold))
