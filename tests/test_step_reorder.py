"""StepReorder-v0: shuffles, order rewards (position and Kendall), robustness, coverage."""

import subprocess
import sys

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import thinkgym  # noqa: F401
from thinkgym.envs.step_reorder import StepReorderEnv
from thinkgym.envs.tasks.solutions import Solution
from thinkgym.envs.tasks.step_reorder import StepReorderTask, parse_order


def boxed(order):
    return "</think>\\boxed{" + ",".join(map(str, order)) + "}"


def labels_for(problem, original_positions):
    """The labels that put the window's original steps `original_positions` in that order."""
    shown, window = problem.meta["shown"], problem.meta["window"]
    return [shown.index(window[p]) + 1 for p in original_positions]


@pytest.mark.parametrize("kwargs", [dict(k=5, reward="kendall"), dict(source="long_addition", k=2)])
def test_check_env_with_other_knobs(kwargs):
    check_env(StepReorderEnv(**kwargs), skip_render_check=True)


@pytest.mark.parametrize("reward", ["position", "kendall"])
@pytest.mark.parametrize("k", [2, 3, 6])
def test_gold_orders_score_one_and_wrong_ones_less(reward, k):
    env = StepReorderEnv(k=k, reward=reward)
    for seed in range(4):
        env.reset(seed=seed)
        p = env.problem
        assert p.difficulty["k"] == k and p.meta["shown"] != p.meta["window"]  # really shuffled
        assert all(f"[S{j}] " in p.prompt for j in range(1, k + 1)) and f"[S{k + 1}]" not in p.prompt
        _, r, term, trunc, info = env.step(env.task.demonstration(p.seed))
        assert (r, term, trunc, info["correct"], info["answer"]) == (1.0, True, False, True, p.answer)
        env.reset(seed=seed)
        _, r, *_ = env.step(boxed(range(1, k + 1)))  # the shown order is not the original one
        assert r < 1.0
        env.reset(seed=seed)
        _, r, *_ = env.step("</think>\\boxed{" + ", ".join(f"S{g}" for g in p.answer.split(",")) + "}")
        assert r == 1.0  # labels may be written S2


def test_position_and_kendall_scores_on_a_known_case():
    steps = tuple(f"step {i}" for i in range(4))
    for reward, displaced, reversed_ in [("position", 0.0, 0.0), ("kendall", 0.5, 0.0)]:
        task = StepReorderTask(k=4, reward=reward)
        problem, demo = task.build(Solution("Q", steps, "A", seed=1), seed=1)
        assert task.verify(problem, demo).score == 1.0
        first_last = labels_for(problem, [1, 2, 3, 0])  # step 0 moved to the end: 3 of 6 pairs still right
        assert task.verify(problem, boxed(first_last)).score == displaced
        assert task.verify(problem, boxed(labels_for(problem, [3, 2, 1, 0]))).score == reversed_
        swap = labels_for(problem, [0, 1, 3, 2])
        assert task.verify(problem, boxed(swap)).score == (0.5 if reward == "position" else 5 / 6)


def test_steps_with_the_same_text_are_interchangeable():
    task = StepReorderTask(k=3)
    problem, _ = task.build(Solution("Q", ("x=1", "x=1", "y=2"), "A", seed=0), seed=0)
    shown = problem.meta["shown"]
    dup = [j + 1 for j, s in enumerate(shown) if s == "x=1"]
    last = shown.index("y=2") + 1
    for order in (dup + [last], dup[::-1] + [last]):
        assert task.verify(problem, boxed(order)).score == 1.0
    assert task.build(Solution("Q", ("same", "same"), "A", seed=0), seed=0) is None  # nothing to shuffle


@pytest.mark.parametrize("action", ["", "\\boxed{2,1,3}", "</think>", "</think>\\boxed{}", "</think>\\boxed{1,1,2}",
                                    "</think>\\boxed{1,2}", "</think>\\boxed{1,2,3,4}", "</think>\\boxed{0,1,2}",
                                    "</think>\\boxed{first, second, third}", "</think>\\boxed{213}", "</think>\\boxed{2,1,...}", "</think>\\boxed{2,1,3",
                                    "∑ α 你好 </think> \x00", 3.5, None, "</think>\\boxed{" * 500])
