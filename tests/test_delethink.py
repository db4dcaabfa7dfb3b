"""Delethink-v0: the Markov property, chunk boundaries, answers across boundaries, robustness."""

import gymnasium as gym
import numpy as np
import pytest

import thinkgym  # noqa: F401
from thinkgym.envs import DelethinkEnv, TokenAction, builtin_tokenizer


@pytest.mark.parametrize("sizes", [dict(chunk_size=96, carryover=48, head=16, max_chunks=6),
                                   dict(chunk_size=64, carryover=40, head=0, max_chunks=4),
                                   dict(chunk_size=8192, max_chunks=3)])
def test_markov_property_with_a_policy_that_never_finishes(sizes):
    env = DelethinkEnv(**sizes)
    rng = np.random.default_rng(0)
    obs, info = env.reset(seed=7)
    query = list(info["prompt_token_ids"])
    C, m, head, I = env.chunk_size, env.carryover, env.head, env.max_chunks
    assert info["max_new_tokens"] == C
    first = None
    for chunk in range(1, I + 1):
        ids = [int(t) for t in rng.integers(33, 120, size=info["max_new_tokens"])]
        obs, r, term, trunc, info = env.step(TokenAction.from_ids(env.tokenizer, ids, eos=False))
        first = first or ids
        if chunk < I:
            assert not term and not trunc and r == 0.0
            p = info["prompt_token_ids"]
            assert len(p) <= len(query) + head + m
            assert p[: len(query)] == query
            assert p[len(query): len(query) + head] == first[:head]
            tail = p[len(query) + head:]
            assert len(tail) == m - head
            k = min(len(tail), len(ids))
            assert tail[-k:] == ids[-k:]  # the carried tail is the previous action's last ids
            assert info["max_new_tokens"] == C - m
    assert trunc and not term and info["chunks"] == I and r == 0.0
    assert info["thinking_tokens"] == C + (I - 1) * (C - m)


@pytest.mark.parametrize("restate, held", [(1.0, True), (0.0, False)])
def test_each_reset_reports_whether_the_carryover_held_the_state(restate, held):
    """Demonstrations streamed through DelethinkDemo-v0's chunks: a restating trace carries its state
    across every reset, one that leaves the position implicit carries it across none."""
    env = gym.make("DelethinkDemo-v0", task_kwargs={"n_terms": 8, "restate": restate}).unwrapped
    for seed in range(5):
        _, info = env.reset(seed=seed)
        ids, pos, done = env.encode(env.task.demonstration(env.problem.seed)), 0, False
        while not done:
            chunk = ids[pos:pos + info["max_new_tokens"]]
            pos += len(chunk)
            _, r, term, trunc, info = env.step(TokenAction.from_ids(env.tokenizer, chunk, eos=pos >= len(ids)))
            done = term or trunc
        assert r == 1.0 and info["chunks"] >= 2
        assert info["carried_state"] == [held] * (info["chunks"] - 1)
    env = gym.make("DelethinkDemo-v0", task="parity", task_kwargs={}).unwrapped  # a task with no state reports none
    env.reset(seed=0)
    env.step(TokenAction.from_ids(env.tokenizer, [50] * 64, eos=False))
    *_, info = env.step(TokenAction.from_ids(env.tokenizer, [50] * 4, eos=True))
    assert info["chunks"] == 2 and "carried_state" not in info


def test_text_actions_follow_the_same_boundaries():
    env = DelethinkEnv(chunk_size=64, carryover=32, head=8, max_chunks=3)
    _, info = env.reset(seed=1)
    _, _, term, trunc, info = env.step("7" * 64)  # fills the budget: a boundary
    assert not term and not trunc and info["max_new_tokens"] == 32
    _, r, term, trunc, info = env.step("short and done")  # shorter than the budget: ended
    assert term and not trunc and info["format_error"]


