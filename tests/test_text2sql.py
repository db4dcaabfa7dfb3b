"""Text2SQL-v0: execution accuracy, containment of hostile SQL, and users' Spider/BIRD-style data."""

import hashlib
import json
import sqlite3
import time

import gymnasium as gym
import pytest

import thinkgym  # noqa: F401
from thinkgym.envs.tasks import make_task
from thinkgym.envs.tasks.sql_sandbox import SQLSandbox, is_ordered, results_match
from thinkgym.envs.tasks.text2sql import TEMPLATES, extract_sql, finish_sql
from thinkgym.envs.text2sql import Text2SQLEnv


def answer(sql: str) -> str:
    return finish_sql("thinking\n", sql)


def seed_for(task, template: str) -> int:
    return next(s for s in range(500) if task.sample(s).difficulty["template"] == template)


@pytest.fixture(scope="module")
def task():
    return make_task("text2sql")


def test_every_template_demonstration_scores_one_through_the_env():
    env = gym.make("Text2SQL-v0").unwrapped
    for template in TEMPLATES:
        env.reset(seed=0, options={"problem_seed": seed_for(env.task, template)})
        demo = env.task.demonstration(env.problem.seed)
        assert demo.split("</think>")[1].strip() == f"```sql\n{env.problem.answer}\n```"
        _, reward, term, trunc, info = env.step(demo)
        assert (reward, term, trunc, info["correct"], info["sql_error"]) == (1.0, True, False, True, None), template
        assert info["answer"] == env.problem.answer


def test_observation_carries_schema_and_question_and_is_seeded():
    env = gym.make("Text2SQL-v0")
    obs, _ = env.reset(seed=3)
    problem = env.unwrapped.problem
    assert "CREATE TABLE orders" in obs and problem.meta["question"] in obs and "```sql" in obs
    assert gym.make("Text2SQL-v0").reset(seed=3)[0] == obs


def test_wrong_sql_scores_zero_and_errors_are_reported(task):
    p = task.sample(seed_for(task, "count"))
    wrong = p.answer.replace("COUNT(*)", "COUNT(*) + 1")
    assert task.verify(p, answer(p.answer)).score == 1.0
    v = task.verify(p, answer(wrong))
    assert (v.score, v.answer, v.error, v.format_error) == (0.0, wrong, None, False)
    v = task.verify(p, answer("SELEC COUNT(*) FROM customers"))
    assert v.score == 0.0 and "syntax error" in v.error
    v = task.verify(p, answer("SELECT nope FROM customers"))
    assert v.score == 0.0 and "no such column" in v.error
    v = task.verify(p, p.answer)  # no </think> and no fence: a format error, not a wrong query
    assert v.format_error and v.answer is None


def test_order_matters_only_when_the_gold_query_orders(task):
    p = task.sample(seed_for(task, "order_limit"))
    gold_rows = task.execute(p, p.answer).rows
    assert len(gold_rows) > 1 or p.answer.endswith("LIMIT 1")
    if len(gold_rows) > 1:
        flipped = p.answer.replace("DESC", "§").replace("ASC", "DESC").replace("§", "ASC")
        inner = f"SELECT name FROM ({p.answer}) ORDER BY name"
        same_set = task.verify(p, answer(inner)).score
        assert task.verify(p, answer(flipped)).score == 0.0
        assert same_set == float(sorted(gold_rows) == gold_rows)
    q = task.sample(seed_for(task, "filter"))
    assert task.verify(q, answer(q.answer + " ORDER BY name DESC")).score == 1.0
    g = task.sample(seed_for(task, "group_by"))
    cols = g.answer.split("SELECT ")[1].split(" FROM")[0].split(", ")
    swapped = g.answer.replace(", ".join(cols), ", ".join(reversed(cols)), 1)
    assert swapped != g.answer and task.verify(g, answer(swapped)).score == 1.0