def test_malformed_or_non_permutation_answers_get_the_format_reward(action):
    env = StepReorderEnv(format_reward=-0.5)
    env.reset(seed=0)
    _, r, term, trunc, info = env.step(action)
    assert term and not trunc and info["format_error"] and r == -0.5 and info["answer"] is None


def test_parse_order_accepts_label_styles():
    assert parse_order("</think>\\boxed{S3, S1, S2}", 3) == [3, 1, 2]
    assert parse_order("</think>\\boxed{[2] [1]}", 2) == [2, 1]
    assert parse_order("</think>\\boxed{2;1;3}", 3) == [2, 1, 3]


def test_shuffles_are_deterministic_by_seed_and_vary_across_seeds():
    a, b = StepReorderEnv(k=4), StepReorderEnv(k=4)
    assert [a.reset(seed=s)[0] for s in range(5)] == [b.reset(seed=s)[0] for s in range(5)]
    task = StepReorderTask(k=4)
    assert task.sample(3) == task.sample(3)
    assert len({task.sample(s).prompt for s in range(20)}) == 20


def test_k_is_clamped_to_the_solution_and_bad_knobs_rejected():
    env = StepReorderEnv(k=10, source_kwargs={"n_terms": 4})
    env.reset(seed=0)
    assert env.problem.difficulty["k"] == 4 == env.problem.difficulty["n_steps"]
    for bad, name in [(dict(k=1), "k"), (dict(k=True), "k"), (dict(reward="spearman"), "reward"),
                      (dict(split="x"), "split"), (dict(fields={"solution": "a"}), "fields")]:
        with pytest.raises(ValueError, match=name):
            StepReorderEnv(**bad)


def test_registered_default_runs_offline():
    env = gym.make("StepReorder-v0")
    obs, info = env.reset(seed=2)
    assert "[S1]" in obs and info["difficulty"] == {"n_terms": 12, "source": "running_sum", "k": 3, "n_steps": 12}


@pytest.mark.parametrize("name", ["gsm8k", "math500"])
def test_almost_every_dataset_item_yields_an_episode(shared_data, name):
    """Episode construction on every item; the gold order is verified on all built ones (cheap)."""
    task = StepReorderTask(path=str(shared_data / "math" / f"{name}.jsonl"))
    n = len(task.source)
    built = {s: task.build(task.source.solution(s), s) for s in range(n)}
    skipped = sorted(task.source.task.index(s) for s, b in built.items() if b is None)
    rate = 1 - len(skipped) / n
    print(f"\n{name} k=3: {n - len(skipped)}/{n} items yield an episode ({rate:.1%}); "
          f"skipped lines (a single step, nothing to shuffle): {skipped}")
    assert rate >= 0.95
    assert all(task.verify(*b).score == 1.0 for b in built.values() if b is not None)


def test_same_seed_same_episode_in_another_process():
    code = ("import gymnasium as gym, thinkgym; "
            "print(repr([gym.make(e).reset(seed=9)[0] for e in ('MaskedStep-v0', 'StepReorder-v0')]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == repr([gym.make(e).reset(seed=9)[0] for e in ("MaskedStep-v0", "StepReorder-v0")])


def test_step_reorder_takes_task_and_task_kwargs_like_its_keyword_knobs():
    env = gym.make("StepReorder-v0", task="step_reorder", task_kwargs={"k": 4, "reward": "kendall"})
    assert env.reset(seed=4)[0] == gym.make("StepReorder-v0", k=4, reward="kendall").reset(seed=4)[0]
    assert env.unwrapped.task.config.k == 4
    with pytest.raises(ValueError, match="task='running_sum' .* must be 'step_reorder' or a StepReorderTask"):
        gym.make("StepReorder-v0", task="running_sum")
