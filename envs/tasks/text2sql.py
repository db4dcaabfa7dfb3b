"""Text-to-SQL on real SQLite databases, scored by execution accuracy.

Built in: a shop database (customers, products, orders) filled with seeded random rows, and
questions from templates with their gold SQL (filters, joins, group-by, order/limit, aggregates).
Users' own data: a Spider/BIRD-style jsonl (question, db_id, gold SQL) plus a folder of .sqlite
files. The answer is the last ```sql fenced block after `</think>`; it is right when its result
set equals the gold query's (order-insensitive unless the gold query has ORDER BY). Queries run in
a `SQLSandbox` (read-only, time-limited, on a per-episode copy), so bad SQL is only a wrong answer.
"""

from __future__ import annotations

import json
import re
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from thinkgym.rewards.math import THINK_CLOSE, after_think

from .base import Problem, Task, Verdict, check_positive
from .math_dataset import load_records
from .sql_sandbox import SQLSandbox, is_ordered, open_readonly, results_match

PROMPT = ("Answer the question with one SQLite query.\n\nSchema:\n{schema}\n\nQuestion: {question}\n\n"
          "Think step by step, then after </think> write the query in a ```sql fenced block.\n")
_FENCE = re.compile(r"```[ \t]*(?:sqlite|sql)?[ \t]*\n?(.*?)```", re.DOTALL | re.IGNORECASE)

SHOP_DDL = (
    "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, city TEXT, age INTEGER)",
    "CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT, category TEXT, price INTEGER)",
    "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers(id), "
    "product_id INTEGER REFERENCES products(id), quantity INTEGER)",
)
NAMES = ("Ada", "Bo", "Cy", "Dee", "Eli", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kai", "Lu", "Max", "Ned", "Oz",
         "Pia", "Quin", "Ray", "Sol", "Tea", "Uma", "Vic", "Wes", "Xia", "Yan", "Zoe", "Ari", "Bea", "Cal", "Dov")
CITIES = ("Lisbon", "Oslo", "Quito", "Hanoi", "Accra")
PRODUCTS = {
    "kitchen": ("kettle", "pan", "whisk", "ladle", "teapot", "grater"),
    "garden": ("rake", "hose", "shovel", "seeds", "trowel", "planter"),
    "office": ("stapler", "lamp", "binder", "marker", "ledger", "desk"),
    "toys": ("kite", "yoyo", "puzzle", "robot", "marbles", "blocks"),
}
_PRODUCT_CATEGORY = {p: c for c, ps in PRODUCTS.items() for p in ps}


@dataclass(frozen=True)
class SQLVerdict(Verdict):
    """A verdict with the execution error of the predicted query (syntax, runtime, denied, timeout)."""

    error: str | None = None


def extract_sql(text: str, require_think: bool = True) -> str | None:
    """The last fenced SQL block after `</think>` (```sql or a bare ```), or None."""
    tail = after_think(text, require_think)
    blocks = _FENCE.findall(tail) if tail is not None else []
    sql = blocks[-1].strip() if blocks else ""
    return sql or None


def finish_sql(trace: str, sql: str) -> str:
    """Close a thinking trace with the SQL answer, as the demonstrations do."""
    return f"{trace}{THINK_CLOSE}\n```sql\n{sql}\n```"


# -- the built-in shop database --------------------------------------------------------------------
@dataclass(frozen=True)
class Shop:
    customers: list[tuple]  # (id, name, city, age)
    products: list[tuple]  # (id, name, category, price)
    orders: list[tuple]  # (id, customer_id, product_id, quantity)