def test_result_comparison():
    assert results_match([(1, "a"), (2, "b")], [(2, "b"), (1, "a")], ordered=False)
    assert not results_match([(1, "a"), (2, "b")], [(2, "b"), (1, "a")], ordered=True)
    assert not results_match([(1,), (1,)], [(1,), (2,)], ordered=False)  # multisets, not sets
    assert results_match([(0.1 + 0.2,)], [(0.3,)], ordered=False)
    assert results_match([("a", 1)], [(1, "a")], ordered=True)
    assert not results_match([(1, 2)], [(1,)], ordered=False)
    assert is_ordered("select a from t order  by a") and not is_ordered("SELECT 'order by' FROM t")


def test_extract_sql_takes_the_last_fence_after_think():
    text = "```sql\nSELECT 0\n```</think>draft ```sql\nSELECT 1\n``` final ```\nSELECT 2;\n```"
    assert extract_sql(text) == "SELECT 2;"
    assert extract_sql("SELECT 1") is None and extract_sql("</think>```sql\n```") is None


@pytest.fixture()
def user_data(tmp_path):
    """A Spider-style layout: db_dir/<db_id>/<db_id>.sqlite and a jsonl of questions."""
    db = tmp_path / "db" / "zoo" / "zoo.sqlite"
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE animal (id INTEGER PRIMARY KEY, kind TEXT, legs INTEGER)")
    conn.executemany("INSERT INTO animal VALUES (?, ?, ?)", [(1, "cat", 4), (2, "emu", 2), (3, "ant", 6), (4, "dog", 4)])
    conn.commit()
    conn.close()
    rows = [{"question": "Which animals have four legs?", "db_id": "zoo", "query": "SELECT kind FROM animal WHERE legs = 4"},
            {"question": "How many animals are there?", "db_id": "zoo", "query": "SELECT COUNT(*) FROM animal"}]
    path = tmp_path / "dev.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, tmp_path / "db", db


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_user_data_spider_style(user_data):
    path, db_dir, _ = user_data
    env = Text2SQLEnv(task_kwargs={"data_path": str(path), "db_dir": str(db_dir)})
    seen = set()
    for seed in range(2):
        obs, _ = env.reset(seed=0, options={"problem_seed": seed})
        assert "CREATE TABLE animal" in obs and env.problem.meta["db_id"] == "zoo"
        seen.add(env.problem.answer)
        assert env.step(env.task.demonstration(seed))[1] == 1.0
    assert len(seen) == 2
    env.reset(seed=0, options={"problem_seed": 0})
    wrong = "SELECT kind FROM animal WHERE legs = 2" if "legs" in env.problem.answer else "SELECT COUNT(*) - 1 FROM animal"
    assert env.step(answer(wrong))[1] == 0.0


def test_user_data_bird_style_fields_and_errors(user_data, tmp_path):
    _, db_dir, _ = user_data
    bird = tmp_path / "bird.json"
    bird.write_text(json.dumps([{"question": "How many legs in all?", "db_id": "zoo", "SQL": "SELECT SUM(legs) FROM animal",
                                 "evidence": "legs is a column of animal"}]))
    task = make_task("text2sql", data_path=str(bird), db_dir=str(db_dir))
    p = task.sample(7)
    assert "Hint: legs is a column" in p.prompt and task.verify(p, answer("SELECT 16")).score == 1.0
    with pytest.raises(ValueError, match="fields"):
        make_task("text2sql", data_path=str(bird), db_dir=str(db_dir), fields={"sql": "missing"})
    with pytest.raises(ValueError, match="data_path and db_dir"):
        make_task("text2sql", data_path=str(bird))
    with pytest.raises(ValueError, match="templates"):
        make_task("text2sql", templates=("nope",))
    with pytest.raises(ValueError, match="timeout_s"):
        make_task("text2sql", timeout_s=0)


DESTRUCTIVE = [
    "DROP TABLE animal", "DELETE FROM animal", "UPDATE animal SET legs = 0", "INSERT INTO animal VALUES (9, 'x', 1)",
    "CREATE TABLE t (x)", "ALTER TABLE animal ADD COLUMN y", "PRAGMA query_only = OFF", "PRAGMA user_version = 7",
    "PRAGMA journal_mode = DELETE", "VACUUM", "BEGIN", "SELECT 1; DROP TABLE animal",
    "WITH x AS (SELECT 1) DELETE FROM animal", "REPLACE INTO animal VALUES (1, 'x', 0)",
]


