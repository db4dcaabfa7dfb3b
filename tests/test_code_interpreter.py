"""CodeInterpreter-v0 (CoRT): the tool protocol, call cap, reward, masking spans, concurrency."""

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import gymnasium as gym
import psutil
import pytest

import thinkgym  # noqa: F401
from thinkgym.envs import TokenAction
from thinkgym.envs import sandbox as sbx
from thinkgym.envs.code_interpreter import (INSTRUCTION, NOTICE_CAP, NOTICE_NEAR, PROMPT_HINT, STOP,
                                            CodeInterpreterEnv, closed_code_block)

pytestmark = pytest.mark.skipif(not sbx.namespaces_available()[0],
                                reason=f"no sandbox here: {sbx.namespaces_available()[1]}")


def block(code: str, before: str = "Let me compute.\n") -> str:
    return f"{before}```python\n{code}\n```\n"


def last_output(obs: str) -> str:
    return re.findall(r"```output\n(.*?)\n```\n", obs, re.S)[-1]


def expression(obs: str) -> str:
    return re.search(r"Compute (.*)\.", obs).group(1).replace("×", "*")


def test_scripted_agent_writes_code_reads_output_and_answers():
    env = gym.make("CodeInterpreter-v0").unwrapped
    obs, info = env.reset(seed=3)
    assert info["stop"] == [STOP] and obs.endswith(INSTRUCTION) and info["env_token_spans"] == []
    obs, r, term, trunc, info = env.step(block(f"print({expression(obs)})"))
    assert not term and not trunc and r == 0.0 and info["code_calls"] == 1
    value = last_output(obs)
    assert value == env.problem.answer
    _, r, term, trunc, info = env.step(f"So the value is {value}.</think>\\boxed{{{value}}}")
    assert term and not trunc and r == 1.0 and info["correct"]
    assert info["reward_components"] == {"correctness": 1.0, "code": 0.0}
    assert (info["code_calls"], info["code_failures"], info["code_calls_refused"]) == (1, 0, 0)
    assert 0 < info["code_time_s"] < 5


def test_state_persists_and_tracebacks_come_back_as_output():
    env = CodeInterpreterEnv()
    env.reset(seed=0)
    obs, *_ = env.step(block("import math\nx = math.factorial(5)"))
    assert last_output(obs) == ""
    obs, *_ = env.step(block("print(x + 1)"))
    assert last_output(obs) == "121"
    obs, *_ = env.step(block("y = [1, 2]\ny[5]"))
    out = last_output(obs)
    assert out.startswith("Traceback (most recent call last):") and out.endswith("IndexError: list index out of range")
    _, r, *_ , info = env.step(f"</think>\\boxed{{{env.problem.answer}}}")
    assert r == 1.0 and info["code_failures"] == 1 and info["code_calls"] == 3


def test_observation_is_append_only_and_spans_mark_the_env_tokens():
    env = CodeInterpreterEnv()
    obs0, info = env.reset(seed=1)
    actions = [block("print('a' * 3)"), block("print(40 + 2)", before="More.\n")]
    prev = info["prompt_token_ids"]
    for a in actions:
        obs, _, _, _, info = env.step(a)
        ids = info["prompt_token_ids"]
        assert ids[: len(prev)] == prev and env.decode(ids) == obs
        prev = ids
    spans = info["env_token_spans"]
    inserted = [env.decode(info["prompt_token_ids"][s:e]) for s, e in spans]
    assert inserted == ["```output\naaa\n```\n", "```output\n42\n```\n"]
    policy_ids = [t for k, t in enumerate(prev) if not any(s <= k < e for s, e in spans)]
    assert env.decode(policy_ids) == obs0 + "".join(actions)


def test_call_cap_notice_and_refusal():
    env = CodeInterpreterEnv(max_calls=3)
    env.reset(seed=2)
    outs = []
    for k in range(1, 5):
        obs, r, term, trunc, info = env.step(block(f"n = {k}\nprint('run', n)"))
        assert not term and not trunc
        outs.append(last_output(obs))
    assert outs[0] == "run 1" and outs[1] == "run 2\n" + NOTICE_NEAR and outs[2] == "run 3"
    assert outs[3] == NOTICE_CAP  # block 4 was not run ...
    obs, *_ = env.step(block("print(n)"))
    assert last_output(obs) == NOTICE_CAP
    _, r, term, _, info = env.step("</think>\\boxed{0}")
    assert (info["code_calls"], info["code_calls_refused"]) == (3, 2)
    env2 = CodeInterpreterEnv(max_calls=3)  # ... and its assignment never happened
    env2.reset(seed=2)
    for k in range(1, 4):
        env2.step(block(f"n = {k}"))
    env2.step(block("n = 99"))
    assert env2._sandbox.run("print(n)").stdout == "3\n"
    env2.close()


