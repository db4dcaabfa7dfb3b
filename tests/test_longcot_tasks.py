"""LongCoT-v0, the built-in tasks, the dataset task on the shared math sets, chat formatting."""

import json
import string

import gymnasium as gym
import pytest

from thinkgym.envs import ReasoningEnv, TokenAction, make_task
from thinkgym.envs.tasks.math_dataset import gold_answer


@pytest.mark.parametrize("name, knob", [("running_sum", {"n_terms": 5}), ("running_sum", {"n_terms": 30}),
                                        ("long_addition", {"digits": 3}), ("long_addition", {"digits": 25}),
                                        ("parity", {"n_bits": 5}), ("parity", {"n_bits": 30})])
def test_builtin_demonstrations_are_correct_and_grow_with_difficulty(name, knob):
    task = make_task(name, **knob)
    for seed in range(20):
        p = task.sample(seed)
        assert task.sample(seed) == p
        v = task.verify(p, task.demonstration(seed))
        assert v.correct and not v.format_error
        assert not task.verify(p, "</think>\\boxed{" + p.answer + "1}").correct


def test_reasoning_length_grows_with_the_knob():
    lens = [len(make_task("running_sum", n_terms=n).demonstration(0)) for n in (4, 8, 16)]
    assert lens[0] < lens[1] < lens[2]


def test_parity_answer_counts_ones_and_no_think_demonstrations_guess_nothing():
    from thinkgym.rewards import NO_THINK, THINK, detect_think_mode

    task = make_task("parity", n_bits=12)
    for s in range(50):
        p = task.sample(s)
        bits = p.prompt.split()[2].rstrip(":")
        assert len(bits) == 12 and set(bits) <= {"0", "1"} and p.answer == str(bits.count("1") % 2)
    assert {task.sample(s).answer for s in range(50)} == {"0", "1"}
    mixed = make_task("parity", n_bits=12, no_think=0.3)
    modes = []
    for seed in range(400):
        p, demo = mixed.sample(seed), mixed.demonstration(seed)
        modes.append(detect_think_mode(demo))
        assert mixed.verify(p, demo).correct
        assert demo == task.demonstration(seed) if modes[-1] == THINK else demo == "</think>\\boxed{" + p.answer + "}"
    assert 0.22 < modes.count(NO_THINK) / 400 < 0.38
    for bad in ({"no_think": 1.5}, {"no_think": -0.1}, {"n_bits": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            make_task("parity", **bad)


def test_running_sum_restate_mixes_markovian_and_implicit_demonstrations():
    plain, mixed, implicit = (make_task("running_sum", n_terms=8, restate=r) for r in (1.0, 0.3, 0.0))
    assert plain.demonstration(5) == make_task("running_sum", n_terms=8).demonstration(5)
    restated, starts, in_prompt_order = 0, set(), 0
    for seed in range(400):
        p, demo = mixed.sample(seed), mixed.demonstration(seed)
        assert mixed.verify(p, demo).correct
        lines = demo.split("</think>")[0].splitlines()
        if "|" in lines[0]:
            restated += 1
            assert demo == plain.demonstration(seed)
        else:
            assert demo == implicit.demonstration(seed) and not any("|" in line for line in lines)
            d = p.prompt.split()[1:]
            cells = lines[0].split()
            assert [cell[1:] for cell in cells] == d  # the table: every prompt digit, in the prompt's order
            labels = sorted((cell[0] for cell in cells), key=string.ascii_letters.index)
            assert "".join(labels) in string.ascii_letters  # consecutive letters from a drawn start
            starts.add(labels[0])
            digit_of = {cell[0]: int(cell[1:]) for cell in cells}
            acc = digit_of[labels[0]]
            assert lines[1] == f"{labels[0]}:{acc}"
            for line, label in zip(lines[2:], labels[1:]):  # added in the labels' order
                assert line == f"{label}:{acc}+{digit_of[label]}={acc + digit_of[label]}"
                acc += digit_of[label]
            in_prompt_order += [cell[0] for cell in cells] == labels
    assert 0.24 < restated / 400 < 0.36
    assert len(starts) > 20  # a label does not give its digit's place in the prompt
    assert in_prompt_order <= 1  # nor do the digits added last: the order of addition is shuffled
    with pytest.raises(ValueError, match="restate"):
        make_task("running_sum", restate=1.2)
    with pytest.raises(ValueError, match="n_terms must be <= 52"):
        make_task("running_sum", n_terms=60, restate=0.5)


def test_running_sum_holds_state_only_for_a_true_restated_state():
    task = make_task("running_sum", n_terms=8)
    p = task.sample(3)
    d = [int(c) for c in p.prompt.split(":")[1].split()]
    rest = lambda i: "".join(map(str, d[i:]))  # noqa: E731
    line = f"{sum(d[:2])}+{d[2]}={sum(d[:3])}|{rest(3)}\n"
    assert task.holds_state(p, "xx\n" + line + f"{sum(d[:3])}+")
    assert task.holds_state(p, f"{d[0]}|{rest(1)}\n" + line)  # the last whole state counts
    assert not task.holds_state(p, line.replace(f"={sum(d[:3])}|", f"={sum(d[:3]) + 1}|"))  # a wrong total
    assert not task.holds_state(p, line.replace(f"|{rest(3)}", f"|{rest(4)}"))  # a digit dropped
    assert not task.holds_state(p, line[:-1])  # the line is not whole
    assert not task.holds_state(p, f"{sum(d[:2])}+{d[2]}={sum(d[:3])}\n")  # the total alone is no position
    assert make_task("parity").holds_state(p, line) is None


def test_longcot_truncates_when_the_budget_runs_out_and_is_append_only():
    env = ReasoningEnv(max_thinking_tokens=50)
    _, info = env.reset(seed=0)
    q = info["prompt_token_ids"]
    act = TokenAction.from_ids(env.tokenizer, env.encode("1+2=3\n"), eos=False)
    _, _, term, trunc, info = env.step(act)  # stopped early without ending: context grows
    assert not term and not trunc and info["prompt_token_ids"] == q + list(act.token_ids)
    assert info["max_new_tokens"] == 50 - len(act.token_ids)
    _, r, term, trunc, info = env.step("9" * 100)
    assert trunc and not term and r == 0.0


def test_longcot_with_one_chunk_budget_cannot_finish_a_long_problem():
    env = ReasoningEnv(task_kwargs={"n_terms": 12}, max_thinking_tokens=96)
    env.reset(seed=3)
    demo_ids = env.encode(env.task.demonstration(env.problem.seed))
    assert len(demo_ids) > 96
    _, r, term, trunc, _ = env.step(TokenAction.from_ids(env.tokenizer, demo_ids, eos=True))
    assert trunc and r == 0.0


MATH_FILES = ["math500.jsonl", "aime24.jsonl", "amc23.jsonl", "gsm8k.jsonl"]


@pytest.mark.slow
@pytest.mark.parametrize("fname", MATH_FILES)
def test_gold_answers_score_one_and_changed_answers_zero(shared_data, fname):
    task = make_task("math_dataset", path=str(shared_data / "math" / fname))
    from thinkgym.rewards.math import parse_math

    parsable = scored = 0
    for seed in range(len(task)):
        p = task.sample(seed)
        if not parse_math(p.answer):
            continue
        parsable += 1
        scored += task.verify(p, f"thinking</think>The answer is \\boxed{{{p.answer}}}.").score == 1.0
        assert task.verify(p, "</think>\\boxed{" + p.answer + "+1}").score == 0.0
    print(f"{fname}: {parsable}/{len(task)} gold answers parsed by math-verify; {scored} scored 1")
    assert scored == parsable and parsable >= 0.95 * len(task)


def test_dataset_task_field_mapping_and_errors(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"q": "What is 2+2?", "a": "#### 4"}) + "\n")
    task = make_task("math_dataset", path=str(f), fields={"problem": "q", "answer": "a"})
    p = task.sample(0)
    assert p.answer == "4" and p.prompt.startswith("What is 2+2?")
    assert task.verify(p, "</think>\\boxed{4}").correct
    with pytest.raises(ValueError, match="problem"):
        make_task("math_dataset", path=str(f))
    with pytest.raises(ValueError, match="fields"):
        make_task("math_dataset", path=str(f), fields={"problem": "nope", "answer": "a"})
    assert gold_answer("Natalia sold 48 ... #### 1,072") == "1072"