def make_shop(rng: np.random.Generator, n_rows: int) -> Shop:
    """Seeded rows; names, ages and prices are distinct so every ORDER BY has one right answer."""
    names = rng.choice(NAMES, n_rows, replace=False)
    ages = rng.choice(np.arange(18, 80), n_rows, replace=False)
    customers = [(i + 1, str(n), str(rng.choice(CITIES)), int(a)) for i, (n, a) in enumerate(zip(names, ages))]
    items = rng.choice(sorted(_PRODUCT_CATEGORY), n_rows, replace=False)
    prices = rng.choice(np.arange(2, 300), n_rows, replace=False)
    products = [(i + 1, str(p), _PRODUCT_CATEGORY[str(p)], int(c)) for i, (p, c) in enumerate(zip(items, prices))]
    orders = [(i + 1, int(rng.integers(1, n_rows + 1)), int(rng.integers(1, n_rows + 1)), int(rng.integers(1, 6)))
              for i in range(2 * n_rows)]
    return Shop(customers, products, orders)


def shop_database(shop: Shop) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    for ddl in SHOP_DDL:
        conn.execute(ddl)
    for table, rows in (("customers", shop.customers), ("products", shop.products), ("orders", shop.orders)):
        conn.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(rows[0]))})", rows)
    conn.commit()
    return conn


# A template turns (shop, rng) into (question, gold SQL, one line of reasoning for the demonstration).
Template = Callable[[Shop, np.random.Generator], tuple[str, str, str]]


def _pick(rng: np.random.Generator, values: list) -> object:
    return values[int(rng.integers(len(values)))]


def _filter(shop: Shop, rng: np.random.Generator) -> tuple[str, str, str]:
    city = _pick(rng, sorted({c[2] for c in shop.customers}))
    return (f"List the names of the customers who live in {city}.",
            f"SELECT name FROM customers WHERE city = '{city}'",
            f"Customers have a city column, so I filter customers on city = '{city}' and select name.")


def _count(shop: Shop, rng: np.random.Generator) -> tuple[str, str, str]:
    age = int(np.median([c[3] for c in shop.customers])) + int(rng.integers(-5, 6))
    return (f"How many customers are older than {age}?",
            f"SELECT COUNT(*) FROM customers WHERE age > {age}",
            f"Older than {age} means age > {age} (strict); I count the matching customers.")


def _aggregate(shop: Shop, rng: np.random.Generator) -> tuple[str, str, str]:
    cat = _pick(rng, sorted({p[2] for p in shop.products}))
    fn, word = _pick(rng, [("AVG", "average"), ("MAX", "highest"), ("MIN", "lowest"), ("SUM", "total")])
    return (f"What is the {word} price of the products in the {cat} category?",
            f"SELECT {fn}(price) FROM products WHERE category = '{cat}'",
            f"The {word} is {fn}(price) over the products whose category is '{cat}'.")


def _join(shop: Shop, rng: np.random.Generator) -> tuple[str, str, str]:
    ordered = sorted({shop.products[o[2] - 1][2] for o in shop.orders})
    cat = _pick(rng, ordered)
    return (f"What are the distinct names of the customers who ordered a product in the {cat} category?",
            "SELECT DISTINCT c.name FROM customers AS c JOIN orders AS o ON o.customer_id = c.id "
            f"JOIN products AS p ON p.id = o.product_id WHERE p.category = '{cat}'",
            "Orders link customers to products, so I join all three tables, keep the "
            f"'{cat}' products and select each customer name once.")


def _group_by(shop: Shop, rng: np.random.Generator) -> tuple[str, str, str]:
    if rng.random() < 0.5:
        return ("For each city, how many customers live there?",
                "SELECT city, COUNT(*) FROM customers GROUP BY city",
                "One row per city: group the customers by city and count each group.")
    return ("What is the total quantity ordered in each product category?",
            "SELECT p.category, SUM(o.quantity) FROM orders AS o JOIN products AS p ON p.id = o.product_id "
            "GROUP BY p.category",
            "Quantities are in orders and categories in products: join them, group by category, sum quantity.")


def _order_limit(shop: Shop, rng: np.random.Generator) -> tuple[str, str, str]:
    k = int(rng.integers(1, 4))
    most, direction = _pick(rng, [("most expensive", "DESC"), ("cheapest", "ASC")])
    return (f"What are the names of the {k} {most} products, in order starting with the {most}?",
            f"SELECT name FROM products ORDER BY price {direction} LIMIT {k}",
            f"Sort the products by price {direction} and keep the first {k}; the order matters.")


