"""SAT-v0: generators, SATURN's answer semantics, agreement with python-sat, SATURN's files."""

import re

import gymnasium as gym
import numpy as np
import pytest
from pysat.formula import CNF
from pysat.solvers import Solver

import thinkgym  # noqa: F401
from thinkgym.envs.sat import SATEnv
from thinkgym.envs.tasks.sat import (SATURN_TEST_LEVELS, SATTask, difficulty, format_formula, max_clauses,
                                     parse_formula, satisfied_count, to_dimacs)


def pysat_accepts(clauses, bits: str, k: int) -> bool:
    """python-sat's word on an assignment read SATURN's way (missing bits are 0)."""
    assumptions = [v if (bits[v - 1] if v <= len(bits) else "0") == "1" else -v for v in range(1, k + 1)]
    with Solver(name="minisat22", bootstrap_with=[list(c) for c in clauses]) as s:
        return s.solve(assumptions=assumptions)


def test_verifier_agrees_with_python_sat_on_5000_pairs():
    rng = np.random.default_rng(0)
    outcomes = []
    for i in range(1000):
        n = int(rng.integers(1, 5))
        k = int(rng.integers(n, 10))
        generator = "planted" if i % 2 else "random"
        cap = max_clauses(n, k) // (1 if generator == "planted" else 4)  # dense random n-SAT is rarely satisfiable
        l = int(rng.integers(1, max(1, min(30, cap)) + 1))
        task = SATTask(n=n, k=k, l=l, generator=generator)
        p = task.sample(i)
        for _ in range(5):
            flips = rng.random(k) < 0.25
            bits = "".join(str(int(b) ^ int(f)) for b, f in zip(p.answer, flips))
            score = task.verify(p, f"\\boxed{{{bits}}}").score
            assert score == float(pysat_accepts(p.meta["clauses"], bits, k))
            outcomes.append(score)
    assert len(outcomes) == 5000 and 0.2 < np.mean(outcomes) < 0.8  # both verdicts well represented


@pytest.mark.parametrize("n,k,l", [(3, 5, 5), (3, 5, 20), (4, 8, 40), (6, 7, 40), (3, 3, 7), (1, 4, 4), (2, 26, 50)])
@pytest.mark.parametrize("generator", ["planted", "random"])
def test_generated_instances_are_well_formed_and_satisfiable(n, k, l, generator):
    task = SATTask(n=n, k=k, l=l, generator=generator)
    for seed in range(5):
        p = task.sample(seed)
        clauses = p.meta["clauses"]
        assert len(set(clauses)) == l and all(len({abs(x) for x in c}) == n for c in clauses)
        assert all(1 <= abs(x) <= k for c in clauses for x in c)
        assert satisfied_count(clauses, p.answer) == l and len(p.answer) == k
        assert pysat_accepts(clauses, p.answer, k)
        assert p.difficulty == {"n": n, "k": k, "l": l, "D": difficulty(n, k, l)}
        assert f'"clause": "{format_formula(list(clauses))}"' in p.prompt
        assert task.sample(seed) == p  # a pure function of the seed
    assert task.sample(0).meta != task.sample(1).meta or max_clauses(n, k) == l


def test_planted_with_every_possible_clause_has_the_plant_as_only_solution():
    task = SATTask(n=3, k=3, l=7)
    p = task.sample(4)
    sols = [f"{a:03b}" for a in range(8) if satisfied_count(p.meta["clauses"], f"{a:03b}") == 7]
    assert sols == [p.answer]


