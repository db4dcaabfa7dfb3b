"""`GRPOTrainer` branches that had no trainer-level test, each checked through `train_step` on the tiny policy:
truncation masking, warm-up LR schedules, several passes over a batch, gradient checkpointing, the `rloo` and
`raw` advantage estimators, and dynamic sampling's re-indexing; plus R2R's DIVERGENT labels.

Trainers built with the same seed start from the same weights; a test collects one batch once (module fixture)
and hands each trainer its own deep copy through a stubbed `collect_step`, so compared runs see the same rows.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch

import thinkgym.agents.learner.trainer as grpo
from thinkgym.agents.learner.config import GRPOConfig
from thinkgym.agents.learner.trainer import GRPOTrainer
from thinkgym.agents.types import TRAIN_SEED_BASE

G = 3  # num_generations of the shared batch: 2 prompts x 3 rollouts
REWARDS = np.array([1.0, 0.0, 0.0, 2.0, 5.0, 8.0])  # a known reward matrix [[1, 0, 0], [2, 5, 8]] with variance in both groups


def make_cfg(tmp_path, **kw) -> GRPOConfig:
    base = dict(env="DelethinkDemo-v0", model="tiny", output_dir=str(tmp_path / "run"), steps=1, prompts_per_step=2,
                num_generations=G, micro_batch_size=32, learning_rate=1e-3, eval_every=0, save_every=0, reward="",
                loss_type="dapo")
    base.update(kw)
    return GRPOConfig(**base)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """One real batch of DelethinkDemo rollouts from the seed-0 tiny policy (several chunk rows per episode)."""
    tr = GRPOTrainer(make_cfg(tmp_path_factory.mktemp("collect")))
    batch, *_ = tr.collect_step()
    assert len(batch.episodes) == 2 * G and len(batch.rows) > len(batch.episodes)  # multi-row episodes
    return batch


def feed(trainer: GRPOTrainer, batch, rewards=REWARDS):
    """Make every `train_step` of `trainer` train on its own deep copy of `batch` with `rewards`; return the list
    of batches handed out."""
    handed = []

    def collect_step():
        b = copy.deepcopy(batch)
        handed.append(b)
        return b, np.array(rewards, dtype=float), {}, [], 0.0

    trainer.collect_step = collect_step
    return handed


def params(trainer: GRPOTrainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.parameters()]


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def spy(obj, name: str, what, keep_result: bool = False) -> list:
    """Wrap the method `obj.name`: record `what(*args)` (or the result) of each call, then behave as before."""
    seen, real = [], getattr(obj, name)

    def wrapper(*args):
        out = real(*args)
        seen.append(out if keep_result else what(*args))
        return out

    setattr(obj, name, wrapper)
    return seen


def record_micro_batches(monkeypatch, trainer: GRPOTrainer) -> list[dict]:
    """Record, per forward of `_backward`, the rows, their padded batch and what the trainer's loss surrogate got and gave."""
    calls: list[dict] = []
    real_pad, real_sur = grpo.pad_rows, trainer.loss.surrogate

    def pad_rows(rows, *a, **kw):
        rb = real_pad(rows, *a, **kw)
        calls.append({"rows": list(rows), "rb": rb})
        return rb

    def surrogate(logp, old, adv, mask, lo, hi):
        loss, low, high = real_sur(logp, old, adv, mask, lo, hi)
        calls[-1].update(logp=logp.detach().clone(), old=old.clone(), adv=adv.detach().clone(), low=low.clone(), high=high.clone())
        return loss, low, high

    monkeypatch.setattr(grpo, "pad_rows", pad_rows)
    trainer.loss = dataclasses.replace(trainer.loss, surrogate=surrogate)
    return calls


# -- mask_truncated_completions -----------------------------------------------------------------------

TRUNCATED = [False, False, True, False, True, False]  # one truncated rollout in each group


def with_truncation(batch):
    b = copy.deepcopy(batch)
    for ep, t in zip(b.episodes, TRUNCATED):
        ep.truncated, ep.terminated = t, not t
    return b


