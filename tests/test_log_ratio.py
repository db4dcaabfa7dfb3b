"""Honest log-probs: the hf engine's are taken as the learner's only in fp32, and every step logs the
first iteration's |log ratio| of the learner's log-probs to the engine's (TensorBoard
`engine_log_ratio/abs_mean` and `abs_max`), with the old log-probs' recomputation timed where it runs."""

from __future__ import annotations

import pytest
import torch

from thinkgym.agents.learner.config import GRPOConfig
from thinkgym.agents.learner.trainer import GRPOTrainer
from thinkgym.agents.plot import read_scalars
from thinkgym.agents.policy import Policy
from thinkgym.agents.rollout.hf.engine import HFEngine

pytestmark = pytest.mark.usefixtures("one_thread")


def test_hf_engine_logprobs_are_the_learners_only_in_fp32():
    assert HFEngine(Policy.tiny(device="cpu"), seed=0).logprobs_are_trainers
    assert not HFEngine(Policy.tiny(device="cpu", dtype=torch.bfloat16), seed=0).logprobs_are_trainers


class ShiftedEngine(HFEngine):
    """The hf engine reporting every log-prob `shift` nats above its own: a made-up engine/learner gap."""

    shift = 0.0

    def generate(self, requests):
        out = super().generate(requests)
        for comps in out:
            for c in comps:
                c.logprobs = [lp + self.shift for lp in c.logprobs]
                c.eos_logprob = None if c.eos_logprob is None else c.eos_logprob + self.shift
        return out


def one_step(tmp_path, shift: float, trusted: bool) -> dict[str, float]:
    cfg = GRPOConfig(env="DelethinkDemo-v0", model="tiny", output_dir=str(tmp_path), steps=1, prompts_per_step=2,
                     num_generations=2, micro_batch_size=4, learning_rate=1e-3, eval_every=0, save_every=0)
    engine = ShiftedEngine(Policy.tiny(device="cpu"), seed=0)
    engine.shift, engine.logprobs_are_trainers = shift, trusted
    trainer = GRPOTrainer(cfg, engine=engine)
    metrics = trainer.train_step()
    trainer.log(metrics, 1)
    logged = read_scalars(tmp_path)
    assert logged["engine_log_ratio/abs_mean"] == [(1, pytest.approx(metrics["engine_log_ratio/abs_mean"]))]
    assert logged["engine_log_ratio/abs_max"] == [(1, pytest.approx(metrics["engine_log_ratio/abs_max"]))]
    assert ("time/old_logprobs_s" in metrics) is not trusted
    return metrics


@pytest.mark.parametrize("trusted", [True, False], ids=["engine_old_logprobs", "recomputed"])
def test_first_iteration_log_ratio_is_logged_zero_when_equal_and_the_gap_otherwise(tmp_path, trusted):
    same = one_step(tmp_path / "same", 0.0, trusted)
    assert same["engine_log_ratio/abs_max"] < 1e-5  # fp32 on the CPU: the engine's kernels round as the learner's do
    shifted = one_step(tmp_path / "shifted", 0.05, trusted)
    assert shifted["engine_log_ratio/abs_mean"] == pytest.approx(0.05, abs=1e-5)
    assert shifted["engine_log_ratio/abs_max"] == pytest.approx(0.05, abs=1e-5)


def forwards_in_one_step(tmp_path, **overrides) -> int:
    """How many times the model runs forward in one GRPO step's update, with the engine's log-probs not trusted."""
    cfg = GRPOConfig(env="DelethinkDemo-v0", model="tiny", output_dir=str(tmp_path), steps=1, prompts_per_step=2,
                     num_generations=2, micro_batch_size=64, learning_rate=1e-3, eval_every=0, save_every=0, **overrides)
    engine = ShiftedEngine(Policy.tiny(device="cpu"), seed=0)
    engine.logprobs_are_trainers = False
    trainer = GRPOTrainer(cfg, engine=engine)
    batch, rewards = trainer.collect_step()[:2]
    calls = []
    hook = trainer.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        metrics = trainer.optimize(batch.rows, trainer.advantages(batch, rewards))
    finally:
        hook.remove()
    assert metrics["engine_log_ratio/abs_max"] < 1e-5
    return len(calls)


def test_one_update_takes_its_old_logprobs_from_the_training_forward(tmp_path):
    """One iteration and one minibatch: no separate forward recomputes the old log-probs (one micro-batch,
    one forward); a second iteration still needs them, from the weights before its first update."""
    assert forwards_in_one_step(tmp_path / "one") == 1
    assert forwards_in_one_step(tmp_path / "two", num_iterations=2) == 3