def _having(shop: Shop, rng: np.random.Generator) -> tuple[str, str, str]:
    counts = np.bincount([o[1] for o in shop.orders])
    m = int(rng.integers(1, max(2, int(counts.max()))))  # at least one customer qualifies when possible
    return (f"Which customers placed more than {m} orders? Give their names.",
            "SELECT c.name FROM customers AS c JOIN orders AS o ON o.customer_id = c.id "
            f"GROUP BY c.id HAVING COUNT(*) > {m}",
            f"Count the orders per customer with a join and GROUP BY, and keep groups with COUNT(*) > {m}.")


TEMPLATES: dict[str, Template] = {
    "filter": _filter, "count": _count, "aggregate": _aggregate, "join": _join,
    "group_by": _group_by, "order_limit": _order_limit, "having": _having,
}
_FIELD_CANDIDATES = {"question": ("question",), "db_id": ("db_id",), "sql": ("query", "SQL", "sql", "gold_sql", "gold"),
                     "evidence": ("evidence",)}


@dataclass
class Text2SQLConfig:
    """Built-in shop questions by default; set `data_path` and `db_dir` for your own data."""

    n_rows: int = 8
    templates: tuple[str, ...] = tuple(TEMPLATES)
    data_path: str = ""
    db_dir: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 2.0
    max_rows: int = 10_000

    def __post_init__(self) -> None:
        check_positive("n_rows", self.n_rows, 3)
        if self.n_rows > len(NAMES) or self.n_rows > len(_PRODUCT_CATEGORY):
            raise ValueError(f"n_rows must be at most {min(len(NAMES), len(_PRODUCT_CATEGORY))}; got {self.n_rows}")
        self.templates = tuple(self.templates)
        bad = [t for t in self.templates if t not in TEMPLATES]
        if bad or not self.templates:
            raise ValueError(f"templates must be a non-empty subset of {sorted(TEMPLATES)}; got {list(self.templates)}")
        if bool(self.data_path) != bool(self.db_dir):
            raise ValueError("data_path and db_dir go together: a jsonl of questions and the folder of its .sqlite files")
        if self.db_dir and not Path(self.db_dir).is_dir():
            raise ValueError(f"db_dir={self.db_dir!r} is not a folder")
        unknown = set(self.fields) - set(_FIELD_CANDIDATES)
        if unknown:
            raise ValueError(f"fields has unknown keys {sorted(unknown)}; accepted keys: {sorted(_FIELD_CANDIDATES)}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be a positive number of seconds; got {self.timeout_s!r}")
        check_positive("max_rows", self.max_rows)


def _load_questions(path: str) -> list[dict]:
    """Rows of a jsonl file, or of a JSON array (Spider's and BIRD's dev.json)."""
    p = Path(path)
    if p.suffix == ".json" and p.is_file() and p.read_text().lstrip().startswith("["):
        return json.loads(p.read_text())
    return load_records(path)


