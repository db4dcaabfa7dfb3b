"""Stateless rewards against hand-computed values, the registry, and reward specs."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from thinkgym.rewards import (Sample, available_rewards, get_reward, has_repetition_loop, parse_reward_spec,
                              register_reward)
from thinkgym.rewards.math import TIMEOUT_S, math_equal
from thinkgym.rewards.worker import WorkerProcess


def right(n, pid=0):
    return Sample("work</think>\\boxed{4}", n, pid, correct=True)


def wrong(n, pid=0):
    return Sample("work</think>\\boxed{5}", n, pid, correct=False)


def test_correctness_uses_math_verify_on_the_last_box_after_think():
    s = lambda text: Sample(text, 10, gold="\\frac{1}{2}")  # noqa: E731
    r = get_reward("correctness")
    assert r([s("\\boxed{3}</think>so \\boxed{7} no, \\boxed{0.5}"), s("</think>\\boxed{1/3}"),
              s("\\boxed{0.5} but no close"), s("")]) == [1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="correct.*gold"):
        r([Sample("x", 1)])


def test_laser_base_score_and_format_rewards():
    empty = Sample("", 0, correct=False)
    samples = [right(5), wrong(5), Sample("no close \\boxed{4}", 5, correct=False), empty]
    assert get_reward("laser_correctness")(samples) == [1.0, -0.5, -1.0, -1.0]
    assert get_reward("format_boxed")(samples) == [1.0, 1.0, 0.0, 0.0]
    texts = ["a</think>b", "a</think>b</think>", "no close", ""]
    assert get_reward("format_think")([Sample(t, 1, correct=False) for t in texts]) == [1.0, 0.0, 0.0, 0.0]


def test_repetition_detector_boundaries():
    assert has_repetition_loop("the cat sat " * 12)
    assert not has_repetition_loop("a b " * 9)  # a 2-gram 9 times in a row: below the 10 needed
    assert has_repetition_loop("intro words " + "a b " * 10 + "outro")
    assert has_repetition_loop("x" * 120) and not has_repetition_loop("x" * 119)
    assert not has_repetition_loop("First add 3 and 4 to get 7, then double it: 14. Check: 7 + 7 = 14. " * 2)
    assert not has_repetition_loop("")
    loop = Sample("so " * 40, 40, correct=False)
    assert get_reward("no_repetition")([loop, right(3)]) == [0.0, 1.0]
    assert get_reward("no_repetition", min_repeats=50)([loop]) == [1.0]


def test_dapo_overlong_penalty():
    r = get_reward("overlong", buffer=200, max_tokens=1000)
    lengths = [0, 800, 801, 900, 1000, 1500]
    assert r([wrong(n) for n in lengths]) == pytest.approx([0.0, 0.0, -0.005, -0.5, -1.0, -1.0])
    budgeted = get_reward("overlong", buffer=200)  # L_max from the sample's own budget
    assert budgeted([Sample("x", 450, correct=True, max_tokens=500)]) == pytest.approx([-0.75])
    with pytest.raises(ValueError, match="max_tokens"):
        budgeted([wrong(1)])


def test_open_rs_cosine_in_tokens_clipped_with_intended_signs():
    r = get_reward("cosine", max_len=100)
    assert r([right(n) for n in (0, 50, 100, 200, 300)]) == pytest.approx([1.0, 0.75, 0.5, 0.5, 0.5])
    assert r([wrong(n) for n in (0, 50, 100, 200)]) == pytest.approx([-1.0, -0.75, -0.5, -0.5])
    assert r([Sample("", 0, gold="4")]) == pytest.approx([-1.0])  # empty response: wrong at length 0


def test_laser_step_reward_includes_the_target():
    r = get_reward("laser", target_length=100)
    assert r([right(100), right(101), right(0), wrong(10)]) == [1.0, 0.0, 1.0, 0.0]


def test_registry_custom_reward_and_errors():
    @register_reward("test_short_bonus")
    def short_bonus(sample, limit=10):
        return float(sample.is_correct and sample.num_tokens <= limit)

    assert "test_short_bonus" in available_rewards()
    assert get_reward("test_short_bonus", limit=5)([right(5), right(6)]) == [1.0, 0.0]
    total = parse_reward_spec("correctness + 0.25*test_short_bonus(limit=5)")
    assert total([right(5), right(6), wrong(1)]) == [1.25, 1.0, 0.0]
    with pytest.raises(ValueError, match="already registered"):
        register_reward("test_short_bonus")(short_bonus)
    with pytest.raises(ValueError, match="identifier"):
        register_reward("not-a-name")
    with pytest.raises(ValueError, match=r"reward='lazer' is unknown; valid names: .*laser_d"):
        get_reward("lazer")
    with pytest.raises(ValueError, match=r"accepted arguments: \['target_length'\]"):
        get_reward("laser", target=5)

    @register_reward("test_group_rank", group=True)
    def rank(samples):
        return [float(i) for i in range(len(samples))]

    assert get_reward("test_group_rank")([right(1), right(2)]) == [0.0, 1.0]


def test_spec_weighted_sum_and_component_means():
    spec = parse_reward_spec("correctness + 0.5*laser(target_length=100) - 0.1*overlong(buffer=100, max_tokens=200)")
    assert spec.weights == {"correctness": 1.0, "laser": 0.5, "overlong": -0.1}
    out = spec.compute([right(50), right(150), wrong(200)])
    assert out.components == {"correctness": [1.0, 1.0, 0.0], "laser": [1.0, 0.0, 0.0],
                              "overlong": [0.0, -0.5, -1.0]}
    assert out.total == pytest.approx([1.5, 1.05, 0.1])
    m = out.metrics()
    assert m["rewards/laser/mean"] == pytest.approx(1 / 3) and m["rewards/total/mean"] == pytest.approx(2.65 / 3)
    assert parse_reward_spec("laser*2", params={"laser": {"target_length": 7}})["laser"].target_length == 7
    assert parse_reward_spec("-correctness").weights == {"correctness": -1.0}


@pytest.mark.parametrize("spec, match", [
    ("correctness + lazer_d", "reward='lazer_d' is unknown"),
    ("correctness + 0.5*laser(target_length=-5)", "target_length must be a positive integer"),
    ("laser_d(max_length=100, target_length=200)", "max_length"),
    ("overlong(buffer=0)", "buffer must be a positive integer"),
    ("correctness +", "not valid"),
    ("correctness * laser", "number\\*reward"),
    ("0.5*2", "number\\*reward"),
    ("correctness + correctness", "appears twice"),
    ("__import__('os').system('x')", "reward name"),
    ("laser(target_length=[1])", "literals"),
    ("", "non-empty"),
    ("correctness + 1.5*hapo", r"hapo's weight must be in \[0, correctness weight\]"),
    ("correctness - 0.5*hapo", "hapo's weight"),
    ("hapo", "on top of correctness"),
    ("correctness + 1.0*laser_de", "breaks correctness dominance"),
    ("laser_de", "breaks correctness dominance"),
    ("cosine(min_value_correct=-1.0)", "breaks correctness dominance"),
])
def test_bad_specs_raise_clear_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_reward_spec(spec)


def test_dominance_respecting_specs_build():
    for spec in ("correctness + hapo", "2*correctness + 1.5*hapo", "correctness + 0.5*laser_de",
                 "laser_correctness + 0.5*laser_de", "cosine + format_think"):
        parse_reward_spec(spec)
    with pytest.raises(ValueError, match="not in the spec"):
        parse_reward_spec("correctness", params={"laser": {"target_length": 3}})


def test_spec_state_round_trips_through_json():
    spec = parse_reward_spec("correctness + 0.5*laser_d(target_length=100, max_length=400, interval=100) + hapo")
    batch = [right(150, "a"), right(120, "a"), wrong(30, "b"), wrong(90, "b")]
    spec.update(batch)
    state = json.loads(json.dumps(spec.state_dict()))
    fresh = parse_reward_spec(spec.spec)
    fresh.load_state_dict(state)
    probe = [right(110, "a"), right(300, "a"), wrong(50, "b")]
    assert fresh(probe) == spec(probe) and fresh.metrics() == spec.metrics()
    assert spec.metrics()["hapo/history_mean"] == 120.0
    with pytest.raises(KeyError, match="hapo"):
        fresh.load_state_dict({"laser_d": state["laser_d"]})


def test_an_escaped_dollar_is_a_dollar_sign_not_a_math_delimiter():
    """MATH-500's gold `\\$36` was parsed as is (a `$` seemed to delimit math) and matched nothing."""
    from thinkgym.rewards.math import correctness, math_equal

    assert math_equal("\\$36", "\\$36") and math_equal("36", "\\$36") and math_equal("\\$18.90", "18.9")
    assert not math_equal("\\$35", "\\$36")
    assert correctness("work</think>\\boxed{\\$36}", "\\$36") == 1.0
    assert math_equal("$\\frac{1}{2}$", "0.5")  # a real delimiter is still left as written