@pytest.mark.parametrize("case, code_reward, blocks, expected", [
    ("no code", 0.1, [], {"correctness": 1.0, "code": -0.1}),
    ("all failed", 0.1, ["1/0", "undefined_name"], {"correctness": 1.0, "code": -0.1}),
    ("one worked", 0.1, ["1/0", "print(2)"], {"correctness": 1.0, "code": 0.0}),
    ("omega 0.5", 0.5, ["raise ValueError"], {"correctness": 1.0, "code": -0.5}),
    ("wrong and no code", 0.1, None, {"correctness": 0.0, "code": -0.1}),
])
def test_reward_follows_cort(case, code_reward, blocks, expected):
    env = CodeInterpreterEnv(code_reward=code_reward)
    env.reset(seed=4)
    for code in blocks or []:
        env.step(block(code))
    answer = env.problem.answer if blocks is not None else "-1"
    _, r, term, _, info = env.step(f"</think>\\boxed{{{answer}}}")
    assert term and info["reward_components"] == expected and r == pytest.approx(sum(expected.values()))


def test_missing_answer_is_a_format_error_with_the_penalty():
    env = CodeInterpreterEnv()
    env.reset(seed=4)
    _, r, term, _, info = env.step(TokenAction.from_ids(env.tokenizer, env.encode("I give up"), eos=True))
    assert term and info["format_error"] and r == pytest.approx(-0.1)


def test_outputs_are_cut_as_cort_does():
    env = CodeInterpreterEnv()
    env.reset(seed=0)
    obs, *_ = env.step(block("print('a' * 500 + 'b' * 500)"))
    assert last_output(obs) == "a" * 400 + "..." + "b" * 400
    obs, *_ = env.step(block("print('x' * (50 << 20))"))  # 50 MB: capped by the sandbox, then cut
    out = last_output(obs)
    assert len(out) < 1000 and out.startswith("x" * 400)
    _, _, _, _, info = env.step("</think>\\boxed{1}")
    assert info["code_outputs_truncated"] == 2


def test_token_actions_and_eos():
    env = CodeInterpreterEnv()
    env.reset(seed=0)
    ids = env.encode(block("print(7 * 6)"))
    obs, _, term, _, info = env.step(TokenAction.from_ids(env.tokenizer, ids, eos=False))
    assert not term and last_output(obs) == "42"
    # a policy that ends its output (EOS) right after a block ends the episode: nothing is run
    ids = env.encode(block("print(1)"))
    _, _, term, _, info = env.step(TokenAction.from_ids(env.tokenizer, ids, eos=True))
    assert term and info["code_calls"] == 1


def test_non_python_fences_are_not_run():
    assert closed_code_block("```text\nhello\n```\n") is None
    assert closed_code_block("```python\nx = 1\n```\nmore") is None
    assert closed_code_block("```python\na = 1\n```\n```\n") is None
    assert closed_code_block("ok ```python\nprint(1)\n```\n") == "print(1)"
    env = CodeInterpreterEnv()
    _, info = env.reset(seed=0)
    obs, _, term, _, info = env.step(TokenAction.from_ids(env.tokenizer, env.encode("```text\nhi\n```\n"), eos=False))
    assert not term and "```output" not in obs and info["env_token_spans"] == []


def test_budget_runs_out_with_truncation():
    env = CodeInterpreterEnv(max_thinking_tokens=120)
    env.reset(seed=0)
    _, r, term, trunc, info = env.step(block("print('z' * 300)"))  # the output would not fit
    assert trunc and not term and info["code_calls"] == 1 and info["env_token_spans"] == []


def test_hints_and_instruction_options():
    env = CodeInterpreterEnv(prompt_hint=True)
    obs, _ = env.reset(seed=0)
    assert obs.endswith(INSTRUCTION + PROMPT_HINT)
    obs, _ = CodeInterpreterEnv(instruction=False).reset(seed=0)
    assert INSTRUCTION not in obs and obs.startswith("Compute ")
    with pytest.raises(ValueError, match="max_calls"):
        CodeInterpreterEnv(max_calls=0)
    with pytest.raises(ValueError, match="sandbox"):
        CodeInterpreterEnv(sandbox="fast")


