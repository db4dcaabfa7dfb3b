"""Running untrusted SQL on SQLite without letting it change anything or run forever.

A policy's query runs on a private in-memory copy of the database (made with SQLite's backup
API from a source opened read-only), with `PRAGMA query_only=ON`, an authorizer that allows only
reading (no writes, ATTACH, PRAGMA, DDL or transactions), a cap on string/blob sizes and on the
rows fetched, and a wall-clock limit enforced by a progress handler. So a query can neither modify
the user's database nor hang the environment; every failure comes back as an error string.
"""

from __future__ import annotations

import itertools
import re
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Authorizer actions a read-only SELECT needs; everything else (INSERT, UPDATE, DELETE, CREATE,
# DROP, ALTER, ATTACH, DETACH, PRAGMA, TRANSACTION, ...) is denied when the statement is prepared.
_ALLOWED_ACTIONS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE})
_MAX_VALUE_BYTES = 10_000_000  # no string or blob (e.g. randomblob(1e9)) may grow past this
_PROGRESS_EVERY = 1000  # SQLite VM instructions between checks of the clock
_MAX_PERMUTED_COLUMNS = 6  # wider results are compared in their own column order (6! = 720 tries)


@dataclass(frozen=True)
class QueryResult:
    """Rows of a query, or the error that stopped it (syntax, runtime, denied or timed out)."""

    rows: list[tuple] | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _authorize(action: int, *_: Any) -> int:
    return sqlite3.SQLITE_OK if action in _ALLOWED_ACTIONS else sqlite3.SQLITE_DENY


def open_readonly(path: str | Path) -> sqlite3.Connection:
    """A read-only connection to a database file (a URI with mode=ro: SQLite refuses writes)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"database file not found: {str(p)!r}")
    return sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)


class SQLSandbox:
    """A private, locked-down in-memory copy of `source` for one episode's queries.

    `source` must have no uncommitted writes (SQLite's backup waits for them to end).
    """

    def __init__(self, source: sqlite3.Connection, timeout_s: float = 2.0, max_rows: int = 10_000):
        self.timeout_s, self.max_rows = float(timeout_s), int(max_rows)
        self.conn = sqlite3.connect(":memory:", check_same_thread=False)
        source.backup(self.conn)
        self.conn.execute("PRAGMA query_only=ON")
        self.conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, _MAX_VALUE_BYTES)
        self.conn.set_authorizer(_authorize)

    def run(self, sql: str) -> QueryResult:
        """Execute one statement under the time limit; never raises for a bad query."""
        deadline = time.monotonic() + self.timeout_s
        self.conn.set_progress_handler(lambda: time.monotonic() > deadline, _PROGRESS_EVERY)
        try:
            cur = self.conn.execute(sql)
            rows: list[tuple] = []
            while batch := cur.fetchmany(1000):
                rows += batch
                if len(rows) > self.max_rows:
                    return QueryResult(None, f"result too large: more than {self.max_rows} rows")
            return QueryResult(rows)
        except sqlite3.OperationalError as exc:
            if str(exc) == "interrupted":
                return QueryResult(None, f"time limit exceeded ({self.timeout_s:g} s)")
            return QueryResult(None, f"OperationalError: {exc}")
        except (sqlite3.Error, ValueError, OverflowError, MemoryError) as exc:
            return QueryResult(None, f"{exc.__class__.__name__}: {exc}")
        finally:
            self.conn.set_progress_handler(None, _PROGRESS_EVERY)
            if self.conn.in_transaction:
                self.conn.rollback()

    def close(self) -> None:
        self.conn.close()

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
