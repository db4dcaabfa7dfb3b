"""Curriculum: promotion and demotion exactly per the rule, checkpoints, SATCurriculum-v0."""

import json

import gymnasium as gym
import pytest

import thinkgym  # noqa: F401
from thinkgym.envs.curriculum import Curriculum, levels_from_attributes
from thinkgym.envs.sat import SATCurriculumEnv
from thinkgym.envs.tasks.sat import SATURN_STAGES

LEVELS = [{"l": 5}, {"l": 6}, {"l": 13}]


def run(cur: Curriculum, results: str) -> list[int]:
    """The level after each recorded result ('1' solved, '0' not)."""
    out = []
    for r in results:
        cur.record(r == "1")
        out.append(cur.level)
    return out


def test_promotes_only_when_pass_at_1_is_above_epsilon_at_a_check():
    cur = Curriculum(LEVELS, promote_above=0.5, check_every=4)
    # 3/4 at a check promotes; exactly 0.5 does not (strictly above); at the top nothing moves.
    assert run(cur, "1101" + "1100" + "0111" + "1111") == [0, 0, 0, 1] + [1] * 4 + [1, 1, 1, 2] + [2] * 4
    assert [(h["episode"], h["from"], h["to"], h["pass_at_1"]) for h in cur.history] == [(4, 0, 1, 0.75), (12, 1, 2, 0.75)]


def test_window_only_sees_the_current_level_and_its_last_results():
    cur = Curriculum(LEVELS, promote_above=0.5, check_every=4, window=2)
    assert run(cur, "1100") == [0, 0, 0, 0]  # the window holds the last two results: 0/2
    assert run(cur, "0011") == [0, 0, 0, 1]
    assert cur.pass_at_1 is None  # a move clears the window


def test_demotion_is_optional_and_per_rule():
    no_demote = Curriculum(LEVELS, check_every=2, start_level=1)
    assert run(no_demote, "0000") == [1, 1, 1, 1]
    cur = Curriculum(LEVELS, check_every=2, demote_below=0.25, start_level=2)
    assert run(cur, "10" + "00" + "00") == [2, 2, 2, 1, 1, 0]
    assert run(cur, "00") == [0, 0]  # the bottom stays
    assert [h["to"] for h in cur.history] == [1, 0]


def test_decide_applies_the_rule_to_an_external_validation_score():
    cur = Curriculum(LEVELS, promote_above=0.75)
    assert not cur.decide(0.75) and cur.level == 0
    assert cur.decide(0.8) and cur.level == 1 and cur.knobs == {"l": 6}


def test_state_round_trips_through_a_checkpoint():
    a = Curriculum(LEVELS, check_every=3, window=5, demote_below=0.1)
    run(a, "111" + "01")
    b = Curriculum(LEVELS, check_every=3, window=5, demote_below=0.1)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert b.state_dict() == a.state_dict()
    script = "1" + "000" + "111" + "111"
    assert run(a, script) == run(b, script) and a.state_dict() == b.state_dict()
    with pytest.raises(ValueError, match="different levels"):
        Curriculum(LEVELS[:2]).load_state_dict(a.state_dict())


@pytest.mark.parametrize("kwargs,match", [
    (dict(levels=[]), "levels must be"),
    (dict(promote_above=1.5), "promote_above"),
    (dict(demote_below=0.6), "demote_below"),
    (dict(check_every=0), "check_every"),
    (dict(window=-1), "window"),
    (dict(start_level=3), "start_level"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Curriculum(**{"levels": LEVELS, **kwargs})


def test_levels_from_attributes():
    assert levels_from_attributes(n=[3], k=[5], l=[5, 6, 13]) == [{"n": 3, "k": 5, "l": x} for x in (5, 6, 13)]
    with pytest.raises(ValueError, match="one common length"):
        levels_from_attributes(k=[5, 6], l=[5, 6, 13])


def solve(env, seed=None, level=None):
    options = None if level is None else {"level": level}
    _, info = env.reset(seed=seed, options=options)
    return info, env.step(env.task.demonstration(env.problem.seed))[4]


def test_sat_curriculum_env_starts_at_saturn_stages_and_promotes():
    env = gym.make("SATCurriculum-v0", check_every=3).unwrapped
    assert [tuple(lv[x] for x in "nkl") for lv in env.curriculum.levels] == list(SATURN_STAGES)
    for i in range(3):
        info, end = solve(env, seed=i)
        assert info["difficulty"]["l"] == 5 and info["curriculum"]["level"] == 0
    assert end["curriculum"]["level"] == 1 and end["curriculum"]["episode_level"] == 0
    info, end = solve(env, seed=9)
    assert info["difficulty"]["l"] == 6 and info["curriculum"]["knobs"] == {"n": 3, "k": 5, "l": 6}
    # a forced level poses that level and is not recorded
    info, end = solve(env, seed=9, level=3)
    assert info["difficulty"]["l"] == 15 and env.curriculum.episodes == 4
    restored = SATCurriculumEnv(check_every=3)
    restored.load_state_dict(env.state_dict())
    assert restored.reset(seed=1)[1]["difficulty"]["l"] == 6


def test_sat_curriculum_env_demotes_on_failures():
    env = SATCurriculumEnv(check_every=2, demote_below=0.3, start_level=2)
    for seed in range(2):
        env.reset(seed=seed)
        env.step("no answer")
    assert env.curriculum.level == 1
    with pytest.raises(ValueError, match="options\\['level'\\]"):
        env.reset(options={"level": 7})