def test_terminates_on_eos_with_the_right_reward():
    env = DelethinkEnv(chunk_size=96, carryover=48, head=16, task_kwargs={"n_terms": 4})
    _, info = env.reset(seed=3)
    demo = env.task.demonstration(env.problem.seed)
    ids = env.encode(demo)
    assert len(ids) < 96
    _, r, term, trunc, info = env.step(TokenAction.from_ids(env.tokenizer, ids, eos=True))
    assert term and not trunc and r == 1.0 and info["correct"] and info["chunks"] == 1
    assert info["answer"] == env.problem.answer


def test_boxed_answer_split_across_a_boundary_still_scores():
    env = DelethinkEnv(chunk_size=64, carryover=32, head=4, max_chunks=4)
    _, info = env.reset(seed=11)
    filler = env.encode("x" * 200)
    answer = env.encode(f"</think>\\boxed{{{env.problem.answer}}}")
    cut = 6  # the boundary falls inside "\boxed{...}"
    first = filler[: 64 - cut] + answer[:cut]
    _, _, term, _, info = env.step(TokenAction.from_ids(env.tokenizer, first, eos=False))
    assert not term
    _, r, term, _, info = env.step(TokenAction.from_ids(env.tokenizer, answer[cut:], eos=True))
    assert term and r == 1.0 and info["correct"]
    # Scored on the last chunk alone, the answer would not parse.
    assert env.task.verify(env.problem, env.decode(answer[cut:])).format_error


def test_wrong_answer_scores_zero_and_compute_is_reported():
    env = DelethinkEnv(chunk_size=64, carryover=32, head=4, max_chunks=6)
    env.reset(seed=2)
    for _ in range(4):
        env.step("9" * 64)
    _, r, term, _, info = env.step("</think>\\boxed{-1}")
    assert term and r == 0.0 and not info["correct"] and info["answer"] == "-1"
    c = info["compute"]
    assert c["this"]["peak_context_tokens"] < c["longcot"]["peak_context_tokens"]
    assert c["longcot"]["kv_token_reads"] > c["this"]["kv_token_reads"]


def test_random_actions_never_raise():
    env = gym.make("DelethinkDemo-v0")
    rng = np.random.default_rng(0)
    space = env.action_space
    space.seed(0)
    weird = ["", "\x00\x01\x1b[31m", "💥" * 50, "a" * (1 << 20), "</think>", "\\boxed{", "<|endoftext|>", "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace")]
    env.reset(seed=0)
    for i in range(2000):
        kind = i % 4
        if kind == 0:
            act = space.sample()
        elif kind == 1:
            act = "".join(chr(int(c)) for c in rng.integers(1, 0x2FFFF, size=int(rng.integers(0, 200))) if not 0xD800 <= c < 0xE000)
        elif kind == 2:
            act = weird[i % len(weird)]
        else:
            act = TokenAction.from_ids(env.unwrapped.tokenizer, rng.integers(0, 259, size=int(rng.integers(0, 120))).tolist(), eos=bool(rng.integers(2)))
        _, r, term, trunc, info = env.step(act)
        assert np.isfinite(r)
        if term or trunc:
            env.reset(seed=i)


@pytest.mark.parametrize("kwargs, name", [
    (dict(chunk_size=64, carryover=64), "carryover"),
    (dict(chunk_size=64, carryover=80), "carryover"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(chunk_size=-5, carryover=2), "chunk_size"),
    (dict(max_chunks=0), "max_chunks"),
    (dict(head=-1), "head"),
    (dict(chunk_size=64, carryover=32, head=32), "head"),
    (dict(task="no_such_task"), "task"),
    (dict(task="math_dataset", task_kwargs={"path": "/nonexistent/x.jsonl"}), "path"),
    (dict(task="math_dataset"), "path"),
])
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DelethinkEnv(**kwargs)


def test_builtin_tokenizer_round_trips():
    tok = builtin_tokenizer()
    s = "héllo </think> \\boxed{12} 😀\n"
    assert tok.decode(tok.encode(s), skip_special_tokens=False) == s
