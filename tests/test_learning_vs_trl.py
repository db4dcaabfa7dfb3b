"""The learner-vs-TRL benchmark runs both arms for real (CPU, tiny sizes), on equal prompts and reward."""

import argparse
import importlib.util
from pathlib import Path

import pytest
import torch

from thinkgym.envs import TokenAction

pytest.importorskip("trl", reason="the TRL comparison needs trl (pip install -e '.[dev]')")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("learning_vs_trl", ROOT / "benchmarks" / "learning_vs_trl.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


KW = {"task_kwargs": {"n_terms": 4, "recheck": 0.5}, "max_thinking_tokens": 64}


def test_trl_arm_scores_completions_as_the_env_does(bench):
    import gymnasium as gym

    env = gym.make(bench.ENV, **KW).unwrapped
    tok = env.tokenizer
    env.reset(seed=3)
    seed, demo = env.problem.seed, env.encode(env.task.demonstration(env.problem.seed))
    wrong = env.encode(env.task.demonstration(env.problem.seed).replace("\\boxed{", "\\boxed{9"))
    reward = bench.env_reward(env)
    got = reward(None, None, completion_ids=[demo + [tok.eos_token_id], demo, wrong + [tok.eos_token_id]], problem_seed=[seed] * 3)
    assert got == [1.0, 0.0, 0.0]  # correct and ended; cut off before EOS; wrong
    _, r, *_ = env.step(TokenAction.from_ids(tok, demo, eos=True))
    assert r == got[0]


@pytest.mark.slow
def test_both_arms_train_from_one_start(bench, tmp_path):
    """One step of each arm from a shared warm start, with TRL fed the env's own prompts (trl_arm
    asserts that TRL tokenizes each as the env does); the start is left as it was."""
    args = argparse.Namespace(steps=1, sft_steps=5, learning_rate=1e-3, prompts_per_step=2, num_generations=2, n_terms=4,
                              recheck=0.5, budget=64, held_out=2, samples=1, out=str(tmp_path))
    start = bench.warm_start(0, KW, args)
    before = {k: v.clone() for k, v in start.model.state_dict().items()}
    for arm in (bench.thinkgym_arm, bench.trl_arm):
        trained = arm(start, 0, KW, args)
        assert trained.model is not start.model
        assert all(torch.equal(before[k], v) for k, v in start.model.state_dict().items())
        assert 0.0 <= bench.held_out(trained, KW, args) <= 1.0
