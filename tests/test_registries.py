"""Every registry (losses, advantage estimators, rewards, tasks, engines) is one `thinkgym.registry.Registry`: it
refuses a second registration of a name instead of silently replacing the first, and an unknown name is an error
listing the valid ones. (verl is stricter in one place only: its `register_adv_est` refuses another function under
a taken name but accepts the same one again, and its `register_policy_loss` silently replaces.) Env ids, listed
in `ENV_SPECS`, refuse a duplicate too."""

import gymnasium as gym
import numpy as np
import pytest

from thinkgym.agents.learner.advantages import ADVANTAGE_ESTIMATORS, register_advantage
from thinkgym.agents.learner.losses import POLICY_LOSSES, register_policy_loss
from thinkgym.agents.rollout.engine import ENGINES
from thinkgym.envs import registration
from thinkgym.envs.tasks import TASKS, register_task
from thinkgym.registry import Registry
from thinkgym.rewards import REWARDS, register_reward

REGISTRIES = {
    "loss": (lambda name: register_policy_loss(name)(lambda stats: []), POLICY_LOSSES),
    "advantage": (lambda name: register_advantage(name)(lambda r, s: r), ADVANTAGE_ESTIMATORS),
    "reward": (lambda name: register_reward(name)(lambda sample: 0.0), REWARDS),
    "task": (lambda name: register_task(name, object), TASKS),
    "engine": (lambda name: ENGINES.register(name, object), ENGINES),
}


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_every_registry_refuses_a_duplicate_name_and_names_the_valid_ones(kind):
    register, registry = REGISTRIES[kind]
    registered = registry.names()
    assert registered
    for name in registered:
        with pytest.raises(ValueError, match="already registered"):
            register(name)
    assert registry.names() == registered
    with pytest.raises(ValueError, match=rf"{registry.kind}='no_such_name' is unknown; valid names: \[{registered[0]!r}"):
        registry.get("no_such_name")


def test_a_registry_registers_by_call_or_decorator_and_lists_sorted_names():
    reg: Registry[object] = Registry("widget")
    marker = object()
    assert reg.register("b", marker) is marker

    @reg.register("a")
    def a():
        pass

    assert reg.get("a") is a and reg.get("b") is marker
    assert reg.names() == list(reg) == ["a", "b"] and "a" in reg and len(reg) == 2
    with pytest.raises(ValueError, match=r"widget 'a' is already registered; registered: \['a', 'b'\]"):
        reg.register("a", marker)


def test_env_ids_refuse_a_duplicate(monkeypatch):
    """An id listed twice, or one Gymnasium already holds as another environment, is refused; the same spec again
    (a second `register_all`) is not a duplicate."""
    registration.register_all()
    env_id, entry, kwargs = registration.ENV_SPECS[0]
    monkeypatch.setattr(registration, "ENV_SPECS", registration.ENV_SPECS + [(env_id, entry, kwargs)])
    with pytest.raises(ValueError, match=rf"env ids \[{env_id!r}\] are listed more than once"):
        registration.register_all()
    monkeypatch.setattr(registration, "ENV_SPECS", [(env_id, "some.other:Env", kwargs)])
    with pytest.raises(ValueError, match=f"env id {env_id!r} is already registered with Gymnasium as {entry}"):
        registration.register_all()
    assert gym.spec(env_id).entry_point == entry


@pytest.mark.parametrize("name", sorted(ADVANTAGE_ESTIMATORS))
def test_every_advantage_estimator_takes_rewards_and_scale_rewards(name):
    rewards = np.array([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    for scale in ("group", "batch", "none"):
        adv = ADVANTAGE_ESTIMATORS.get(name)(rewards, scale)
        assert adv.shape == rewards.shape and np.isfinite(adv).all()
