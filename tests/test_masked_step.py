"""MaskedStep-v0 and the solution sources: splitting, masking, fill rewards, robustness, coverage."""

from pathlib import Path

import gymnasium as gym
import pytest
import yaml
from gymnasium.utils.env_checker import check_env

import thinkgym  # noqa: F401
from thinkgym.envs.masked_step import MaskedStepEnv
from thinkgym.envs.tasks.masked_step import MASKS, MaskedStepTask, candidates, math_score, text_score
from thinkgym.envs.tasks.solutions import Solution, SolutionSource, calculator_lines, split_sentences, split_steps


def fills(golds):
    return "</think>\n" + "\n".join(f"[MASK_{k}]: {g}" for k, g in enumerate(golds, start=1))


# -- solution sources ------------------------------------------------------------------------------
def test_gsm8k_lines_drop_annotations_and_keep_their_formulas():
    text = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18 every day.\n"
    (l1, f1), (l2, f2) = calculator_lines(text)
    assert l1 == "Janet sells 16 - 3 - 4 = 9 duck eggs a day." and l2 == "She makes 9 * 2 = $18 every day."
    assert [(l1[a:b], eq) for a, b, eq in f1] == [("16 - 3 - 4 = 9", "16-3-4=9")]
    assert [(l2[a:b], eq) for a, b, eq in f2] == [("9 * 2 = $18", "9*2=18")]
    assert split_steps(text)[1] == "lines"


def test_math_sentences_never_split_inside_math():
    text = ("We have $x = 3.5.$  Also $y=2$. So\n\\[z = x + y. \\]Hence $z$ is $5.5$, as claimed.\n\n"
            "[asy]\ndraw((0,0)--(1,1));\n[/asy]\nThe answer is $\\boxed{5.5}$.")
    steps, style = split_steps(text)
    assert style == "sentences"
    assert steps == ["We have $x = 3.5.$", "Also $y=2$.", "So\n\\[z = x + y. \\]", "Hence $z$ is $5.5$, as claimed.",
                     "The answer is $\\boxed{5.5}$."]


def test_one_sentence_solutions_fall_back_to_clauses_then_equations():
    assert split_sentences("We have $g(16) = 4$, so $t(4) = 3$.") == ["We have $g(16) = 4$,", "so $t(4) = 3$."]
    assert split_sentences("$a=\\frac{1}{2}+\\frac{1}{2}=1$") == ["$a", "=\\frac{1}{2}+\\frac{1}{2}", "=1$"]


def test_procedural_source_is_a_pure_function_of_the_seed():
    a, b = SolutionSource("long_addition", {"digits": 5}), SolutionSource("long_addition", {"digits": 5})
    assert a.solution(3) == b.solution(3) and a.solution(3) != a.solution(4)
    assert len(a.solution(3).steps) == 5 and a.solution(3).difficulty == {"digits": 5}


# -- the environment -------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [dict(mask="step", n_masked=3, text_score="f1"), dict(mask="formula"),
                                    dict(source="long_addition", source_kwargs={"digits": 4}, n_masked=1)])
def test_check_env_with_other_knobs(kwargs):
    check_env(MaskedStepEnv(**kwargs), skip_render_check=True)


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("source", ["running_sum", "long_addition"])
def test_gold_fills_score_one_and_wrong_ones_less(mask, source):
    env = MaskedStepEnv(source=source, mask=mask, n_masked=2)
    for seed in range(3):
        env.reset(seed=seed)
        golds = env.problem.meta["golds"]
        assert len(golds) == 2 == env.problem.difficulty["n_masked"]
        shown = env.problem.prompt.split(":\n\n")[1].split("\n\nRestore")[0]
        assert "[MASK_1]" in shown and "[MASK_2]" in shown and "[MASK_3]" not in shown
        restored = shown.replace("[MASK_1]", golds[0]).replace("[MASK_2]", golds[1])
        assert restored == "\n".join(env.task.source.solution(env.problem.meta["solution_seed"]).steps)
        _, r, term, trunc, info = env.step(env.task.demonstration(env.problem.seed))
        assert (r, term, trunc, info["correct"], info["format_error"]) == (1.0, True, False, True, False)
        env.reset(seed=seed)
        _, r, *_ = env.step(fills([golds[0], "999999"]))
        assert r == 0.5
        env.reset(seed=seed)
        _, r, *_ = env.step(fills([golds[0]]))  # a missing piece scores 0, not a format error
        assert r == 0.5


def test_math_pieces_use_math_verify_and_text_pieces_normalised_matching():
    assert math_score("120000", "120,000") == 1.0 and math_score("\\frac{1}{2}", "0.5") == 1.0
    assert math_score("2*500=1000", "2 * 500 = 1000") == 1.0 and math_score("x=\\boxed{3}", "x = 3") == 1.0
    assert math_score("13-4", "16-3-4") == 1.0  # value-equal rewrites count (documented)
    assert math_score("x = 100+10", "x = \\boxed{110}") == 1.0 and math_score("x = 111", "x = \\boxed{110}") == 0.0
    assert math_score("10", "9") == 0.0 and math_score("", "9") == 0.0
    assert text_score("So  the TOTAL is $5$.", "so the total is 5", "exact") == 1.0
    assert text_score("so the sum is 5", "so the total is 5", "exact") == 0.0
    assert 0.5 < text_score("so the sum is 5", "so the total is 5", "f1") < 1.0