def test_truncated_episodes_contribute_no_gradient(tmp_path, collected):
    """With `mask_truncated_completions` the step equals a step on the other rollouts' rows alone (same advantages:
    the truncated rollouts still count in their group's baseline), and differs from a step that trains on them."""
    batch = with_truncation(collected)
    masked = GRPOTrainer(make_cfg(tmp_path / "m", mask_truncated_completions=True))
    handed = feed(masked, batch)
    m_masked = masked.train_step()

    without = copy.deepcopy(batch)
    without.rows = [r for r in without.rows if not TRUNCATED[r.episode]]
    reference = GRPOTrainer(make_cfg(tmp_path / "r"))
    feed(reference, without)
    m_ref = reference.train_step()
    assert m_masked["loss"] == pytest.approx(m_ref["loss"], rel=1e-5, abs=1e-7)
    assert max_diff(params(masked), params(reference)) < 1e-5

    unmasked = GRPOTrainer(make_cfg(tmp_path / "u"))
    start = params(unmasked)
    feed(unmasked, batch)
    unmasked.train_step()
    assert max_diff(params(unmasked), params(masked)) > 1e-4  # the truncated rows would have moved the weights
    assert max_diff(params(masked), start) > 1e-4  # and the masked step did train
    trunc_rows = [r for r in handed[0].rows if TRUNCATED[r.episode]]
    assert trunc_rows and all(sum(r.loss_mask) == 0 for r in trunc_rows)  # every chunk row of theirs is masked


# -- learning-rate schedules ----------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_lr_follows_warmup_then_decay_at_every_optimizer_step(tmp_path, collected, schedule):
    """2 steps x 2 iterations x 2 minibatches = 8 optimizer steps, 3 of warm-up: the LR each `opt.step` uses is
    base·(s+1)/3 for s < 3, then decays over the remaining 5 steps to 0 after the last one."""
    base = 1e-3
    tr = GRPOTrainer(make_cfg(tmp_path, steps=2, num_iterations=2, minibatches=2, warmup_steps=3, lr_scheduler=schedule,
                              learning_rate=base))
    feed(tr, collected)
    used = []  # the LR in force at each optimizer step. Not a step hook: once torch has patched AdamW.step for
    step = tr.opt.step  # another optimizer in the process, MasterAdamW's hooks run twice per step.

    def recording_step(*args, **kwargs):
        used.append(tr.opt.param_groups[0]["lr"])
        return step(*args, **kwargs)

    tr.opt.step = recording_step
    logged = [tr.train_step()["learning_rate"] for _ in range(2)]
    decay = {"linear": lambda f: 1 - f, "cosine": lambda f: 0.5 * (1 + math.cos(math.pi * f))}[schedule]
    expected = [base * (s + 1) / 3 for s in range(3)] + [base * decay((s - 3) / 5) for s in range(3, 8)]
    assert used == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert logged == pytest.approx([expected[4], 0.0], abs=1e-15)  # the LR the next step would use
    assert tr.sched.last_epoch == 8


# -- num_iterations > 1 ----------------------------------------------------------------------------------

def test_later_iterations_use_the_collected_behaviour_logprobs(tmp_path, collected, monkeypatch):
    """With μ = 3 passes over one batch, every pass's ratio is against the log-probs the engine collected: the first
    pass (before any update) sees ratio 1, later passes see the moved policy, ratios far from 1, and clipping."""
    tr = GRPOTrainer(make_cfg(tmp_path, num_iterations=3, learning_rate=5e-2))
    handed = feed(tr, collected)
    calls = record_micro_batches(monkeypatch, tr)
    metrics = tr.train_step()
    assert len(calls) == 3  # one micro-batch per pass
    rows = handed[0].rows
    position = {id(r): i for i, r in enumerate(rows)}
    for c in calls:
        assert sorted(map(id, c["rows"])) == sorted(map(id, rows))
        mask = c["rb"].loss_mask.bool()
        collected_old = torch.zeros_like(c["old"])
        for i, r in enumerate(c["rows"]):
            src = collected.rows[position[id(r)]]
            collected_old[i, :len(src.old_logprobs)] = torch.tensor(src.old_logprobs)
        assert torch.equal(c["old"], collected_old)  # the behaviour log-probs are the collected ones, every pass
        c["dev"] = float((c["logp"] - c["old"])[mask].abs().max())
        c["clipped"] = int(((c["low"] | c["high"]) & mask).sum())
    assert calls[0]["dev"] < 1e-4 and calls[0]["clipped"] == 0  # engine and trainer agree before the update
    assert calls[1]["dev"] > 0.1 and calls[2]["dev"] > 0.1
    assert calls[1]["clipped"] + calls[2]["clipped"] > 0
    assert metrics["clip_ratio/region_mean"] > 0


# -- gradient checkpointing -------------------------------------------------------------------------------

