"""The text-environment contract, for every registered id."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import thinkgym
from thinkgym.envs import LLMText, TokenAction, builtin_tokenizer
from thinkgym.envs.sandbox import namespaces_available


@pytest.mark.parametrize("env_id", thinkgym.ENV_IDS)
def test_check_env_passes(env_id):
    check_env(gym.make(env_id).unwrapped, skip_render_check=True)


@pytest.mark.parametrize("env_id", thinkgym.ENV_IDS)
def test_info_tells_the_agent_how_to_continue(env_id):
    env = gym.make(env_id)
    obs, info = env.reset(seed=5)
    assert isinstance(obs, str) and obs
    assert info["max_new_tokens"] > 0 and isinstance(info["stop"], list)
    tok = env.unwrapped.tokenizer
    assert tok.decode(info["prompt_token_ids"], skip_special_tokens=False) == obs


@pytest.mark.parametrize("env_id", thinkgym.ENV_IDS)
@pytest.mark.parametrize("ids", [[-1], [2**63 - 1], [65, 10**12, 66], [2**32]])
def test_token_ids_no_tokenizer_holds_are_a_malformed_action(env_id, ids):
    """They raised OverflowError inside the tokenizer; the contract says a malformed action never raises."""
    env = gym.make(env_id).unwrapped
    env.reset(seed=0)
    _, reward, term, trunc, info = env.step(TokenAction("x", ids, eos=True))
    assert term and not trunc and info["format_error"] and isinstance(reward, float)


# Strings a Python str can hold and no UTF-8 tokenizer can take: unpaired UTF-16 surrogates, alone,
# reversed, inside text, next to EOS, in a closed code block; and edge code points that must stay fine.
UNENCODABLE = [
    "\ud800", "\udfff", "a\udcffb", "\ude00\ud83d", "\ud83d" * 300, "</think>\\boxed{\ud800}",
    "7\ud800<|endoftext|>", "```python\nprint('\udc80')\n```\n", "\x00", "\ufffe\uffff\U0010ffff", "\ufeff",
]


@pytest.mark.parametrize("env_id", thinkgym.ENV_IDS)
@pytest.mark.parametrize("text", UNENCODABLE, ids=ascii)
def test_unencodable_text_actions_never_raise(env_id, text):
    """A lone surrogate raised TypeError inside the tokenizer in every env; the contract says a
    malformed action never raises. The env keeps going or ends with a float reward."""
    env = gym.make(env_id).unwrapped
    env.reset(seed=0)
    done, steps = False, 0
    while not done and steps < 3:
        _, reward, term, trunc, info = env.step(text)
        done, steps = term or trunc, steps + 1
        assert isinstance(reward, float) and np.isfinite(reward)
        assert all(isinstance(t, int) for t in info["prompt_token_ids"])
    env.close()


def test_surrogates_are_encoded_as_a_utf16_decoder_reads_them():
    """A pair written as two code units is its character; a lone unit is U+FFFD."""
    env = gym.make("LongCoT-v0").unwrapped
    assert env.encode("a\ud83d\ude00b") == env.encode("a\U0001f600b")
    assert env.encode("a\ud800b") == env.encode("a\ufffdb")


def test_ids_of_a_padded_vocabulary_are_a_real_action():
    """Models pad the vocabulary past len(tokenizer) (the tiny policy: 320 rows for 259 tokens) and a
    sampled id there is a real, empty piece of text, not a malformed action."""
    env = gym.make("LongCoT-v0").unwrapped
    env.reset(seed=0)
    pad_id = len(env.tokenizer) + 5
    _, _, term, _, info = env.step(TokenAction("", [pad_id], eos=False))
    assert not term and "format_error" not in info  # a malformed action would end the episode


def test_namespaced_make_imports_the_package():
    code = "import gymnasium as gym; e = gym.make('thinkgym:Delethink-v0'); print(e.reset(seed=0)[1]['max_new_tokens'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "8192"


def test_make_vec_sync_steps_delethink():
    vec = gym.make_vec("Delethink-v0", num_envs=3, vectorization_mode="sync")
    obs, infos = vec.reset(seed=0)
    assert len(obs) == 3 and len(set(obs)) == 3
    obs, rew, term, trunc, infos = vec.step(("a", "</think>\\boxed{1}", ""))
    assert rew.dtype == np.float64 and term.all() and not trunc.any()


def test_same_seed_same_observation_in_two_processes():
    code = "import gymnasium as gym, thinkgym; print(repr(gym.make('{}').reset(seed=42)[0]))"
    outs = {
        subprocess.run([sys.executable, "-c", code.format(e)], capture_output=True, text=True, check=True).stdout
        for e in ("Delethink-v0", "Delethink-v0")
    }
    assert len(outs) == 1
    other = gym.make("Delethink-v0").reset(seed=43)[0]
    assert repr(other) + "\n" not in outs


def test_text_space_accepts_model_text_and_samples():
    space = LLMText(seed=0)
    assert space.contains("") and space.contains("∑ α \\frac{1}{2} 你好\n\t")
    assert not space.contains("bell\x07")
    assert all(space.contains(space.sample()) for _ in range(50))


def test_token_action_is_text_and_survives_pickling():
    import pickle

    tok = builtin_tokenizer()
    act = TokenAction.from_ids(tok, tok.encode("12+3"), eos=True)
    assert act == "12+3" and act.eos
    back = pickle.loads(pickle.dumps(act))
    assert isinstance(back, TokenAction) and back.token_ids == act.token_ids and back.eos


def test_stepping_a_finished_episode_asks_for_reset():
    env = gym.make("LongCoT-v0").unwrapped
    env.reset(seed=0)
    env.step("done")
    with pytest.raises(gym.error.ResetNeeded):
        env.step("again")


def default_task_name(env_id: str) -> str:
    return gym.make(env_id).unwrapped.task.name


@pytest.mark.parametrize("env_id", thinkgym.ENV_IDS)
def test_every_env_takes_task_and_task_kwargs(env_id):
    """The README's promise: any environment takes `task=` and `task_kwargs=` (SAT-v0 and MaskedStep-v0
    raised TypeError on `task=`, StepReorder-v0 on `task_kwargs=`)."""
    name = default_task_name(env_id)
    env = gym.make(env_id, task=name, task_kwargs={}).unwrapped
    obs, info = env.reset(seed=3)
    assert env.task.name == name and obs and info["max_new_tokens"] > 0


@pytest.mark.parametrize("env_id", thinkgym.ENV_IDS)
def test_a_task_an_env_cannot_pose_is_refused_naming_the_accepted_ones(env_id):
    name = default_task_name(env_id)
    with pytest.raises(ValueError, match=r"task='no_such_task'.*(valid names|must be)"):
        gym.make(env_id, task="no_such_task")
    other = "parity" if name != "parity" else "running_sum"
    try:
        env = gym.make(env_id, task=other, task_kwargs={}).unwrapped
    except ValueError as exc:  # an env built around one task names it
        assert f"task must be {name!r}" in str(exc) and repr(other) in str(exc)
    else:
        assert env.task.name == other


def test_every_task_is_registered_on_import():
    """`make_task("arithmetic_code")` failed until CodeInterpreter's module had been imported."""
    code = (
        "import importlib, pkgutil, thinkgym\n"
        "from thinkgym.envs.tasks import TASKS, Task, make_task\n"
        "on_import = set(TASKS)\n"
        "make_task('arithmetic_code')\n"
        "for m in pkgutil.walk_packages(thinkgym.envs.__path__, 'thinkgym.envs.'):\n"
        "    importlib.import_module(m.name)\n"
        "def named(cls):\n"
        "    for sub in cls.__subclasses__():\n"
        "        yield from ([sub.name] if 'name' in vars(sub) else []) + list(named(sub))\n"
        "print(sorted(set(named(Task)) - on_import))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("env_id", thinkgym.ENV_IDS)
def test_the_final_step_info_says_no_further_action(env_id):
    """The step that ends an episode carries the continuation keys too: nothing more to write, and
    `prompt_token_ids` are still the ids of the observation (the empty text)."""
    env = gym.make(env_id).unwrapped
    env.reset(seed=0)
    obs, _, term, trunc, info = env.step("</think>\\boxed{1}")
    assert term or trunc
    assert (obs, info["max_new_tokens"], info["stop"], info["prompt_token_ids"]) == ("", 0, [], [])


def test_a_truncated_final_step_says_no_further_action():
    env = gym.make("LongCoT-v0", max_thinking_tokens=4).unwrapped
    env.reset(seed=0)
    obs, _, term, trunc, info = env.step(TokenAction("abcd", [97, 98, 99, 100], eos=False))
    assert trunc and not term
    assert (obs, info["max_new_tokens"], info["stop"], info["prompt_token_ids"]) == ("", 0, [], [])


def _readme_async_vector_kwargs() -> dict:
    """The async recipe as the README gives it, so that this test checks what users copy."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme[readme.index("**Vector envs.**"):]
    return ast.literal_eval(re.search(r"vector_kwargs=(\{[^}]*\})", section).group(1))


def _rounds(env_id: str, mode: str, vector_kwargs: dict, calls: int) -> list:
    """Three rounds of reset(seed) and `calls` code calls then the right answer, as a trainer does."""
    vec = gym.make_vec(env_id, num_envs=2, vectorization_mode=mode, vector_kwargs=vector_kwargs)
    seen = []
    try:
        for round_ in range(3):
            obs, _ = vec.reset(seed=[10 * round_, 10 * round_ + 1])
            answers = [p.answer for p in vec.get_attr("problem")]
            seen.append(list(obs))
            for t in range(calls + 1):
                acts = tuple("```python\nprint(6 * 7)\n```\n" if t < calls else f"</think>\\boxed{{{a}}}" for a in answers)
                obs, rew, term, trunc, info = vec.step(acts)
                seen.append((list(obs), rew.tolist(), term.tolist(), trunc.tolist()))
    finally:
        vec.close()
    return seen


@pytest.mark.parametrize("env_id,calls", [("SAT-v0", 0), ("CodeInterpreter-v0", 2)])
def test_async_vector_recipe_matches_sync_over_rounds(env_id, calls):
    """Gymnasium 1.4's async worker without shared memory lost the first step after each reset in
    NextStep mode (issue 34); the README's recipe must give exactly the sync results."""
    if env_id == "CodeInterpreter-v0" and not namespaces_available()[0]:
        pytest.skip(f"no sandbox here: {namespaces_available()[1]}")
    kwargs = _readme_async_vector_kwargs()
    sync_kwargs = {k: v for k, v in kwargs.items() if k != "shared_memory"}
    sync, async_ = _rounds(env_id, "sync", sync_kwargs, calls), _rounds(env_id, "async", kwargs, calls)
    assert async_ == sync
    assert any(step[1] == [1.0, 1.0] for step in sync[1:] if isinstance(step, tuple))  # the answers were scored


@pytest.mark.parametrize("env_id", thinkgym.ENV_IDS)
@pytest.mark.parametrize("options, named", [
    (5, "options must be a dict"), ([1, 2], "options must be a dict"), ("problem_seed", "options must be a dict"),
    ({"problem_seed": -1}, r"options\['problem_seed'\] must be an integer >= 0"),
    ({"problem_seed": 1.9}, r"options\['problem_seed'\] must be an integer >= 0"),
    ({"problem_seed": "7"}, r"options\['problem_seed'\] must be an integer >= 0"),
    ({"problem_seed": True}, r"options\['problem_seed'\] must be an integer >= 0"),
    ({"problm_seed": 7}, r"unknown key\(s\) 'problm_seed'.*'problem_seed'"),
])
def test_reset_options_of_the_wrong_type_are_refused_by_name(env_id, options, named):
    """`options=5` raised "argument of type 'int' is not iterable", `{'problem_seed': -1}` an error naming
    no key, and `options=[1, 2]` or `problem_seed=1.9` were accepted silently."""
    env = gym.make(env_id).unwrapped
    with pytest.raises(ValueError, match=named):
        env.reset(seed=0, options=options)


@pytest.mark.parametrize("env_id", thinkgym.ENV_IDS)
def test_a_numpy_problem_seed_poses_the_same_problem_as_an_int(env_id):
    env = gym.make(env_id).unwrapped
    assert env.reset(seed=0, options={"problem_seed": np.int64(7)})[0] == env.reset(seed=1, options={"problem_seed": 7})[0]