def test_saturn_answer_semantics():
    task = SATTask(n=3, k=5, l=6)
    p = task.sample(3)
    gold = p.answer
    assert task.verify(p, f"think... \\boxed{{{gold}}}").score == 1.0  # no </think> needed
    assert task.verify(p, f"\\boxed{{{gold}xyz}}").score == 1.0  # extra characters are ignored
    assert task.verify(p, f"\\boxed{{{gold}}} then \\boxed{{}}").score == float(satisfied_count(p.meta["clauses"], "") == 6)
    short = SATTask(n=2, k=4, l=3)
    q = next(short.sample(s) for s in range(100) if short.sample(s).answer.endswith("0"))
    assert short.verify(q, f"\\boxed{{{q.answer.rstrip('0')}}}").score == 1.0  # zero-padded
    none = task.verify(p, "no box here")
    assert none.format_error and none.answer is None
    strict = SATTask(n=3, k=5, l=6, require_think=True)
    assert strict.verify(p, f"\\boxed{{{gold}}}").format_error
    assert strict.verify(p, f"hmm</think>\\boxed{{{gold}}}").score == 1.0
    assert task.report(p, gold[:2]) == {"assignment": gold[:2] + "000", "num_clauses": 6,
                                        "satisfied_clauses": satisfied_count(p.meta["clauses"], gold[:2])}


def test_any_satisfying_assignment_scores_one():
    task = SATTask(n=3, k=6, l=8)
    p = task.sample(11)
    sols = [f"{a:06b}" for a in range(64) if pysat_accepts(p.meta["clauses"], f"{a:06b}", 6)]
    assert len(sols) > 1
    assert all(task.verify(p, f"\\boxed{{{s}}}").score == 1.0 for s in sols)


def test_dimacs_round_trips_through_python_sat():
    task = SATTask(n=4, k=8, l=40)
    p = task.sample(2)
    cnf = CNF(from_string=task.dimacs(2))
    assert cnf.nv == 8 and [tuple(c) for c in cnf.clauses] == list(p.meta["clauses"])
    assert to_dimacs([(1,)], 3).startswith("p cnf 3 1")


def test_parse_formula_reads_saturn_text_and_rejects_other_text():
    assert parse_formula("!A!BC & BD!E") == [(-1, -2, 3), (2, 4, -5)]
    with pytest.raises(ValueError, match="not a SATURN clause"):
        parse_formula("A|B & C")


@pytest.mark.parametrize("n,k,l", SATURN_TEST_LEVELS)
def test_demonstrations_solve_saturn_sized_instances(n, k, l):
    task = SATTask(n=n, k=k, l=l)
    for seed in range(10):
        demo = task.demonstration(seed)
        assert re.search(r"</think>\\boxed\{[01]{%d}\}$" % k, demo)
        assert task.verify(task.sample(seed), demo).score == 1.0


def saturn_files(shared_data):
    files = sorted((shared_data / "saturn").glob("*.jsonl"))
    if not files:
        pytest.skip("no SATURN files in shared data")
    return files


def test_saturn_released_files_load_and_verify(shared_data):
    files = saturn_files(shared_data)
    assert len(files) == 18
    rng = np.random.default_rng(1)
    total = agree = 0
    for path in files:
        task = SATTask(path=str(path))
        m = re.search(r"n(\d+)_k(\d+)_length(\d+)|Train_prompt_(\d+)_(\d+)_(\d+)", path.name)
        n, k, l = (int(x) for x in (m.groups()[:3] if m.group(1) else m.groups()[3:]))
        for seed in range(len(task)):
            p = task.sample(seed)
            row = task.records[seed]
            assert (p.difficulty["n"], p.difficulty["k"], p.difficulty["l"]) == (n, k, l)
            assert p.prompt == row["prompt"] and format_formula(list(p.meta["clauses"])) == row["clause"]
            assert task.verify(p, f"\\boxed{{{row['solution']}}}").score == 1.0
            bits = "".join(rng.choice(["0", "1"], size=k))
            score = task.verify(p, f"\\boxed{{{bits}}}").score
            assert score == float(pysat_accepts(p.meta["clauses"], bits, k))
            total, agree = total + 1, agree + int(score)
    assert total == 1000 + 2 * 250 + 2 * 500 + 4 * 20 and 0 < agree < total