def test_chat_template_wraps_the_prompt_with_a_think_opening():
    from transformers import PreTrainedTokenizerFast

    from thinkgym.envs import builtin_tokenizer

    tok = PreTrainedTokenizerFast(tokenizer_object=builtin_tokenizer().backend_tokenizer, eos_token="<|endoftext|>")
    tok.chat_template = "{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}<|assistant|>"
    env = ReasoningEnv(tokenizer=tok)
    obs, _ = env.reset(seed=0)
    assert obs.startswith("<|user|>Add:") and obs.endswith("<|assistant|><think>\n")
    assert not ReasoningEnv(tokenizer=tok, chat_template=False).reset(seed=0)[0].startswith("<|user|>")


def test_math500_dollar_answers_score_one_through_longcot(shared_data):
    """Boxing the gold answer scored 0 on MATH-500's LaTeX-escaped dollar answers (`\\$36`)."""
    path = str(shared_data / "math" / "math500.jsonl")
    task = make_task("math_dataset", path=path)
    seeds = [s for s in range(len(task)) if "\\$" in task.sample(s).answer]
    assert seeds
    env = gym.make("LongCoT-v0", task="math_dataset", task_kwargs={"path": path}).unwrapped
    for seed in seeds:
        env.reset(seed=0, options={"problem_seed": seed})
        _, reward, term, _, info = env.step(f"</think>\\boxed{{{env.problem.answer}}}")
        assert term and reward == 1.0 and info["correct"], env.problem.answer
