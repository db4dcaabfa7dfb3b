"""AutoThink stages, AdaptThink's advantage and forced prefixes, and SIRI's length schedule."""

import json
import math

import pytest

from thinkgym.rewards import (ADAPTTHINK_FORCED_LOGPROB, AUTOTHINK_ELLIPSIS_PREFIX, NO_THINK, THINK, AdaptThink,
                              Sample, SiriSchedule, adaptthink_prefixes, delethink_max_chunks, autothink_base_reward, detect_think_mode,
                              get_reward, parse_reward_spec)

THINK_OK = "Alright, 2+2 is 4.</think>\\boxed{4}"
THINK_BAD = "Alright, 2+2 is 5.</think>\\boxed{5}"
NOTHINK_OK = "</think>\n\n\\boxed{4}"
NOTHINK_BAD = "</think>\n\n\\boxed{5}"


def smp(text, n=10, pid=0, **kw):
    return Sample(text, n, pid, gold="4", **kw)


def test_think_mode_detection_and_prefix_constant():
    assert AUTOTHINK_ELLIPSIS_PREFIX == "<think>\n...\n"
    assert detect_think_mode(NOTHINK_OK) == NO_THINK and detect_think_mode("  \n</think>x") == NO_THINK
    assert detect_think_mode("<｜Assistant｜><think>\n...\n</think>\n\n\\boxed{4}") == NO_THINK
    assert detect_think_mode(THINK_OK) == THINK and detect_think_mode("") == THINK
    assert smp(THINK_OK, think_mode=NO_THINK).mode == NO_THINK  # a forced prefix wins over detection
    with pytest.raises(ValueError, match="think_mode"):
        Sample("x", 1, think_mode="maybe")


def test_autothink_base_rewards():
    loop = "</think>\n\n" + "so so " * 30 + "\\boxed{5}"
    texts = [THINK_OK, THINK_BAD, NOTHINK_OK, NOTHINK_BAD, loop, "thinking forever", ""]
    assert [autothink_base_reward(smp(t)) for t in texts] == [1.0, 0.0, 2.0, -1.0, -2.0, 0.0, 0.0]


def test_autothink_stage1_balances_the_batch():
    r = get_reward("autothink", stage=1)
    batch = [smp(THINK_OK), smp(THINK_OK), smp(THINK_BAD), smp(NOTHINK_OK)]
    # p_think = 0.75 > 0.5: lambda = 2 * 0.25 = 0.5; think correct 1 -> 0.5, think wrong 0 -> -0.5
    assert r(batch) == pytest.approx([0.5, 0.5, -0.5, 2.0])
    all_think = [smp(THINK_OK), smp(THINK_BAD)]  # one mode only: lambda = 1, rewards reach the targets
    assert r(all_think) == pytest.approx([0.0, -1.0])
    assert r([smp(NOTHINK_OK), smp(NOTHINK_BAD)]) == pytest.approx([1.0, -2.0])
    balanced = [smp(THINK_OK), smp(NOTHINK_BAD)]
    assert r(balanced) == get_reward("autothink", stage=2)(balanced) == [1.0, -1.0]
    assert r([]) == []


def test_autothink_stage3_length_z_scores_within_each_group():
    r = get_reward("autothink", stage=3)
    g = [smp(THINK_OK, 100, "a"), smp(THINK_OK, 200, "a"), smp(THINK_OK, 300, "a"),
         smp(THINK_BAD, 100, "a"), smp(THINK_BAD, 300, "a"),
         smp(NOTHINK_OK, 50, "b"), smp(NOTHINK_BAD, 70, "b"), smp(NOTHINK_BAD, 70, "b")]
    z = math.sqrt(1.5)  # lengths 100/200/300: population std sqrt(20000/3), z = -/+ 1.2247
    expected = [1 + math.exp(0.05 * z) - 1, 1.0, 1 + math.exp(-0.05 * z) - 1,
                0 + 1 - math.exp(0.05), 0 + 1 - math.exp(-0.05),
                2.0, -1.0, -1.0]  # group b: one correct (no z), two wrong of equal length (std 0)
    assert r(g) == pytest.approx(expected)
    assert expected[0] == pytest.approx(1.063151, abs=1e-6) and expected[3] == pytest.approx(-0.051271, abs=1e-6)