def _in_thread(fn, *args, wait_s: float = 60.0):
    """fn(*args) on another thread, and how long it took; None if it is still running after wait_s."""
    out = {}
    t = threading.Thread(target=lambda: out.update(value=fn(*args), took=time.perf_counter() - start), daemon=True)
    start = time.perf_counter()
    t.start()
    t.join(wait_s)
    return None if t.is_alive() else (out["value"], out["took"])


def test_math_verify_is_bounded_in_a_thread():
    """Issue 34: math-verify's timeouts are signals, main-thread only; a power tower verified from a
    thread froze the process for over 75 s. Now it is checked in a helper process under the bound."""
    assert math_equal("9^{9^{9^{9}}}", "3") is False  # the main thread: math-verify's own timeouts
    result = _in_thread(math_equal, "9^{9^{9^{9}}}", "3")
    assert result is not None, "verification in a thread did not finish within 60 s"
    assert result[0] is False and result[1] < 3 * TIMEOUT_S + 30  # the helper's bound, plus its start-up
    with ThreadPoolExecutor(4) as pool:  # and the common path still verifies, from several threads
        got = list(pool.map(lambda a: math_equal(*a), [("\\frac{1}{2}", "0.5"), ("2", "3"), ("x+1", "1+x"), ("7", "7")]))
    assert got == [True, False, True, True]


def test_a_helper_process_that_overruns_is_killed():
    w = WorkerProcess("import time\ntime.sleep(60)")
    start = time.perf_counter()
    assert w.request({"any": 1}, None, 0.3) is None and time.perf_counter() - start < 2
    w.kill()
    assert not w.alive()