def test_demonstrations_from_saturn_records(shared_data):
    path = shared_data / "saturn" / "test__n3_k7_length40_sample100.jsonl"
    task = SATTask(path=str(path))
    assert all(task.verify(task.sample(s), task.demonstration(s)).score == 1.0 for s in range(100))


def test_env_rewards_and_info():
    env = gym.make("SAT-v0", k=6, l=10).unwrapped
    _, info = env.reset(seed=0)
    assert info["difficulty"]["D"] == difficulty(3, 6, 10) and info["max_new_tokens"] == 10000
    _, r, term, trunc, info = env.step(env.task.demonstration(env.problem.seed))
    assert (r, term, trunc, info["correct"]) == (1.0, True, False, True)
    assert info["satisfied_clauses"] == info["num_clauses"] == 10 and len(info["assignment"]) == 6
    env.reset(seed=0)
    clauses = env.problem.meta["clauses"]
    bad = next(f"{a:06b}" for a in range(64) if satisfied_count(clauses, f"{a:06b}") < 10)
    _, r, _, _, info = env.step(f"\\boxed{{{bad}}}")
    assert r == 0.0 and not info["correct"] and info["satisfied_clauses"] == satisfied_count(clauses, bad)
    env.reset(seed=0)
    _, r, term, _, info = env.step("I give up")
    assert r == -1.0 and term and info["format_error"] and info["reward_components"] == {"correctness": 0.0, "format": -1.0}


def test_truncated_response_scores_like_a_missing_box():
    env = SATEnv(max_thinking_tokens=8, format_reward=-0.5)
    env.reset(seed=1)
    _, r, term, trunc, info = env.step("0" * 8)
    assert (r, term, trunc, info["assignment"]) == (-0.5, False, True, None)


@pytest.mark.parametrize("kwargs,match", [
    (dict(k=27), "k must be <= 26"),
    (dict(n=4, k=3), "n .* must be <= k"),
    (dict(n=3, k=3, l=8), "l must be <= 7"),
    (dict(generator="walksat"), "generator must be one of"),
    (dict(n=0), "n must be an integer >= 1"),
])
def test_bad_configs_name_the_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gym.make("SAT-v0", **kwargs)
    with pytest.raises(ValueError, match=match):
        gym.make("SATCurriculum-v0", levels=[kwargs])


def test_sat_takes_task_and_task_kwargs_like_its_keyword_knobs():
    by_kwargs = gym.make("SAT-v0", task="sat", task_kwargs={"k": 6, "l": 10})
    assert by_kwargs.reset(seed=0)[0] == gym.make("SAT-v0", k=6, l=10).reset(seed=0)[0]
    assert by_kwargs.unwrapped.problem.difficulty["k"] == 6
    assert gym.make("SAT-v0", task=SATTask(k=4)).unwrapped.task.config.k == 4
    with pytest.raises(ValueError, match=r"\['k'\] given both"):
        gym.make("SAT-v0", k=6, task_kwargs={"k": 7})
    with pytest.raises(ValueError, match=r"knobs \['k'\] cannot be combined with a Task instance"):
        gym.make("SAT-v0", task=SATTask(), k=4)
    with pytest.raises(ValueError, match="task='running_sum' .* must be 'sat' or a SATTask"):
        gym.make("SAT-v0", task="running_sum")


def test_sat_curriculum_applies_task_kwargs_to_every_level():
    env = gym.make("SATCurriculum-v0", task="sat", task_kwargs={"require_think": True}).unwrapped
    assert all(t.config.require_think for t in env._tasks) and len(env._tasks) == 4
    assert all(t.config.require_think for t in gym.make("SATCurriculum-v0", require_think=True).unwrapped._tasks)
    with pytest.raises(ValueError, match=r"\['k'\] set both for every level and by the level"):
        gym.make("SATCurriculum-v0", task_kwargs={"k": 6})
    with pytest.raises(ValueError, match="one SAT task per level, so task must be 'sat'"):
        gym.make("SATCurriculum-v0", task=SATTask())