def test_adaptthink_prefixes_and_advantage():
    assert adaptthink_prefixes(4) == ["</think>", "</think>", "Alright", "Alright"]
    assert ADAPTTHINK_FORCED_LOGPROB == pytest.approx(math.log(0.5))
    for bad in (3, 0, 1):
        with pytest.raises(ValueError, match="even"):
            adaptthink_prefixes(bad)
    with pytest.raises(ValueError, match="think_opener"):
        adaptthink_prefixes(2, think_opener="</think>")
    r = parse_reward_spec("adaptthink(delta=0.05)")
    assert r.raw_advantage
    with pytest.raises(ValueError, match="set_reference"):
        r([smp(THINK_OK, pid="p")])
    r["adaptthink"].set_reference([smp(THINK_OK, pid="p")] * 3 + [smp(THINK_BAD, pid="p")])  # R_ref = 0.75
    group = [smp(NOTHINK_OK, pid="p"), smp(THINK_OK, pid="p"), smp(NOTHINK_BAD, pid="p"),
             smp("Alright</think>x</think>\\boxed{4}", pid="p"), smp("<think>again</think>\\boxed{4}", pid="p")]
    assert r(group) == pytest.approx([0.30, 0.25, -0.70, -0.75, -0.75])
    fresh = AdaptThink(delta=0.05)
    fresh.load_state_dict(json.loads(json.dumps(r.state_dict()["adaptthink"])))
    assert fresh(group) == r(group)
    with pytest.raises(ValueError, match="delta"):
        AdaptThink(delta=-0.1)


@pytest.mark.parametrize("shape, points", [
    ("cosine", {0: 16384, 160: 12288, 320: 8192, 480: 12288, 640: 16384, 800: 12288}),
    ("stair", {0: 8192, 319: 8192, 320: 16384, 639: 16384, 640: 8192}),
    ("stair_cosine", {0: 16384, 79: 16384, 80: 16384, 120: round(12288 + 4096 * math.cos(math.pi / 4)),
                      160: 12288, 240: 8192, 320: 8192, 399: 8192, 400: 8192, 480: 12288, 560: 16384,
                      600: 16384, 640: 16384}),
])
def test_siri_schedule_against_hand_values(shape, points):
    sched = SiriSchedule(l_min=8192, l_max=16384, period=640, shape=shape)
    assert {t: sched(t) for t in points} == points
    assert all(8192 <= sched(t) <= 16384 for t in range(0, 1280, 7))


@pytest.mark.parametrize("kwargs, match", [
    (dict(l_min=-1), "l_min"), (dict(l_min=20000), "must not exceed"), (dict(period=1), "period"),
    (dict(shape="linear"), "shape"),
])
def test_siri_schedule_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SiriSchedule(**kwargs)
    with pytest.raises(ValueError, match="step"):
        SiriSchedule()(-1)


def test_scheduled_budget_to_delethink_chunks():
    # 24K: 8192 + 4 * 4096 = 24576 -> I = 5; a budget between steps rounds down; below C still one chunk
    assert delethink_max_chunks(24576, 8192, 4096) == 5
    assert delethink_max_chunks(24575, 8192, 4096) == 4
    assert delethink_max_chunks(98304, 8192, 4096) == 23
    assert delethink_max_chunks(4000, 8192, 4096) == 1
    sched = SiriSchedule(l_min=8192, l_max=16384, period=4, shape="stair")
    assert [delethink_max_chunks(sched(t), 8192, 4096) for t in range(4)] == [1, 1, 3, 3]
    with pytest.raises(ValueError, match="carryover"):
        delethink_max_chunks(10000, 100, 100)