class Text2SQLTask(Task):
    name = "text2sql"

    def __init__(self, **kwargs) -> None:
        self.config = Text2SQLConfig(**kwargs)
        self.records: list[dict] = []
        if self.config.data_path:
            self.records = _load_questions(self.config.data_path)
            if not self.records:
                raise ValueError(f"data_path={self.config.data_path!r}: the dataset is empty")
            self.columns = {role: self._column(role, self.records[0]) for role in _FIELD_CANDIDATES}
        self._schemas: dict[str, str] = {}
        self._last: tuple[tuple, SQLVerdict] | None = None

    def _column(self, role: str, row: dict) -> str | None:
        name = self.config.fields.get(role) or next((c for c in _FIELD_CANDIDATES[role] if c in row), None)
        if (name is None or name not in row) and role != "evidence":
            raise ValueError(f"{self.config.data_path!r} has no {role} field (looked for {self.config.fields.get(role) or _FIELD_CANDIDATES[role]}); "
                             f"its fields are {sorted(row)}: map one with fields={{{role!r}: NAME}}")
        return name

    # -- databases --------------------------------------------------------------------------------
    def db_path(self, db_id: str) -> Path:
        """Spider/BIRD layout `db_dir/<db_id>/<db_id>.sqlite`, or a flat `db_dir/<db_id>.sqlite`."""
        root = Path(self.config.db_dir)
        for p in (root / db_id / f"{db_id}.sqlite", root / f"{db_id}.sqlite"):
            if p.is_file():
                return p
        raise ValueError(f"no database for db_id={db_id!r} under db_dir={self.config.db_dir!r}")

    def _schema(self, db_id: str) -> str:
        if db_id not in self._schemas:
            with closing(open_readonly(self.db_path(db_id))) as conn:
                ddl = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND sql IS NOT NULL").fetchall()
            self._schemas[db_id] = ";\n".join(r[0].strip() for r in ddl) + ";"
        return self._schemas[db_id]

    def sandbox(self, problem: Problem) -> SQLSandbox:
        """A fresh locked-down copy of the problem's database (one per verification)."""
        if self.records:
            source = open_readonly(self.db_path(problem.meta["db_id"]))
        else:
            source = shop_database(make_shop(np.random.default_rng(problem.seed), self.config.n_rows))
        try:
            return SQLSandbox(source, self.config.timeout_s, self.config.max_rows)
        finally:
            source.close()

    # -- problems ---------------------------------------------------------------------------------
    def index(self, seed: int) -> int:
        """Seeds map onto the records in a fixed shuffled order, so any seed range covers them."""
        return int(np.random.default_rng(0).permutation(len(self.records))[seed % len(self.records)])

    def _make(self, seed: int) -> tuple[Problem, str]:
        if self.records:
            row = self.records[self.index(seed)]
            db_id, question = str(row[self.columns["db_id"]]), str(row[self.columns["question"]])
            ev = self.columns["evidence"]
            if ev and row.get(ev):
                question += f"\nHint: {row[ev]}"
            schema, why = self._schema(db_id), f"I look up the tables of {db_id} that the question needs."
            gold, difficulty = str(row[self.columns["sql"]]).strip(), {"db_id": db_id}
        else:
            rng = np.random.default_rng(seed)
            shop = make_shop(rng, self.config.n_rows)
            template = self.config.templates[int(rng.integers(len(self.config.templates)))]
            question, gold, why = TEMPLATES[template](shop, rng)
            db_id, schema = "shop", ";\n".join(SHOP_DDL) + ";"
            difficulty = {"template": template, "n_rows": self.config.n_rows}
        meta = {"question": question, "schema": schema, "db_id": db_id}
        return Problem(PROMPT.format(schema=schema, question=question), gold, seed, difficulty, meta), why

    def sample(self, seed: int) -> Problem:
        return self._make(seed)[0]

    def demonstration(self, seed: int) -> str:
        problem, why = self._make(seed)
        return finish_sql(f"The question: {problem.meta['question']}\n{why}\n", problem.answer)

    # -- scoring ----------------------------------------------------------------------------------
    def verify(self, problem: Problem, text: str) -> SQLVerdict:
        """Execution accuracy of the response's SQL; the last verdict is cached for the env's `info`."""
        key = (problem.seed, problem.answer, text)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        sql = extract_sql(text)
        if sql is None:
            verdict = SQLVerdict(0.0, None, True)
        else:
            with self.sandbox(problem) as box:
                gold, pred = box.run(problem.answer), box.run(sql)
            if not gold.ok:
                verdict = SQLVerdict(0.0, sql, False, f"the gold query failed: {gold.error}")
            elif not pred.ok:
                verdict = SQLVerdict(0.0, sql, False, pred.error)
            else:
                verdict = SQLVerdict(float(results_match(pred.rows, gold.rows, is_ordered(problem.answer))), sql, False)
        self._last = (key, verdict)
        return verdict

    def execute(self, problem: Problem, sql: str):
        """Run any SQL on the problem's database, contained (execution feedback for planners)."""
        with self.sandbox(problem) as box:
            return box.run(sql)
