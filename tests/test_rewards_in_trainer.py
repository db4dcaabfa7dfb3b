"""Every registered reward inside GRPOTrainer.train_step on the tiny policy, and what the trainer gives
rewards: each sample's budget, AdaptThink's reference, openings and raw advantage, monitor rollouts."""

import math

import pytest

from thinkgym.agents.learner.config import GRPOConfig
from thinkgym.agents.learner.trainer import GRPOTrainer
from thinkgym.agents.types import MONITOR_SEED_BASE, TRAIN_SEED_BASE
from thinkgym.rewards import (ADAPTTHINK_FORCED_LOGPROB, NO_THINK, THINK, AdaptThink, CompositeReward, Sample,
                              adaptthink_correct, available_rewards, get_reward, parse_reward_spec)

# DelethinkDemo with two chunks: C + (I - 1)(C - m) = 64 + 32 = 96 tokens of thinking
DEMO_BUDGET = 96


def small_cfg(tmp_path, **kw):
    base = dict(env="DelethinkDemo-v0", env_kwargs={"max_chunks": 2}, model="tiny", output_dir=str(tmp_path / "run"),
                steps=1, prompts_per_step=2, num_generations=2, micro_batch_size=8, learning_rate=1e-3, eval_every=0,
                monitor_prompts=2, save_every=0, log_completions_every=0)
    base.update(kw)
    return GRPOConfig(**base)


def spec_for(name: str) -> str:
    """The reward alone, or on top of correctness where a rule of its method needs that (HAPO, LASER-DE)."""
    try:
        parse_reward_spec(name)
        return name
    except ValueError:
        return f"correctness + 0.5*{name}"


def prefixes_of(call) -> list | None:
    """The `prefixes` of a recorded `Collector.collect(seeds, prefixes)` call."""
    args, kwargs, _ = call
    return args[1] if len(args) > 1 else kwargs.get("prefixes")


def spy(record: list, fn):
    """`fn`, recording each call's arguments and result."""
    def wrapped(*args, **kwargs):
        out = fn(*args, **kwargs)
        record.append((args, kwargs, out))
        return out
    return wrapped


@pytest.mark.parametrize("name", available_rewards())
def test_every_registered_reward_trains_a_step(tmp_path, name):
    spec = spec_for(name)
    trainer = GRPOTrainer(small_cfg(tmp_path, reward=spec))
    metrics = trainer.train_step()
    assert all(math.isfinite(v) for v in metrics.values()), {k: v for k, v in metrics.items() if not math.isfinite(v)}
    for component in trainer.reward.weights:
        assert f"rewards/{component}/mean" in metrics


@pytest.mark.parametrize("env, kwargs, budget", [("DelethinkDemo-v0", {"max_chunks": 2}, DEMO_BUDGET),
                                                 ("LongCoT-v0", {"max_thinking_tokens": 40, "task_kwargs": {"n_terms": 4}}, 40)])
def test_samples_carry_the_budget_of_their_episode(tmp_path, env, kwargs, budget):
    """The whole thinking budget, not the first step's: Delethink's first chunk gets only C = 64."""
    trainer = GRPOTrainer(small_cfg(tmp_path, env=env, env_kwargs=kwargs, reward="correctness + 0.5*cosine"))
    *_, samples, _ = trainer.collect_step()
    assert [s.max_tokens for s in samples] == [budget] * 4


@pytest.mark.parametrize("env, kwargs", [("DelethinkDemo-v0", {}), ("LongCoT-v0", {"task_kwargs": {"n_terms": 4}})])
def test_samples_carry_the_siri_budget_of_their_step(tmp_path, env, kwargs):
    siri = {"l_min": 64, "l_max": 192, "period": 4, "shape": "stair"}  # 64 for steps 0-1, 192 for steps 2-3
    trainer = GRPOTrainer(small_cfg(tmp_path, env=env, env_kwargs=kwargs, siri=siri, reward="correctness - 0.1*overlong"))
    for step, budget in ((0, 64), (2, 192)):  # Delethink: C = 64 is one chunk; 64 + 4 * 32 = 192 is five
        trainer.step = step
        *_, samples, _ = trainer.collect_step()
        assert {s.max_tokens for s in samples} == {budget}