def test_destructive_sql_changes_nothing(user_data, tmp_path):
    path, db_dir, db = user_data
    before = digest(db)
    task = make_task("text2sql", data_path=str(path), db_dir=str(db_dir))
    p = task.sample(0)
    target = tmp_path / "attached.sqlite"
    for sql in DESTRUCTIVE + [f"ATTACH DATABASE '{target}' AS other"]:
        v = task.verify(p, answer(sql))
        assert v.score == 0.0 and v.error, sql
    assert not target.exists()
    assert task.verify(p, answer(p.answer)).score == 1.0
    assert digest(db) == before
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*), SUM(legs), MAX(kind) FROM animal").fetchone() == (4, 16, "emu")
        assert conn.execute("PRAGMA user_version").fetchone() == (0,)


def test_sandbox_blocks_writes_even_within_one_episode():
    src = sqlite3.connect(":memory:")
    src.execute("CREATE TABLE t (x)")
    src.execute("INSERT INTO t VALUES (1)")
    src.commit()
    with SQLSandbox(src, timeout_s=1.0) as box:
        for sql in ("DELETE FROM t", "PRAGMA query_only=OFF", "UPDATE t SET x = 2"):
            assert not box.run(sql).ok
        assert box.run("SELECT x FROM t").rows == [(1,)]
        assert not box.run("SELECT randomblob(100000000)").ok  # size cap, not an allocation
        assert "result too large" in SQLSandbox(src, max_rows=5).run(
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c LIMIT 50) SELECT i FROM c").error


def test_never_ending_cross_join_is_stopped_by_the_time_limit():
    env = Text2SQLEnv(task_kwargs={"timeout_s": 0.2})
    env.reset(seed=1)
    cross = "SELECT COUNT(*) FROM orders a, orders b, orders c, orders d, orders e, orders f, orders g, orders h"
    start = time.monotonic()
    _, reward, term, _, info = env.step(answer(cross))
    elapsed = time.monotonic() - start
    assert reward == 0.0 and term and "time limit" in info["sql_error"]
    assert elapsed < 2.0
    env.reset(seed=1)
    assert env.step(env.task.demonstration(env.problem.seed))[1] == 1.0  # the env still works afterwards


SLOW_FUNCTIONS = [  # one SQLite function call that never reaches the progress handler
    "SELECT " + ", ".join(["length(printf('%.*c', 1000000000, 'x'))"] * 5),
    "SELECT printf('%.*c', 1000000000, 'x') IS NULL",
]


@pytest.mark.parametrize("sql", SLOW_FUNCTIONS)
def test_a_slow_function_call_is_stopped_by_the_time_limit(sql):
    """Issue 34: five printf calls took 16 s against a 2 s limit, with no error."""
    env = Text2SQLEnv(task_kwargs={"timeout_s": 0.5})
    env.reset(seed=1)
    start = time.monotonic()
    _, reward, term, _, info = env.step(answer(sql))
    assert reward == 0.0 and term and info["sql_error"] == "time limit exceeded (0.5 s)"
    assert time.monotonic() - start < 2.0
    env.reset(seed=1)
    assert env.step(answer(env.unwrapped.problem.answer))[1] == 1.0


def test_the_sandbox_answers_after_a_killed_query_and_keeps_types():
    src = sqlite3.connect(":memory:")
    src.execute("CREATE TABLE t (x, y, z)")
    src.execute("INSERT INTO t VALUES (1, 2.5, x'00ff')")
    src.commit()
    with SQLSandbox(src, timeout_s=0.3) as box:
        assert box.run(SLOW_FUNCTIONS[0]).error == "time limit exceeded (0.3 s)"
        assert box.run("SELECT x, y, z, 'a' || NULL, 1e308 * 10 FROM t").rows == [(1, 2.5, b"\x00\xff", None, float("inf"))]
