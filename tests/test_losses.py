"""Loss aggregation, advantages, MGPO and KL, checked against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from thinkgym.agents.learner.advantages import ADVANTAGE_ESTIMATORS, mgpo_weight
from thinkgym.agents.learner.config import GRPOConfig
from thinkgym.agents.learner.losses import POLICY_LOSSES, PolicyLoss, k3_kl, row_stats, sequence_surrogate, token_surrogate
from thinkgym.agents.types import Row

# Two rows of one trace (episode 0: 2 + 1 tokens) and one row of another (episode 1: 3 tokens).
ROWS = [Row([9, 1, 2], 1, [1, 1], [0.0, 0.0], 0), Row([9, 3], 1, [1], [0.0], 0), Row([9, 4, 5, 6], 1, [1, 1, 1], [0.0] * 3, 1)]
LOSS = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0], [4.0, 5.0, 6.0]])  # per-token losses
MASK = torch.tensor([[1.0, 1, 0], [1, 0, 0], [1, 1, 1]])


def aggregate(loss_type, max_length=4):
    stats = row_stats(ROWS, {0: 3, 1: 3}, max_length)
    w = torch.tensor(POLICY_LOSSES.get(loss_type).row_weights(stats)).unsqueeze(1)
    return float((LOSS * MASK * w).sum())


@pytest.mark.parametrize("loss_type, expected", [
    ("grpo", ((1 + 2) / 2 + 3 / 1 + (4 + 5 + 6) / 3) / 3),      # sequence means, then mean over rows
    ("dapo", (1 + 2 + 3 + 4 + 5 + 6) / 6),                      # one token mean over the whole step
    ("dr_grpo", (1 + 2 + 3 + 4 + 5 + 6) / (3 * 4)),             # sum / (rows × max length)
    ("delethink", ((1 + 2 + 3) / 3 + (4 + 5 + 6) / 3) / 2),     # per-trace token mean, then mean over traces
    ("cispo", (1 + 2 + 3 + 4 + 5 + 6) / 6),                     # token mean over the step, as MiniMax-M1
])
def test_aggregation_matches_hand_computation(loss_type, expected):
    assert aggregate(loss_type) == pytest.approx(expected)


def test_dapo_normaliser_spans_micro_batches(tmp_path):
    """Two trainers, same seed and same collected batch, micro_batch_size 1 vs 16: one dapo step gives the same loss
    and the same updated weights, since the token count that normalises it is the whole step's, not each
    micro-batch's (with a per-micro-batch count, rows of 1 token would weigh as much as rows of 64)."""
    import copy

    from thinkgym.agents.learner.trainer import GRPOTrainer

    def trainer(micro_batch_size):
        return GRPOTrainer(GRPOConfig(env="DelethinkDemo-v0", model="tiny", output_dir=str(tmp_path / f"mb{micro_batch_size}"),
                                      steps=1, prompts_per_step=2, num_generations=3, micro_batch_size=micro_batch_size,
                                      learning_rate=1e-3, eval_every=0, save_every=0, reward="", loss_type="dapo"))

    one, whole = trainer(1), trainer(16)
    batch = one.collect_step()[0]
    rewards = np.array([1.0, 0.0, 0.0, 2.0, 5.0, 8.0])  # variance in both groups
    lengths = [sum(r.loss_mask) for r in batch.rows]
    assert len(lengths) > 1 and len(set(lengths)) > 1  # the two trainers split unequal rows differently
    start = [p.detach().clone() for p in one.model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(start, whole.model.parameters()))
    results = []
    for tr in (one, whole):
        tr.collect_step = lambda: (copy.deepcopy(batch), rewards.copy(), {}, [], 0.0)
        results.append(tr.train_step()["loss"])
    assert results[0] == pytest.approx(results[1], rel=1e-5, abs=1e-7) and abs(results[1]) > 1e-4
    moved = 0.0
    for a, b, s in zip(one.model.parameters(), whole.model.parameters(), start):
        assert torch.allclose(a, b, rtol=0, atol=1e-5)
        moved = max(moved, float((b.detach() - s).abs().max()))
    assert moved > 1e-4  # the step did change the weights, by more than the tolerance


def test_clipped_surrogate_values():
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    old = torch.zeros(1, 3)
    pos, low, high = token_surrogate(logp, old, torch.tensor([2.0]), torch.ones(1, 3), 0.2, 0.28)
    # ratio 1.5 clipped to 1.28 for A>0; 0.5 stays (min picks the unclipped 0.5·A); 1.1 unclipped
    assert pos.tolist()[0] == pytest.approx([-1.28 * 2, -0.5 * 2, -1.1 * 2])
    assert high.tolist() == [[True, False, False]]
    neg, low, _ = token_surrogate(logp, old, torch.tensor([-1.0]), torch.ones(1, 3), 0.2, 0.28)
    # for A<0: min(ρA, clip(ρ)A) -> 1.5 stays, 0.5 clipped up to 0.8
    assert neg.tolist()[0] == pytest.approx([1.5, 0.8, 1.1])
    assert low.tolist() == [[False, True, False]]


