"""LASER-D/-DE targets and HAPO histories: hand-computed values and checkpoint round trips."""

import json
import math

import pytest

from thinkgym.rewards import Hapo, LaserD, LaserDE, Sample, difficulty_bucket, get_reward, hapo_length_reward

ANSWERED = "work</think>\\boxed{5}"


def s(n, pid, ok, text=None):
    return Sample(text or ("work</think>\\boxed{4}" if ok else ANSWERED), n, pid, correct=ok)


def group(pid, oks, lengths):
    return [s(n, pid, ok) for ok, n in zip(oks, lengths)]


@pytest.mark.parametrize("n, k, bucket", [(8, 8, "easy"), (6, 8, "easy"), (5, 8, "medium"), (3, 8, "medium"),
                                          (2, 8, "hard"), (0, 8, "hard"), (2, 3, "easy"), (1, 3, "medium")])
def test_difficulty_buckets_use_exact_thirds(n, k, bucket):
    assert difficulty_bucket(n, k) == bucket


# A monitor set of K=4 rollouts per prompt: p1 easy (4/4), p3 medium (2/4), p4 hard (0/4).
MONITOR = (group("p1", [1, 1, 1, 1], [50, 150, 250, 350]) + group("p3", [1, 1, 0, 0], [120, 220, 320, 420])
           + group("p4", [0, 0, 0, 0], [10, 20, 30, 40]))


def test_laser_d_coverage_rule_floor_and_ceil():
    floor = LaserD(target_length=100, max_length=400, interval=100)
    assert floor.targets == {"easy": 100, "medium": 100, "hard": 100}  # before the first monitor pass
    floor.update(MONITOR)
    # easy: |C|=floor(8/3)=2, P(200)=2/4 -> floor(1.0)=1 >= 1; medium: |C|=1, P<=3/4 everywhere -> ECR 0 -> max;
    # hard: |C|=1, P(100)=1 -> 1 (a target exactly at the lower bound)
    assert floor.targets == {"easy": 200, "medium": 400, "hard": 100}
    assert floor.metrics() == {"target_easy": 200.0, "target_medium": 400.0, "target_hard": 100.0,
                               "coverage_easy": 0.5, "coverage_medium": 0.75, "coverage_hard": 1.0}
    ceil = LaserD(target_length=100, max_length=400, interval=100, round_method="ceil")
    ceil.update(MONITOR)  # medium: |C|=ceil(4/3)=2, P(300)=2/4 -> ECR 1.0
    assert ceil.targets == {"easy": 200, "medium": 300, "hard": 100}


