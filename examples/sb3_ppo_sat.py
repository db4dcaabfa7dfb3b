"""Classic RL on a reasoning env: stable-baselines3 PPO (MlpPolicy) writes SAT answers token by token.

The tiny SAT-v0 (k=3 variables, l=2 clauses) goes through TokenLevelWrapper with a 5-entry
vocabulary ("0", "1", "\\boxed{", "}", end). The policy sees the last 32 token ids (the formula and
what it wrote so far) and gets SAT-v0's reward when it ends: 1 solved, 0 wrong, -1 no box.
After a fixed number of PPO steps it prints the success rate on held-out seeds next to a uniformly
random policy and next to "right format, random bits" (the share of assignments that satisfy).

    .venv/bin/python examples/sb3_ppo_sat.py [--steps 300000] [--n 2]
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from thinkgym.envs.sat import SATEnv
from thinkgym.envs.tasks.sat import satisfied_count
from thinkgym.envs.token_level import TokenLevelWrapper

VOCAB = ["0", "1", "\\boxed{", "}"]
EVAL_SEEDS = range(10**6, 10**6 + 1000)  # never drawn in training (those seeds come from np_random)


def make_env(n: int) -> TokenLevelWrapper:
    return TokenLevelWrapper(SATEnv(n=n, k=3, l=2, max_thinking_tokens=16), vocab=VOCAB, window=32)


def success_rate(env: TokenLevelWrapper, act) -> float:
    wins = 0
    for seed in EVAL_SEEDS:
        obs, _ = env.reset(seed=seed)
        done = False
        while not done:
            obs, reward, term, trunc, _ = env.step(act(obs))
            done = term or trunc
        wins += reward == 1.0
    return wins / len(EVAL_SEEDS)


def random_bits_rate(env: TokenLevelWrapper) -> float:
    """Expected success of a policy with the right format and uniformly random bits."""
    rates = []
    for seed in EVAL_SEEDS:
        env.reset(seed=seed)
        clauses = env.unwrapped.problem.meta["clauses"]
        bits = ["".join(b) for b in itertools.product("01", repeat=3)]
        rates.append(np.mean([satisfied_count(clauses, b) == len(clauses) for b in bits]))
    return float(np.mean(rates))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--steps", type=int, default=300_000, help="PPO environment steps (tokens)")
    ap.add_argument("--n", type=int, default=2, help="literals per clause (n <= 3)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # a small MLP: threads only add overhead

    venv = VecNormalize(DummyVecEnv([lambda: make_env(args.n) for _ in range(8)]), norm_reward=False)
    venv.seed(0)
    model = PPO("MlpPolicy", venv, n_steps=256, batch_size=512, ent_coef=0.01, learning_rate=3e-4, seed=0, verbose=0)
    start = time.perf_counter()
    model.learn(total_timesteps=args.steps)
    minutes = (time.perf_counter() - start) / 60
    venv.training = False

    env = make_env(args.n)
    rng = np.random.default_rng(0)
    ppo = success_rate(env, lambda obs: int(model.predict(venv.normalize_obs(obs), deterministic=True)[0]))
    rand = success_rate(env, lambda obs: int(rng.integers(env.action_space.n)))
    print(f"SAT n={args.n} k=3 l=2, {args.steps} PPO steps in {minutes:.1f} min (wall), success on {len(EVAL_SEEDS)} held-out seeds:")
    print(f"  PPO (MlpPolicy, greedy)          {ppo:.3f}")
    print(f"  uniformly random policy          {rand:.3f}")
    print(f"  right format, random bits        {random_bits_rate(env):.3f}")


if __name__ == "__main__":
    main()