def test_gspo_sequence_ratio():
    logp = torch.log(torch.tensor([[2.0, 0.5, 1.0]]))
    old = torch.zeros(1, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, _, high = sequence_surrogate(logp, old, torch.tensor([1.0]), mask, 0.2, 0.28)
    s = math.exp((math.log(2.0) + math.log(0.5)) / 2)  # = 1.0
    assert loss[0, 0].item() == pytest.approx(-s) and not high.any()
    loss, _, high = sequence_surrogate(torch.log(torch.tensor([[2.0, 2.0, 1.0]])), old, torch.tensor([1.0]), mask, 0.2, 0.28)
    assert loss[0, 0].item() == pytest.approx(-1.28) and high[0, 0]


def test_cispo_weights_are_clipped_and_never_drop_a_gradient():
    """∂loss/∂log π of each token is −sg(min(ρ, 1+ε_high))·A: a weight of ratio 3 counts as 1.28 (unclipped it would
    be 3), and a token past the clip still gets a gradient, which PPO's surrogate would have zeroed."""
    cispo = POLICY_LOSSES.get("cispo")
    old = torch.zeros(1, 3)
    ratios = torch.tensor([[3.0, 0.5, 1.1]])
    logp = torch.log(ratios).requires_grad_(True)
    loss, low, high = cispo.surrogate(logp, old, torch.tensor([2.0]), torch.ones(1, 3), 0.2, 0.28)
    loss.sum().backward()
    assert logp.grad.tolist()[0] == pytest.approx([-1.28 * 2, -0.5 * 2, -1.1 * 2])  # the weight stops the gradient
    assert high.tolist() == [[True, False, False]] and not low.any()
    ppo = logp.detach().clone().requires_grad_(True)
    token_surrogate(ppo, old, torch.tensor([2.0]), torch.ones(1, 3), 0.2, 0.28)[0].sum().backward()
    assert ppo.grad[0, 0] == 0 and logp.grad[0, 0] != 0


def test_a_loss_is_one_registration(tmp_path):
    """A new loss_type (surrogate and normalisation) is one registration, taken by the config and the trainer."""
    from thinkgym.agents.learner.trainer import GRPOTrainer

    calls = []

    def traced(*args):
        calls.append(args[0].shape)
        return token_surrogate(*args)

    POLICY_LOSSES.register("test_traced_dapo", PolicyLoss(traced, POLICY_LOSSES.get("dapo").row_weights))
    trainer = GRPOTrainer(GRPOConfig(env="DelethinkDemo-v0", model="tiny", output_dir=str(tmp_path / "run"), steps=1,
                                     prompts_per_step=1, num_generations=2, eval_every=0, save_every=0, loss_type="test_traced_dapo"))
    assert math.isfinite(trainer.train_step()["loss"]) and calls
    with pytest.raises(ValueError, match=r"loss_type='nope' is unknown; valid names: \[.*'cispo'"):
        GRPOConfig(loss_type="nope")


def test_advantages():
    r = np.array([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    a = ADVANTAGE_ESTIMATORS.get("grpo")(r, "none")
    assert a.tolist() == [[0.5, -0.5, -0.5, 0.5], [0, 0, 0, 0]]
    g = ADVANTAGE_ESTIMATORS.get("grpo")(r, "group")
    x = 0.5 / (0.5 + 1e-4)
    assert g[0] == pytest.approx([x, -x, -x, x])
    b = ADVANTAGE_ESTIMATORS.get("grpo")(r, "batch")
    assert b[0, 0] == pytest.approx(0.5 / (r.std() + 1e-4))
    loo = ADVANTAGE_ESTIMATORS.get("rloo")(np.array([[1.0, 0.0, 0.0]]), "group")
    assert loo[0].tolist() == pytest.approx([1 - 0, 0 - 0.5, 0 - 0.5])


def test_mgpo_weight_and_kl_estimator():
    w = mgpo_weight(np.array([0.5, 0.0, 1.0, 0.25]), lam=2.0)
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert w.tolist() == pytest.approx([1.0, 2 ** -2, 2 ** -2, math.exp(-2 * kl)])
    assert mgpo_weight(np.array([0.3]), 0.0)[0] == 1.0
    logp, ref = torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25]))
    assert k3_kl(logp, ref).item() == pytest.approx(0.5 - math.log(0.5) - 1)


@pytest.mark.parametrize("kwargs, name", [({"loss_type": "ppo2"}, "loss_type"), ({"engine": "tgi"}, "engine"),
                                          ({"advantage_estimator": "gae2"}, "advantage_estimator"),
                                          ({"scale_rewards": "std"}, "scale_rewards"), ({"steps": 0}, "steps")])
def test_config_rejects_unknown_names_and_lists_valid_ones(kwargs, name):
    with pytest.raises(ValueError, match=name) as err:
        GRPOConfig(**kwargs)
    if name in ("loss_type", "engine", "advantage_estimator"):
        assert "valid" in str(err.value)