def test_laser_d_rewards_by_the_groups_own_bucket_and_monitor_schedule():
    r = LaserD(target_length=100, max_length=400, interval=100, monitor_every=2)
    assert r.monitor_due
    r.update(MONITOR)
    assert not r.monitor_due
    easy = group("q", [1, 1, 1], [200, 201, 50])
    hard = group("h", [1, 0, 0, 0], [100, 101, 5, 5])
    assert r(easy + hard) == [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    r.update(group("x", [0, 0], [1000, 1000]))  # not a monitor step: targets unchanged
    assert r.targets["hard"] == 100 and r.monitor_due
    r.update(group("x", [0, 0], [1000, 1000]))  # monitor step: hard prompts now run long
    assert r.targets == {"easy": 200, "medium": 400, "hard": 400}


def test_laser_de_explores_only_answered_long_non_looping_wrong_answers():
    r = get_reward("laser_de", target_length=100, max_length=400, interval=100)
    r.update(MONITOR)
    hard = [s(150, "h", False), s(150, "h", False, "no box at all"), s(150, "h", False, "loop " * 40 + ANSWERED),
            s(50, "h", False), s(100, "h", True), s(0, "h", False, "")]
    assert r(hard) == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert isinstance(r, LaserDE)


def test_laser_d_state_round_trip():
    r = LaserD(target_length=100, max_length=400, interval=100, monitor_every=3)
    r.update(MONITOR)
    fresh = LaserD(target_length=100, max_length=400, interval=100, monitor_every=3)
    fresh.load_state_dict(json.loads(json.dumps(r.state_dict())))
    assert fresh.targets == r.targets and fresh.steps == 1 and fresh.metrics() == r.metrics()
    assert not fresh.monitor_due


C, D = math.cos(math.pi / 4), math.cos(3 * math.pi / 4)


@pytest.mark.parametrize("length, correct, expected", [
    (0, True, 1.0), (50, True, C), (100, True, 0.0), (150, True, -0.7), (200, True, -0.7), (1000, True, -0.7),
    (0, False, 0.0), (50, False, 0.0), (100, False, 0.0), (150, False, D), (199, False, math.cos(math.pi * 199 / 200)),
    (200, False, -1.0), (900, False, -1.0),
])
def test_hapo_cosine_against_hand_values(length, correct, expected):
    assert hapo_length_reward(length, 100, correct) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("length, correct, expected", [
    (40, True, 0.6), (100, True, 0.0), (105, True, 0.0), (150, True, -0.4), (300, True, -0.7),
    (40, False, 0.0), (105, False, 0.0), (150, False, -0.4), (300, False, -1.0),
])
def test_hapo_linear_against_hand_values(length, correct, expected):
    assert hapo_length_reward(length, 100, correct, "linear") == pytest.approx(expected)


def test_hapo_history_uses_the_shortest_correct_length_before_the_update():
    r = get_reward("hapo")
    step1 = group("a", [1, 1, 0], [300, 200, 50]) + group("b", [0, 0], [10, 20])
    assert r(step1) == [0.0] * 5  # no correct answer yet anywhere: no length term
    r.update(step1)
    assert r.history == {"a": 200}  # b has no correct answer: still no history
    step2 = group("a", [1, 1, 0], [100, 250, 300]) + group("b", [1, 0], [10, 20])
    assert r(step2) == pytest.approx([C, math.cos(5 * math.pi / 8), D, 0.0, 0.0])  # h_a = 200
    r.update(step2)
    assert r.history == {"a": 100, "b": 10}
    r.update(group("a", [1], [150]))  # longer correct answers never raise the history
    assert r.history["a"] == 100
    assert r([s(0, "c", False, "")]) == [0.0]  # an empty response of an unseen prompt


def test_hapo_state_round_trip_keeps_prompt_id_types():
    r = Hapo(shape="linear")
    r.update([s(30, 7, True), s(40, "7", True), s(50, (1, 2), True)])
    fresh = Hapo(shape="linear")
    fresh.load_state_dict(json.loads(json.dumps(r.state_dict())))
    assert fresh.history == {7: 30, "7": 40, (1, 2): 50}
    probe = [s(35, 7, True), s(60, (1, 2), False)]
    assert fresh(probe) == r(probe)
    with pytest.raises(ValueError, match="shape"):
        Hapo(shape="exp")


def test_spec_update_sends_monitor_rollouts_to_laser_d_and_the_batch_to_hapo():
    from thinkgym.rewards import parse_reward_spec

    spec = parse_reward_spec("correctness + 0.5*laser_d(target_length=100, max_length=400, interval=100) + hapo")
    assert spec.monitor_due
    batch = group("t", [1, 1], [30, 80])
    spec.update(batch, monitor=MONITOR)
    assert spec["laser_d"].targets == {"easy": 200, "medium": 400, "hard": 100}  # from MONITOR, not the batch
    assert spec["hapo"].history == {"t": 30} and not spec.monitor_due


def test_a_cut_off_sample_is_never_correct():
    cut = Sample("work</think>\\boxed{4}", 100, "p", correct=True, finished=False)
    assert not cut.is_correct
    assert get_reward("laser", target_length=500)([cut]) == [0.0]
    assert not Sample("</think>\\boxed{4}", 5, gold="4", finished=False).is_correct