def test_demonstration_plays_through_the_env():
    from thinkgym.agents.learner.sft import demonstration_episode

    ep = demonstration_episode(CodeInterpreterEnv(), 5)
    assert ep.reward == 1.0 and ep.info["code_calls"] == 1 and len(ep.steps) == 2


def test_wraps_a_dataset_math_task(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"problem": "What is 2^100 mod 7?", "answer": "2"}) + "\n")
    env = CodeInterpreterEnv(task="math_dataset", task_kwargs={"path": str(path)})
    obs, _ = env.reset(seed=0)
    assert obs.startswith("What is 2^100 mod 7?")
    obs, *_ = env.step(block("pow(2, 100, 7)"))
    _, r, *_ = env.step(f"</think>\\boxed{{{last_output(obs)}}}")
    assert r == 1.0


def _episode(k: int, seed: int) -> tuple[int, float, str, str]:
    env = CodeInterpreterEnv(sandbox={"timeout": 5.0})
    obs, _ = env.reset(seed=seed)
    env.step(block(f"member = {k}\nopen('mine.txt', 'w').write(str(member))"))
    obs, *_ = env.step(block(f"import time; time.sleep(0.01)\nprint(member, open('mine.txt').read(), {expression(obs)})"))
    got = last_output(obs)
    _, r, *_ = env.step(f"</think>\\boxed{{{got.split()[-1]}}}")
    return k, r, got, env.problem.answer


def test_32_concurrent_episodes_in_grpo_groups_do_not_interfere():
    group = 8
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda k: _episode(k, seed=100 + k // group), range(32)))
    for k, r, got, answer in results:
        assert got == f"{k} {k} {answer}" and r == 1.0
    sbx.shutdown_pools()  # every episode has ended: once idle pooled workers go, no worker is left
    deadline = time.time() + 5
    while (left := [p for p in psutil.process_iter(["uids"])
                    if p.info["uids"] and sbx._UID_BASE <= p.info["uids"].real < sbx._UID_BASE + sbx._UID_SPAN]) and time.time() < deadline:
        time.sleep(0.05)
    assert left == []


def test_hostile_blocks_come_back_as_output_and_the_episode_goes_on():
    env = CodeInterpreterEnv(sandbox={"timeout": 1.0})
    obs, _ = env.reset(seed=6)
    obs, *_ = env.step(block("x = 5\nwhile True:\n    pass"))
    assert "TimeLimitExceeded" in last_output(obs)
    obs, *_ = env.step(block("import ctypes; ctypes.string_at(0)"))
    assert "SIGSEGV" in last_output(obs) and "variables are lost" in last_output(obs)
    obs, *_ = env.step(block(f"print({expression(obs)})"))
    _, r, term, _, info = env.step(f"</think>\\boxed{{{last_output(obs)}}}")
    assert term and r == 1.0 and (info["code_calls"], info["code_failures"]) == (3, 2)


def test_memory_escapes_and_forged_replies_come_back_as_output():
    """Issue 34: memfd files and a tmpfs in the code's own namespace held memory past the caps, and
    the code could speak for the worker through `sys.modules['__main__']`."""
    env = CodeInterpreterEnv(sandbox={"timeout": 1.0})
    obs, _ = env.reset(seed=6)
    obs, *_ = env.step(block("import os\nfds = [os.memfd_create('x') for _ in range(100)]"))
    assert "PermissionError" in last_output(obs)
    obs, *_ = env.step(block("import subprocess\nsubprocess.run(['unshare', '-rm', 'mount', '-t', 'tmpfs', 'none', '/tmp'], check=True)"))
    assert "Operation not permitted" in last_output(obs)
    obs, *_ = env.step(block("import sys\nsys.modules['__main__'].send({'status': 'ok', 'stdout': 'FORGED'})\nprint('real')"))
    assert last_output(obs) == "real"
    obs, *_ = env.step(block(f"print({expression(obs)})"))
    _, r, term, _, info = env.step(f"</think>\\boxed{{{last_output(obs)}}}")
    assert term and r == 1.0 and (info["code_calls"], info["code_failures"]) == (4, 2)