def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tmp_path, collected, monkeypatch):
    """Same batch, same seed: the step with checkpointing has the loss, gradients and updated weights of the step
    without, and it did recompute each decoder layer in the backward pass (twice the layer forwards)."""
    runs = {}
    for gc in (False, True):
        tr = GRPOTrainer(make_cfg(tmp_path / str(gc), gradient_checkpointing=gc, micro_batch_size=8))
        feed(tr, collected)
        calls = [0]
        layer_cls = type(tr.model.model.layers[0])
        real_forward = layer_cls.forward

        def counting_forward(self, *a, _calls=calls, _forward=real_forward, **kw):
            _calls[0] += 1
            return _forward(self, *a, **kw)

        monkeypatch.setattr(layer_cls, "forward", counting_forward)
        metrics = tr.train_step()
        monkeypatch.setattr(layer_cls, "forward", real_forward)
        grads = [p.grad.detach().clone() for p in tr.model.parameters()]
        runs[gc] = metrics, grads, params(tr), calls[0]
    assert runs[True][3] == 2 * runs[False][3] > 0  # checkpointing really recomputed every layer in the backward
    assert runs[True][0]["loss"] == pytest.approx(runs[False][0]["loss"], rel=1e-5, abs=1e-7)
    for a, b in zip(runs[True][1], runs[False][1]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    assert sum(float(g.abs().sum()) for g in runs[True][1]) > 0
    assert max_diff(runs[True][2], runs[False][2]) < 1e-5


# -- advantage estimators ----------------------------------------------------------------------------------

@pytest.mark.parametrize("estimator, expected", [
    # r_i minus the mean of the group's other two rewards
    ("rloo", [1 - 0, 0 - 0.5, 0 - 0.5, 2 - 6.5, 5 - 5, 8 - 3.5]),
    # the reward itself
    ("raw", [1.0, 0.0, 0.0, 2.0, 5.0, 8.0]),
])
def test_advantage_estimator_through_the_trainer(tmp_path, collected, monkeypatch, estimator, expected):
    """The trainer's advantages for the known reward matrix, and the advantage each trained row carries (its
    rollout's); `scale_rewards` (left at `group`) does not apply to these estimators."""
    tr = GRPOTrainer(make_cfg(tmp_path, advantage_estimator=estimator, micro_batch_size=8))
    handed = feed(tr, collected)
    seen = spy(tr, "optimize", lambda rows, adv: adv.copy())
    calls = record_micro_batches(monkeypatch, tr)
    tr.train_step()
    assert len(seen) == 1 and seen[0].tolist() == pytest.approx(expected)
    n_rows = 0
    for c in calls:
        want = [expected[r.episode] for r in c["rows"]]
        assert c["adv"].tolist() == pytest.approx(want)
        n_rows += len(c["rows"])
    assert n_rows == len(handed[0].rows) and len(calls) > 1


# -- dynamic sampling ----------------------------------------------------------------------------------------

def seed_rewards(flat_seeds):
    """A stub `score`: the groups of `flat_seeds` get equal rewards (dropped), the others 0, 1, 2 by position."""
    def score(batch):
        r = np.array([1.0 if ep.seed in flat_seeds else float(i % G) for i, ep in enumerate(batch.episodes)])
        return r, {"stub": (r * 10).tolist()}, []
    return score


def recording_collect(tr):
    rounds = []
    real = tr.collector.collect

    def collect(seeds, *a, **kw):
        b = real(seeds, *a, **kw)
        rounds.append((list(seeds), b))
        return b

    tr.collector.collect = collect
    return rounds


def test_dynamic_sampling_keeps_groups_with_variance_and_reindexes_their_rows(tmp_path, monkeypatch):
    """3 prompts a step, G = 3. Round 0 (seeds +0..+2): the group of +1 has no variance, keep groups 0 and 2.
    Round 1 (+3..+5): +3 is flat, +4 fills the quota, +5 is never looked at. The step's rows must point at
    their own rollouts in the pooled batch: round-0 group 2 moves from episodes 6-8 to 3-5, round-1 group 1
    from 3-5 to 6-8."""
    tr = GRPOTrainer(make_cfg(tmp_path, prompts_per_step=3, dynamic_sampling=True, max_resample_rounds=2))
    s0 = TRAIN_SEED_BASE
    tr.score = seed_rewards({s0 + 1, s0 + 3})
    rounds = recording_collect(tr)
    out = spy(tr, "collect_step", lambda: None, keep_result=True)
    seen = spy(tr, "optimize", lambda rows, adv: adv.copy())
    calls = record_micro_batches(monkeypatch, tr)
    metrics = tr.train_step()

    batch, rewards, comps, _, dropped = out[0]
    assert [s for s, _ in rounds] == [[s0, s0 + 1, s0 + 2], [s0 + 3, s0 + 4, s0 + 5]]  # quota full after round 1
    kept = [(0, 0), (0, 2), (1, 1)]  # (round, group)
    src_eps = [rounds[k][1].episodes[g * G + j] for k, g in kept for j in range(G)]
    assert len(batch.episodes) == 9 and all(a is b for a, b in zip(batch.episodes, src_eps))
    assert [ep.seed for ep in batch.episodes] == [s0] * 3 + [s0 + 2] * 3 + [s0 + 4] * 3
    src_rows = [(k, r) for k, g in kept for r in rounds[k][1].rows if g * G <= r.episode < (g + 1) * G]
    assert len(batch.rows) == len(src_rows)
    for new, (k, old) in zip(batch.rows, src_rows):
        assert (new.input_ids, new.prompt_len, new.loss_mask, new.old_logprobs) == \
            (old.input_ids, old.prompt_len, old.loss_mask, old.old_logprobs)
        assert batch.episodes[new.episode] is rounds[k][1].episodes[old.episode]
    assert sorted({r.episode for r in batch.rows}) == list(range(9))
    assert rewards.tolist() == [0.0, 1.0, 2.0] * 3 and comps == {"stub": [0.0, 10.0, 20.0] * 3} and dropped == 0.0
    assert metrics["frac_groups_dropped"] == 0.0 and metrics["reward"] == pytest.approx(1.0)
    # the loss sees each row with its own rollout's advantage: negative, zero, positive by position in the group
    assert seen[0].reshape(3, G)[:, 0].max() < 0 and seen[0].reshape(3, G)[:, 2].min() > 0
    for c in calls:
        assert c["adv"].tolist() == pytest.approx([seen[0][r.episode] for r in c["rows"]])


def test_dynamic_sampling_stops_after_max_resample_rounds(tmp_path):
    """Only one group in three rounds has variance: the step keeps it alone and reports half the step dropped."""
    tr = GRPOTrainer(make_cfg(tmp_path, prompts_per_step=2, dynamic_sampling=True, max_resample_rounds=2))
    s0 = TRAIN_SEED_BASE
    tr.score = seed_rewards(set(range(s0, s0 + 6)) - {s0 + 3})
    rounds = recording_collect(tr)
    batch, rewards, _, _, dropped = tr.collect_step()
    assert [s for s, _ in rounds] == [[s0, s0 + 1], [s0 + 2, s0 + 3], [s0 + 4, s0 + 5]]
    assert all(a is b for a, b in zip(batch.episodes, rounds[1][1].episodes[G:]))
    assert len(batch.episodes) == G and {batch.episodes[r.episode].seed for r in batch.rows} == {s0 + 3}
    src = [r for r in rounds[1][1].rows if r.episode >= G]
    assert len(batch.rows) == len(src)
    assert all(batch.episodes[a.episode] is rounds[1][1].episodes[b.episode] and a.input_ids == b.input_ids
               for a, b in zip(batch.rows, src))
    assert rewards.tolist() == [0.0, 1.0, 2.0] and dropped == pytest.approx(0.5)


def test_dynamic_sampling_step_reports_the_rollout_time_of_every_round(tmp_path):
    """`time/rollout_s` is the step's time spent generating: with dynamic sampling, every round's."""
    tr = GRPOTrainer(make_cfg(tmp_path, prompts_per_step=1, dynamic_sampling=True, max_resample_rounds=1))
    tr.score = seed_rewards({TRAIN_SEED_BASE})  # round 0's group is flat, round 1's is kept
    rounds = recording_collect(tr)
    metrics = tr.train_step()
    assert len(rounds) == 2 and metrics["frac_groups_dropped"] == 0.0
    per_round = [b.stats["time/rollout_s"] for _, b in rounds]
    assert min(per_round) > 0
    assert metrics["time/rollout_s"] == pytest.approx(sum(per_round))
    tokens = sum(b.stats["generated_tokens"] for _, b in rounds)
    assert metrics["rollout_tokens_per_s"] == pytest.approx(tokens / sum(per_round))
