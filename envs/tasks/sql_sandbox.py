"""Running untrusted SQL on SQLite without letting it change anything or run forever.

A policy's query runs in a worker process (envs/tasks/sql_worker.py) on a private in-memory copy
of the database (serialized from a source opened read-only), with `PRAGMA query_only=ON`, an
authorizer that allows only reading (no writes, ATTACH, PRAGMA, DDL or transactions), a cap on
string/blob sizes and on the rows fetched, and a wall-clock limit. A progress handler stops most
overruns inside SQLite; a single slow function call never reaches it, so a query that is not back
shortly after its limit has its process killed. So a query can neither modify the user's database
nor hang the environment; every failure comes back as an error string. Idle workers are kept for
the next sandbox, so the common path is two pipe round trips.
"""

from __future__ import annotations

import itertools
import re
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thinkgym.rewards.worker import WorkerPool, WorkerProcess

_MAX_PERMUTED_COLUMNS = 6  # wider results are compared in their own column order (6! = 720 tries)
_KILL_AFTER_S = 0.5  # how long past its limit a query may take to stop on its own before it is killed
_START_TIMEOUT_S = 30.0
_WORKERS = WorkerPool((Path(__file__).parent / "sql_worker.py").read_text())


@dataclass(frozen=True)
class QueryResult:
    """Rows of a query, or the error that stopped it (syntax, runtime, denied or timed out)."""

    rows: list[tuple] | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def open_readonly(path: str | Path) -> sqlite3.Connection:
    """A read-only connection to a database file (a URI with mode=ro: SQLite refuses writes)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"database file not found: {str(p)!r}")
    return sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)


def _decode(value: Any) -> Any:
    return bytes.fromhex(value[0]) if isinstance(value, list) else value


class SQLSandbox:
    """A private, locked-down in-memory copy of `source` for one episode's queries.

    `source` must have no uncommitted writes (serializing waits for them to end).
    """

    def __init__(self, source: sqlite3.Connection, timeout_s: float = 2.0, max_rows: int = 10_000):
        self.timeout_s, self.max_rows = float(timeout_s), int(max_rows)
        self._db = source.serialize()
        self._worker: WorkerProcess | None = None

    def _loaded(self) -> WorkerProcess:
        """A worker holding this sandbox's database (a new one after a kill)."""
        if self._worker is None:
            w = _WORKERS.acquire()
            if w.request({"op": "load"}, self._db, _START_TIMEOUT_S) is None:
                _WORKERS.discard(w)
                raise RuntimeError("the SQL worker process failed to start or to load the database")
            self._worker = w
        return self._worker

    def run(self, sql: str) -> QueryResult:
        """Execute one statement under the time limit; never raises for a bad query."""
        w = self._loaded()
        reply = w.request({"op": "run", "sql": sql, "timeout_s": self.timeout_s, "max_rows": self.max_rows}, None,
                          self.timeout_s + _KILL_AFTER_S)
        if reply is None:  # stuck inside one call (or died): only killing the process stops it
            died = w.proc.poll()
            _WORKERS.discard(w)
            self._worker = None
            if died is not None:
                return QueryResult(None, f"the query's worker process died (exit status {died})")
            return QueryResult(None, f"time limit exceeded ({self.timeout_s:g} s)")
        if "error" in reply:
            return QueryResult(None, reply["error"])
        return QueryResult([tuple(_decode(v) for v in row) for row in reply["rows"]])

    def close(self) -> None:
        if self._worker is not None:
            _WORKERS.release(self._worker)
            self._worker = None

    def __enter__(self) -> "SQLSandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_STRING_LITERAL = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")
_ORDER_BY = re.compile(r"\border\s+by\b", re.IGNORECASE)


def is_ordered(sql: str) -> bool:
    """Whether a query asks for an order (ORDER BY outside string literals): then row order counts."""
    return bool(_ORDER_BY.search(_STRING_LITERAL.sub("''", sql)))


def _norm(value: Any) -> Any:
    return round(value, 6) if isinstance(value, float) else value


def results_match(pred: list[tuple], gold: list[tuple], ordered: bool) -> bool:
    """Execution match: same rows (as a multiset, or as a sequence when `ordered`).

    Columns may come in any order (as in Spider's test-suite evaluation) for results of up to six
    columns: `SELECT COUNT(*), city` answers a question whose gold is `SELECT city, COUNT(*)`.
    Floats are compared to 6 decimals.
    """
    if len(pred) != len(gold):
        return False
    if not gold:
        return True
    width = len(gold[0])
    if any(len(r) != width for r in pred):
        return False
    gold_n = [tuple(map(_norm, r)) for r in gold]
    target = gold_n if ordered else Counter(gold_n)
    perms = itertools.permutations(range(width)) if width <= _MAX_PERMUTED_COLUMNS else [tuple(range(width))]
    for perm in perms:
        rows = [tuple(_norm(r[i]) for i in perm) for r in pred]
        if (rows if ordered else Counter(rows)) == target:
            return True
    return False
