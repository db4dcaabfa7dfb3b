"""TokenLevelWrapper: SB3's checker, one token per step, the wrapped env's rewards and endings."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import thinkgym  # noqa: F401
from thinkgym.envs.token_level import TokenLevelWrapper

VOCAB = ["0", "1", "\\boxed{", "}"]


def tiny_sat(window=64, **kwargs):
    return TokenLevelWrapper(gym.make("SAT-v0", n=3, k=3, l=2, max_thinking_tokens=16, **kwargs), vocab=VOCAB, window=window)


@pytest.mark.filterwarnings("ignore:.*different from the unwrapped version")
@pytest.mark.parametrize("make", [tiny_sat, lambda: TokenLevelWrapper(gym.make("SAT-v0")),
                                  lambda: TokenLevelWrapper(gym.make("DelethinkDemo-v0"), vocab=VOCAB)])
def test_stable_baselines3_and_gymnasium_checkers_pass(make):
    sb3_check_env(make(), warn=True)
    check_env(make(), skip_render_check=True)


def test_spaces():
    env = tiny_sat()
    assert env.action_space == gym.spaces.Discrete(5) and env.end_action == 4
    assert env.observation_space.shape == (64,)
    full = TokenLevelWrapper(gym.make("SAT-v0"))
    assert full.action_space.n == len(full.tokenizer) and full.end_action == full.tokenizer.eos_token_id


def test_writing_the_answer_token_by_token_earns_the_reward_at_the_end():
    env = tiny_sat()
    obs, info = env.reset(seed=0)
    prompt = info["prompt_token_ids"]
    assert np.array_equal(obs, np.array(prompt[-64:], dtype=np.float32))
    gold = env.unwrapped.problem.answer
    actions = [2] + [int(b) for b in gold] + [3]
    for a in actions:
        obs, r, term, trunc, _ = env.step(a)
        assert (r, term, trunc) == (0.0, False, False)
    written = env.tokenizer.encode(f"\\boxed{{{gold}}}", add_special_tokens=False)
    assert np.array_equal(obs, np.array((prompt + written)[-64:], dtype=np.float32))
    obs, r, term, trunc, info = env.step(env.end_action)
    assert (r, term, trunc, info["correct"], info["answer"]) == (1.0, True, False, True, gold)


def test_budget_runs_out_like_the_wrapped_env():
    env = tiny_sat()
    env.reset(seed=1)
    steps = 0
    while True:
        steps += 1
        _, r, term, trunc, info = env.step(0)
        if term or trunc:
            break
    assert steps == 16 and trunc and not term and r == -1.0 and info["thinking_tokens"] == 16


def test_short_context_is_left_padded():
    env = TokenLevelWrapper(gym.make("SAT-v0", n=1, k=1, l=1), window=4096, pad_id=-3)
    obs, info = env.reset(seed=0)
    n = len(info["prompt_token_ids"])
    assert (obs[: 4096 - n] == -3).all() and (obs[4096 - n:] >= 0).all()
    assert env.observation_space.contains(obs)


def test_stop_strings_hand_the_line_to_the_wrapped_env():
    env = TokenLevelWrapper(gym.make("LongCoT-v0", stop=["\n"]), vocab=["a", "\n"], window=8)
    _, info = env.reset(seed=0)
    n = len(info["prompt_token_ids"])
    env.step(0)
    _, r, term, trunc, info = env.step(1)  # "a\n" ends with a stop string: the inner env steps
    assert (r, term, trunc) == (0.0, False, False)
    assert len(info["prompt_token_ids"]) == n + 2 and info["max_new_tokens"] == env.unwrapped.max_thinking_tokens - 2


def test_a_full_chunk_follows_delethinks_context_reset():
    env = TokenLevelWrapper(gym.make("DelethinkDemo-v0"), vocab=["7"], window=32)
    _, info = env.reset(seed=0)
    query = info["prompt_token_ids"]
    inner = env.unwrapped
    C, m = inner.chunk_size, inner.carryover
    for _ in range(C - 1):
        assert env.step(0)[1:4] == (0.0, False, False)
    obs, r, term, trunc, info = env.step(0)  # the C-th token fills the chunk: Delethink resets the context
    assert (r, term, trunc, info["chunk"]) == (0.0, False, False, 1)
    assert info["prompt_token_ids"] == inner._prompt_ids and len(info["prompt_token_ids"]) == len(query) + m
    assert np.array_equal(obs, np.array(inner._prompt_ids[-32:], dtype=np.float32))
    assert info["max_new_tokens"] == C - m


@pytest.mark.parametrize("kwargs,match", [(dict(vocab=[""]), "vocab entries"), (dict(vocab=[10**9]), "vocab entries"),
                                          (dict(window=0), "window"), (dict(pad_id=0), "pad_id")])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TokenLevelWrapper(gym.make("SAT-v0"), **kwargs)
