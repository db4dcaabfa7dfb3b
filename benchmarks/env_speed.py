"""Delethink-v0's own overhead per step, next to the time a 1.5B model takes to generate a chunk.

    python benchmarks/env_speed.py

A scripted agent plays full traces (token actions, as the agent sends them) at C = 8192 and at the
demo sizes. The overhead is compared with generating the same chunk at vLLM's ~25k output tok/s for
a 1.5B model on one H100 (../shared/specs/performance_anchors.md §1.2).
"""

from __future__ import annotations

import time

import numpy as np

from thinkgym.envs import DelethinkEnv, TokenAction

VLLM_H100_TOK_S = 25_000


def bench(label: str, episodes: int, **kwargs) -> dict:
    env = DelethinkEnv(**kwargs)
    rng = np.random.default_rng(0)
    steps = tokens = 0
    t = time.perf_counter()
    for ep in range(episodes):
        _, info = env.reset(seed=ep)
        done = False
        while not done:
            ids = rng.integers(33, 120, size=info["max_new_tokens"]).tolist()  # a policy that never finishes
            _, _, term, trunc, info = env.step(TokenAction("", ids, eos=False))
            steps += 1
            tokens += len(ids)
            done = term or trunc
    dt = time.perf_counter() - t
    us_per_step = 1e6 * dt / (steps + episodes)  # resets count as steps
    chunk_gen_s = (tokens / steps) / VLLM_H100_TOK_S
    return {"label": label, "steps_per_s": (steps + episodes) / dt, "us_per_step": us_per_step,
            "mean_chunk_tokens": tokens / steps, "overhead_vs_generation": us_per_step * 1e-6 / chunk_gen_s}


if __name__ == "__main__":
    rows = [bench("C=8192 m=4096 I=5 (paper)", 20), bench("C=64 m=32 I=5 (demo)", 300, chunk_size=64, carryover=32, head=8,
                                                          task_kwargs={"n_terms": 8})]
    print(f"{'setting':<28} {'reset+step/s':>12} {'µs/step':>9} {'chunk tokens':>12} {'env / generation time':>22}")
    for r in rows:
        print(f"{r['label']:<28} {r['steps_per_s']:>12.0f} {r['us_per_step']:>9.0f} {r['mean_chunk_tokens']:>12.0f} {100 * r['overhead_vs_generation']:>21.3f}%")
