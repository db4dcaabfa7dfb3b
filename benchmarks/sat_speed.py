"""SAT speed at SATURN's 10 test levels: generation + verification per instance, a whole SAT-v0
episode (reset + one answer), and python-sat's solve time on the same instances for scale.

    .venv/bin/python benchmarks/sat_speed.py [--instances 2000]
"""

from __future__ import annotations

import argparse
import time

from pysat.solvers import Solver

from thinkgym.envs.sat import SATEnv
from thinkgym.envs.tasks.sat import SATURN_TEST_LEVELS, SATTask, difficulty


def per_item_us(fn, items) -> float:
    start = time.perf_counter()
    for x in items:
        fn(x)
    return (time.perf_counter() - start) / len(items) * 1e6


def gen_verify(task: SATTask, seed: int) -> None:
    p = task.sample(seed)
    assert task.verify(p, f"\\boxed{{{p.answer}}}").correct


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--instances", type=int, default=2000)
    seeds = range(ap.parse_args().instances)
    head = f"{'(n,k,l)':>10} {'D':>6} | {'gen+verify us':>13} {'per s':>7} | {'random gen+verify us':>20} | {'episode us':>10} | {'pysat solve us':>14}"
    print(head + "\n" + "-" * len(head))
    for n, k, l in SATURN_TEST_LEVELS:
        task, rand = SATTask(n=n, k=k, l=l), SATTask(n=n, k=k, l=l, generator="random")
        planted = per_item_us(lambda s: gen_verify(task, s), seeds)
        random_us = per_item_us(lambda s: gen_verify(rand, s), seeds[: len(seeds) // 4])
        env = SATEnv(n=n, k=k, l=l)

        def episode(seed: int) -> None:
            env.reset(seed=seed)
            assert env.step(f"</think>\\boxed{{{env.problem.answer}}}")[1] == 1.0

        episode_us = per_item_us(episode, seeds[: len(seeds) // 4])
        formulas = [[list(c) for c in task.sample(s).meta["clauses"]] for s in seeds]

        def solve(clauses) -> None:
            with Solver(name="minisat22", bootstrap_with=clauses) as s:
                assert s.solve()

        solve_us = per_item_us(solve, formulas)
        print(f"{str((n, k, l)):>10} {difficulty(n, k, l):6.2f} | {planted:13.1f} {1e6 / planted:7.0f} | "
              f"{random_us:20.1f} | {episode_us:10.1f} | {solve_us:14.1f}")


if __name__ == "__main__":
    main()
