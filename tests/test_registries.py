"""Every registry (losses, advantage estimators, rewards, tasks) refuses a second registration of a
name instead of silently replacing the first, as verl's `register_adv_est` does."""

import numpy as np
import pytest

from thinkgym.agents.learner.advantages import ADVANTAGE_ESTIMATORS, register_advantage
from thinkgym.agents.learner.losses import POLICY_LOSSES, register_policy_loss
from thinkgym.envs.tasks import TASKS, register_task
from thinkgym.rewards import available_rewards, register_reward

REGISTRIES = {
    "loss": (lambda name: register_policy_loss(name)(lambda stats: []), lambda: sorted(POLICY_LOSSES)),
    "advantage": (lambda name: register_advantage(name)(lambda r, s: r), lambda: sorted(ADVANTAGE_ESTIMATORS)),
    "reward": (lambda name: register_reward(name)(lambda sample: 0.0), available_rewards),
    "task": (lambda name: register_task(name, object), lambda: sorted(TASKS)),
}


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_every_registry_refuses_a_duplicate_name(kind):
    register, names = REGISTRIES[kind]
    registered = names()
    for name in registered:
        with pytest.raises(ValueError, match="already registered"):
            register(name)
    assert names() == registered


@pytest.mark.parametrize("name", sorted(ADVANTAGE_ESTIMATORS))
def test_every_advantage_estimator_takes_rewards_and_scale_rewards(name):
    rewards = np.array([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    for scale in ("group", "batch", "none"):
        adv = ADVANTAGE_ESTIMATORS.get(name)(rewards, scale)
        assert adv.shape == rewards.shape and np.isfinite(adv).all()
