"""The Engine protocol holds everything callers use, so no caller probes an engine with hasattr/getattr
or branches on its name: each engine class provides every member, and GRPOTrainer takes an engine."""

import pytest

from thinkgym.agents.learner.config import GRPOConfig
from thinkgym.agents.learner.trainer import GRPOTrainer
from thinkgym.agents.rollout.hf.routed import RoutedEngine
from thinkgym.agents.policy import Policy
from thinkgym.agents.rollout.engine import Engine, GenerationRequest
from thinkgym.agents.rollout.hf.engine import HFEngine

pytestmark = pytest.mark.usefixtures("one_thread")
ENGINES = [HFEngine, RoutedEngine]
try:
    from thinkgym.agents.rollout.vllm import VLLMEngine

    ENGINES.append(VLLMEngine)
except ImportError:  # the vllm extra is not installed
    pass


@pytest.mark.parametrize("cls", ENGINES, ids=lambda c: c.__name__)
def test_every_engine_provides_every_member_of_the_protocol(cls):
    methods = [n for n in dir(Engine) if not n.startswith("_")]
    assert {"generate", "sync_weights", "seed", "get_rng_state", "set_rng_state", "close"} <= set(methods)
    for name in methods:
        assert callable(getattr(cls, name, None)), f"{cls.__name__} lacks {name}()"
    assert isinstance(cls.logprobs_are_trainers, bool)


def test_an_engine_seed_and_rng_state_reproduce_its_samples():
    eng = HFEngine(Policy.tiny(), seed=0)
    req = [GenerationRequest([5, 6, 7], 12, temperature=1.0, n=4)]
    eng.seed(3)
    state = eng.get_rng_state()
    first = [c.token_ids for c in eng.generate(req)[0]]
    eng.set_rng_state(state)
    assert [c.token_ids for c in eng.generate(req)[0]] == first
    eng.seed(3)
    assert [c.token_ids for c in eng.generate(req)[0]] == first
    eng.close()


def test_grpo_trainer_trains_the_policy_of_the_engine_it_is_given(tmp_path):
    policy = Policy.tiny(seed=1)
    eng = HFEngine(policy, seed=0)
    cfg = GRPOConfig(output_dir=str(tmp_path), steps=1, prompts_per_step=1, num_generations=2, eval_every=0, save_every=0,
                     learning_rate=1e-3)
    trainer = GRPOTrainer(cfg, engine=eng)
    assert trainer.engine is eng and trainer.policy is policy
    calls = []
    generate = eng.generate
    eng.generate = lambda reqs: calls.append(len(reqs)) or generate(reqs)
    trainer.train_step()
    assert calls, "the trainer rolled out with an engine of its own"
    with pytest.raises(ValueError, match="another policy"):
        GRPOTrainer(cfg, policy=Policy.tiny(seed=2), engine=eng)