def test_formula_candidates_are_whole_calculations():
    lines = Solution("Q", ("col 1: 0+7+0=7, write 7, carry 0", "pay 80,000*1.5=120,000 dollars"), "A", seed=0)
    assert [gold for *_, gold in candidates(lines, "formula")] == ["0+7+0=7", "80,000*1.5=120,000"]
    latex = Solution("Q", ("So $x+1=2$, and \\begin{align*} a &= 1+1 \\\\ \\Rightarrow b &= 2. \\end{align*}",), "A", seed=0, sep="\n\n")
    assert [gold for *_, gold in candidates(latex, "formula")] == ["x+1=2", "a = 1+1", "b = 2"]
    assert [gold for *_, gold in candidates(latex, "number")] == ["1", "2", "1", "1", "2"]


def test_step_masks_use_the_chosen_text_score():
    gold_step = MaskedStepTask(mask="step", n_masked=1)
    problem = gold_step.sample(0)
    gold = problem.meta["golds"][0]
    near = gold.replace("+", " plus ", 1)
    assert gold_step.verify(problem, fills([near])).score == 0.0
    f1 = MaskedStepTask(mask="step", n_masked=1, text_score="f1")
    assert 0.0 < f1.verify(f1.sample(0), fills([near])).score < 1.0


@pytest.mark.parametrize("action", ["", "no think tag [MASK_1]: 5", "</think>", "</think> the answer is 5",
                                    "</think>[MASK_7]: 5", "</think>\\boxed{5}", "</think>[MASK_x]: 1",
                                    "∑ α 你好 </think> \x00", 12345, None, "</think>" * 1000])
def test_malformed_answers_get_the_format_reward_and_never_raise(action):
    env = MaskedStepEnv(format_reward=-0.25)
    env.reset(seed=0)
    _, r, term, trunc, info = env.step(action)
    assert term and not trunc and info["format_error"] and r == -0.25 and not info["correct"]


def test_masks_are_deterministic_by_seed_and_vary_across_seeds():
    a, b = MaskedStepEnv(mask="formula"), MaskedStepEnv(mask="formula")
    assert [a.reset(seed=s)[0] for s in range(5)] == [b.reset(seed=s)[0] for s in range(5)]
    task = MaskedStepTask(source="running_sum", source_kwargs={"n_terms": 12}, n_masked=1)
    assert task.sample(7) == task.sample(7)
    assert len({task.sample(s).prompt for s in range(20)}) == 20


def test_knobs_are_clamped_to_what_the_solution_has_and_bad_ones_rejected():
    env = MaskedStepEnv(mask="step", n_masked=50, source_kwargs={"n_terms": 4})
    env.reset(seed=0)
    assert env.problem.difficulty["n_masked"] == 3 and env.problem.difficulty["n_steps"] == 4  # one step stays
    for bad, name in [(dict(mask="word"), "mask"), (dict(n_masked=0), "n_masked"), (dict(text_score="bleu"), "text_score"),
                      (dict(split="words"), "split"), (dict(path="x.jsonl", source_kwargs={"a": 1}), "source_kwargs")]:
        with pytest.raises(ValueError, match=name):
            MaskedStepEnv(**bad)


def test_registered_default_runs_offline():
    env = gym.make("MaskedStep-v0")
    obs, info = env.reset(seed=1)
    assert "[MASK_1]" in obs and info["difficulty"]["source"] == "running_sum"


# -- real data -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gsm8k", "math500"])
def test_almost_every_dataset_item_yields_an_episode(shared_data, name):
    """Episode construction (not verification) on every item; verification on a sample."""
    for mask in MASKS:
        task = MaskedStepTask(path=str(shared_data / "math" / f"{name}.jsonl"), mask=mask)
        n = len(task.source)
        skipped = [s for s in range(n) if task.build(task.source.solution(s), s) is None]
        rate = 1 - len(skipped) / n
        lines = sorted(task.source.task.index(s) for s in skipped)  # 0-based line numbers in the jsonl
        why = {"number": "no digits (text answers, \\frac12)", "formula": "no calculation found",
               "step": "a single step"}[mask]
        print(f"\n{name} mask={mask}: {n - len(skipped)}/{n} items yield an episode ({rate:.1%}); "
              f"skipped lines ({why}): {lines[:12]}")
        assert rate >= 0.95
        for s in range(0, n, max(1, n // 8)):
            problem, demo = task.episode(s)
            assert task.verify(problem, demo).score == 1.0


def test_the_two_stage_example_config_builds_every_stage():
    config = yaml.safe_load((Path(__file__).parents[1] / "examples" / "process_then_outcome.yaml").read_text())
    envs = [stage["env"] for stage in config["stages"]]
    assert envs[-1] == "LongCoT-v0" and {"MaskedStep-v0", "StepReorder-v0"} <= set(envs[:-1])
    for stage in config["stages"]:
        assert stage["steps"] > 0
        gym.make(stage["env"], **stage["env_kwargs"]).reset(seed=0)


def test_masked_step_takes_task_and_task_kwargs_like_its_keyword_knobs():
    knobs = {"mask": "step", "n_masked": 1, "source": "long_addition"}
    env = gym.make("MaskedStep-v0", task="masked_step", task_kwargs=knobs)
    assert env.reset(seed=4)[0] == gym.make("MaskedStep-v0", **knobs).reset(seed=4)[0]
    assert env.unwrapped.task.config.mask == "step" and env.unwrapped.task.source.name == "long_addition"
    assert gym.make("MaskedStep-v0", task=MaskedStepTask(n_masked=1)).unwrapped.task.config.n_masked == 1
    with pytest.raises(ValueError, match="task='running_sum' .* must be 'masked_step' or a MaskedStepTask"):
        gym.make("MaskedStep-v0", task="running_sum")