def test_adaptthink_reference_openings_and_raw_advantage(tmp_path):
    G = 4
    trainer = GRPOTrainer(small_cfg(tmp_path, reward="adaptthink(delta=0.05)", num_generations=G, train_prompts=3, steps=3))
    tok, adapt = trainer.policy.tokenizer, trainer.reward["adaptthink"]
    collects, references, steps, optimized = [], [], [], []
    trainer.collector.collect = spy(collects, trainer.collector.collect)
    adapt.set_reference = spy(references, lambda samples, real=adapt.set_reference: (real(samples), trainer.sched.last_epoch))
    trainer.collect_step = spy(steps, trainer.collect_step)
    trainer.optimize = spy(optimized, trainer.optimize)
    trainer.train_step()
    trainer.step += 1
    trainer.train_step()

    # the reference: free samples of every prompt of the pool, G each, from the weights RL starts from, once
    (((ref_samples,), _, (_, epoch)),) = references
    pool = [TRAIN_SEED_BASE + i for i in range(3)]
    assert epoch == 0 and sorted(s.prompt_id for s in ref_samples) == sorted(pool * G)
    assert set(adapt.reference) == set(pool) and "adaptthink/reference_accuracy" in trainer.reward.metrics()
    free = [c for c in collects if prefixes_of(c) is None]
    assert sum(len(c[2].episodes) for c in free) == 3 * G

    # training groups: half open with an immediately closed think block, half with "Alright"
    nothink, alright = tok.encode("</think>", add_special_tokens=False), tok.encode("Alright", add_special_tokens=False)
    forced = [c for c in collects if c not in free]
    assert len(forced) == 2 and all(prefixes_of(c) == [nothink, nothink, alright, alright] for c in forced)
    batch, rewards, _, samples, _ = steps[0][2]
    for i, (ep, s) in enumerate(zip(batch.episodes, samples)):
        opening = nothink if i % G < G // 2 else alright
        assert ep.steps[0].action_ids[:len(opening)] == opening
        assert s.think_mode == (NO_THINK if i % G < G // 2 else THINK)

    # the reward is the advantage: no group normalisation
    assert rewards == pytest.approx([adapt.delta * (s.think_mode == NO_THINK) + adaptthink_correct(s)
                                     - adapt.reference[s.prompt_id] for s in samples])
    assert trainer.advantages(batch, rewards) == pytest.approx(rewards)

    # the ratio's denominator of an opening is the importance-sampling distribution's: 1/2, then 1
    (rows, _), _, _ = optimized[0]
    first = {}
    for r in rows:
        first.setdefault(r.episode, r)
    for e, r in first.items():
        opening = nothink if e % G < G // 2 else alright
        assert r.old_logprobs[:len(opening)] == [ADAPTTHINK_FORCED_LOGPROB] + [0.0] * (len(opening) - 1)
        assert r.old_logprobs[len(opening)] < 0.0  # sampled by the policy


def test_adaptthink_refuses_what_it_cannot_do(tmp_path):
    with pytest.raises(ValueError, match="even integer"):
        GRPOTrainer(small_cfg(tmp_path, reward="adaptthink", num_generations=3))
    with pytest.raises(ValueError, match="dynamic_sampling"):
        GRPOTrainer(small_cfg(tmp_path, reward="adaptthink", dynamic_sampling=True))
    twice = CompositeReward([("a", 1.0, AdaptThink()), ("b", 1.0, AdaptThink(think_opener="Hmm"))], "a + b")
    with pytest.raises(ValueError, match=r"\['a', 'b'\] each force the response openings"):
        twice.openings(2)


def test_monitored_reward_updates_from_the_monitor_set_at_its_cadence(tmp_path):
    reward = "correctness + 0.5*laser_d(target_length=16, max_length=96, interval=16, monitor_every=2)"
    trainer = GRPOTrainer(small_cfg(tmp_path, reward=reward, monitor_prompts=3, eval_prompts=4))
    updates = []
    laser = trainer.reward["laser_d"]
    laser.update = spy(updates, laser.update)
    for step in range(4):
        trainer.step = step
        trainer.train_step()
    monitors = [args[1] for args, _, _ in updates]
    assert [m is not None for m in monitors] == [True, False, True, False]
    monitor_set = [MONITOR_SEED_BASE + i for i in range(3)]
    for m in monitors[::2]:
        assert sorted(s.prompt_id for s in m) == sorted(monitor_set * 2) and {s.max_tokens for s in m} == {DEMO_BUDGET}
    training = {s.prompt_id for args, _, _ in updates for s in args[0]}
    assert not training & set(monitor_set) and min(monitor_set) >= trainer.cfg.eval_prompts
    assert not math.isnan(laser.coverage["hard"])  # recomputed (NaN before the first monitor pass)
    off = GRPOTrainer(small_cfg(tmp_path / "off", reward=reward, monitor_prompts=0))
    off_updates = []
    off.reward["laser_d"].update = spy(off_updates, off.reward["laser_d"].update)
    off.train_step()
    assert off_updates[0][0][1] is None  # no monitor set: LASER-D recomputes from the step's own rollouts


def test_overlong_buffer_follows_the_budget():
    """DAPO's 4096 of 20480: a fifth of L_max unless given, so a small budget is not penalised throughout."""
    r = get_reward("overlong")
    assert r([Sample("x", n, correct=True, max_tokens=100) for n in (80, 90, 100)]) == pytest.approx([0.0, -0.5, -1.0])
    with pytest.raises(ValueError, match="exceeds the sample's budget"):
        get_reward("overlong", buffer=200)([Sample("x", 1, correct=True, max_tokens=100)])
