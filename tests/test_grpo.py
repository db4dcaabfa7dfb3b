"""The GRPO learner end to end on the tiny policy: TensorBoard tags, exact resume, gradient sign,
non-finite losses, and the CLI's errors."""

import json
import subprocess
import sys
from dataclasses import fields

import numpy as np
import pytest
import torch

from thinkgym.agents.cli import main
from thinkgym.agents.learner.config import GRPOConfig
from thinkgym.agents.learner.trainer import GRPOTrainer, NonFiniteLossError
from thinkgym.agents.plot import plot_run, read_scalars
from thinkgym.agents.types import Row
from thinkgym.rewards import REWARDS, register_reward


@register_reward("count_sevens")
def count_sevens(sample, **_):
    """A test reward with variance even for an untrained policy: how many 7s it wrote."""
    return float(sample.text.count("7"))


def small_cfg(tmp_path, **kw):
    base = dict(env="DelethinkDemo-v0", model="tiny", output_dir=str(tmp_path / "run"), steps=2, prompts_per_step=2,
                num_generations=3, micro_batch_size=4, learning_rate=1e-3, eval_every=1, eval_prompts=2, eval_samples=2,
                eval_temperature=1.0, log_completions_every=1, save_every=1, reward="count_sevens + correctness")
    base.update(kw)
    return GRPOConfig(**base)


EXPECTED_TAGS = {"reward", "reward_std", "frac_reward_zero_std", "rewards/count_sevens/mean", "rewards/correctness/mean",
                 "completions/mean_length", "completions/clipped_ratio", "entropy", "clip_ratio/low_mean", "clip_ratio/high_mean",
                 "clip_ratio/region_mean", "learning_rate", "grad_norm", "loss", "eval/accuracy", "eval/pass@1", "eval/pass@2",
                 "delethink/chunks_mean", "delethink/thinking_tokens_mean", "time/rollout_s", "time/train_s",
                 "rollout_tokens_per_s", "train_tokens_per_s", "success_by_difficulty/n_terms=8"}


def test_training_writes_the_expected_tensorboard_tags(tmp_path):
    cfg = small_cfg(tmp_path, loss_type="grpo", steps=1, beta=0.01, entropy_coef=0.001, mgpo_lambda=1.0)
    GRPOTrainer(cfg).train()
    tags = set(read_scalars(cfg.output_dir))
    missing = (EXPECTED_TAGS | {"kl"}) - tags
    assert not missing, f"missing tags: {sorted(missing)}"
    assert plot_run(cfg.output_dir).exists()


@pytest.mark.parametrize("loss_type", ["dapo", "dr_grpo", "delethink", "gspo", "cispo"])
def test_every_loss_type_trains_a_step(tmp_path, loss_type):
    trainer = GRPOTrainer(small_cfg(tmp_path, loss_type=loss_type, eval_every=0, prompts_per_step=1))
    metrics = trainer.train_step()
    assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0


def test_resume_continues_exactly(tmp_path):
    full = GRPOTrainer(small_cfg(tmp_path / "a", steps=3, eval_every=0))
    full.train()
    losses_full = dict(read_scalars(full.cfg.output_dir)["loss"])
    first = GRPOTrainer(small_cfg(tmp_path / "b", steps=2, eval_every=0))
    first.train()
    resumed = GRPOTrainer(small_cfg(tmp_path / "b", steps=3, eval_every=0, resume=True))
    resumed.train()
    losses_resumed = dict(read_scalars(resumed.cfg.output_dir)["loss"])
    assert resumed.step == 3 and losses_full[3] != 0.0
    assert losses_resumed[3] == pytest.approx(losses_full[3], rel=1e-5, abs=1e-7)
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_sft_runs_once_and_checkpoint_0_holds_rls_starting_weights(tmp_path):
    """An explicit warm start followed by train() (what the demo does), then a resumed run: one SFT pass
    in all (its loss logged once), and checkpoint-0 is exactly the policy that GRPO's first step starts from."""
    from thinkgym.agents.policy import Policy

    cfg = small_cfg(tmp_path, sft_steps=2, sft_seeds=4, steps=1, eval_every=0, save_every=0)
    trainer = GRPOTrainer(cfg)
    trainer.warm_start()
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(RuntimeError, match="already warm-started"):
        trainer.warm_start()
    trainer.train()
    assert [s for s, _ in read_scalars(cfg.output_dir)["sft/loss"]] == [0]  # logged every 10 steps: once per pass
    saved = Policy.from_pretrained(str(tmp_path / "run" / "checkpoint-0" / "policy")).model.state_dict()
    assert all(torch.equal(saved[k], v) for k, v in start.items())
    assert any(not torch.equal(v, trainer.model.state_dict()[k]) for k, v in start.items())  # RL moved on from there
    GRPOTrainer(small_cfg(tmp_path, sft_steps=2, sft_seeds=4, steps=2, eval_every=0, save_every=0, resume=True)).train()
    assert [s for s, _ in read_scalars(cfg.output_dir)["sft/loss"]] == [0]  # logged every 10 steps: once per pass


def test_the_kl_reference_is_the_warm_started_policy_also_after_resume(tmp_path):
    """With beta > 0 the KL is measured against the weights RL starts from: the warm start's, not the init's."""
    cfg = small_cfg(tmp_path, sft_steps=2, sft_seeds=4, steps=1, eval_every=0, save_every=1, beta=0.1)
    trainer = GRPOTrainer(cfg)
    trainer.warm_start()
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert all(torch.equal(trainer.ref_model.state_dict()[k], v) for k, v in start.items())
    trainer.train()
    resumed = GRPOTrainer(small_cfg(tmp_path, sft_steps=2, sft_seeds=4, steps=2, eval_every=0, beta=0.1, resume=True))
    assert resumed.load()
    assert all(torch.equal(resumed.ref_model.state_dict()[k], v) for k, v in start.items())


@pytest.mark.parametrize("accuracies, steps, passed", [([0.5, 0.9], 3, True), ([0.1, 0.2, 0.3, 0.4], 5, False)])
def test_the_warm_start_gate_trains_on_in_rounds_until_it_passes_or_the_cap(tmp_path, accuracies, steps, passed):
    """Below its gate SFT goes on in rounds (2 steps, then 1 a round) until the validation accuracy reaches
    the gate or the cap of 5 steps; the verdict is logged and written, and RL starts from where it stopped."""
    from thinkgym.agents.plot import read_scalars

    cfg = small_cfg(tmp_path, sft_steps=2, sft_seeds=4, sft_gate=0.8, sft_gate_round=1, sft_max_steps=5, steps=1, eval_every=0)
    trainer = GRPOTrainer(cfg)
    measured = iter(accuracies)
    trainer.gate_accuracy = lambda env_id, env_kwargs: next(measured)
    trainer.warm_start()
    report = json.loads((tmp_path / "run" / "warm_start.json").read_text())
    last = accuracies[steps - 2]
    assert report == trainer.warm_start_report == {"sft_steps": steps, "gate": 0.8, "gate_prompts": 64, "gate_accuracy": last,
                                                   "gate_accuracies": {"DelethinkDemo-v0": last}, "passed": passed}
    assert [s for s, _ in read_scalars(cfg.output_dir)["sft/gate_accuracy"]] == list(range(2, steps + 1))
    assert max(s for s, _ in read_scalars(cfg.output_dir)["sft/loss"]) == steps - 1  # later rounds log after the first


LONGCOT_192 = {"LongCoT-v0": {"max_thinking_tokens": 192, "task_kwargs": {"n_terms": 8}}}  # the demo's sums


def test_the_warm_start_trains_on_the_demonstrations_of_every_format(tmp_path, monkeypatch):
    """`sft_extra_envs` adds the same seeds' demonstrations in LongCoT-v0 to the Delethink chunks: one whole
    trace per seed, longer than any chunk (a Delethink-only start never saw a context past one chunk)."""
    from thinkgym.agents.learner import run

    trained = []
    monkeypatch.setattr(run, "train_sft", lambda policy, rows, **_: trained.append(rows))
    alone = GRPOTrainer(small_cfg(tmp_path, sft_steps=1, sft_seeds=6))
    alone.warm_start()
    both = GRPOTrainer(small_cfg(tmp_path, sft_steps=1, sft_seeds=6, sft_extra_envs=LONGCOT_192))
    both.warm_start()
    chunks, mixed = trained
    longcot = mixed[len(chunks):]
    assert mixed[:len(chunks)] == chunks and len(longcot) == 6 and len(chunks) > 6  # a Delethink trace takes several chunks
    assert min(len(r.input_ids) for r in longcot) > max(len(r.input_ids) for r in chunks)
    # the same traces: a chunked and a whole copy of each seed's demonstration train on as many tokens
    assert sum(sum(r.loss_mask) for r in longcot) == sum(sum(r.loss_mask) for r in chunks)


def test_the_warm_start_gate_passes_only_when_every_format_does(tmp_path):
    """The gate is the least accuracy over the formats: Delethink at 0.9 with LongCoT at 0.5 goes on to the
    cap; each format's accuracy is logged and written beside the least."""
    from thinkgym.agents.plot import read_scalars

    cfg = small_cfg(tmp_path, sft_steps=1, sft_seeds=4, sft_gate=0.8, sft_gate_round=1, sft_max_steps=3, eval_every=0,
                    sft_extra_envs=LONGCOT_192)
    trainer = GRPOTrainer(cfg)
    asked = []
    trainer.gate_accuracy = lambda env_id, env_kwargs: asked.append((env_id, env_kwargs)) or {"DelethinkDemo-v0": 0.9}.get(env_id, 0.5)
    trainer.warm_start()
    assert asked == [("DelethinkDemo-v0", cfg.env_kwargs), *LONGCOT_192.items()] * 3
    report = json.loads((tmp_path / "run" / "warm_start.json").read_text())
    assert report["passed"] is False and report["sft_steps"] == 3 and report["gate_accuracy"] == 0.5
    assert report["gate_accuracies"] == {"DelethinkDemo-v0": 0.9, "LongCoT-v0": 0.5}
    scalars = read_scalars(cfg.output_dir)
    assert [v for _, v in scalars["sft/gate_accuracy"]] == [v for _, v in scalars["sft/gate_accuracy/LongCoT-v0"]] == [0.5] * 3
    assert [v for _, v in scalars["sft/gate_accuracy/DelethinkDemo-v0"]] == pytest.approx([0.9] * 3)


@pytest.mark.parametrize("extra, needle", [
    ({"Nope-v0": {}}, r"sft_extra_envs: env ids \['Nope-v0'\] are not registered; registered thinkgym ids: \['Delethink-v0'"),
    ({"DelethinkDemo-v0": {}}, "sft_extra_envs must not name env='DelethinkDemo-v0'"),
    ({"LongCoT-v0": 192}, r"sft_extra_envs must map each env id to a mapping.*\['LongCoT-v0'\]"),
])
def test_sft_extra_envs_refuses_what_it_cannot_train_on(tmp_path, extra, needle):
    with pytest.raises(ValueError, match=needle):
        small_cfg(tmp_path, sft_extra_envs=extra)


def test_the_warm_start_gate_scores_its_own_validation_problems(tmp_path):
    """The gate's accuracy is greedy Delethink accuracy on seeds of its own range: a random tiny policy scores 0."""
    trainer = GRPOTrainer(small_cfg(tmp_path, sft_steps=1, sft_seeds=2, sft_gate=0.5, sft_gate_prompts=2, eval_every=0))
    trainer.warm_start()
    assert trainer.warm_start_report["gate_accuracy"] == 0.0 and trainer.warm_start_report["passed"] is False
    with pytest.raises(ValueError, match="sft_max_steps must be 0"):
        small_cfg(tmp_path, sft_steps=10, sft_max_steps=5)
    with pytest.raises(ValueError, match=r"sft_gate must be in \[0, 1\]"):
        small_cfg(tmp_path, sft_gate=1.5)


def test_checkpoints_are_bounded_and_resume_survives_a_damaged_pointer(tmp_path):
    import warnings

    from thinkgym.agents.learner.checkpoint import latest_checkpoint

    run = tmp_path / "run"
    GRPOTrainer(small_cfg(tmp_path, steps=4, save_every=1, eval_every=0, save_total_limit=2)).train()
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-0", "checkpoint-3", "checkpoint-4"]
    assert latest_checkpoint(run).name == "checkpoint-4"
    (run / "checkpoint-5").mkdir()  # a checkpoint cut off before its trainer state was written
    (run / "latest").write_text("checkpoint-5")
    with pytest.warns(UserWarning, match="newest complete one, checkpoint-4"):
        assert latest_checkpoint(run).name == "checkpoint-4"
    resumed = GRPOTrainer(small_cfg(tmp_path, steps=5, eval_every=0, resume=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resumed.train()
    assert resumed.step == 5
    with pytest.warns(UserWarning, match="no checkpoint in .* starting a fresh run"):
        GRPOTrainer(small_cfg(tmp_path / "empty", steps=1, eval_every=0, resume=True)).train()
    with pytest.raises(ValueError, match="save_total_limit"):
        small_cfg(tmp_path, save_total_limit=-1)


def test_gradient_raises_the_rewarded_sample(tmp_path):
    trainer = GRPOTrainer(small_cfg(tmp_path, learning_rate=1e-2, loss_type="grpo", reward=""))
    tok = trainer.policy.tokenizer
    prompt, good, bad = tok.encode("Add: 1 2\n"), tok.encode("1+2=3"), tok.encode("1+2=9")

    def logp(ids):
        seq = torch.tensor([prompt + ids])
        with torch.no_grad():
            lp = torch.log_softmax(trainer.model(seq).logits[0, len(prompt) - 1:-1].float(), -1)
        return float(lp.gather(-1, torch.tensor(ids).unsqueeze(-1)).sum())

    before = logp(good), logp(bad)
    rows = [Row(prompt + ids, len(prompt), [1] * len(ids), [0.0] * len(ids), i) for i, ids in enumerate((good, bad))]
    for r, ids in zip(rows, (good, bad)):
        seq = torch.tensor([prompt + ids])
        with torch.no_grad():
            lp = torch.log_softmax(trainer.model(seq).logits[0, len(prompt) - 1:-1].float(), -1)
        r.old_logprobs = lp.gather(-1, torch.tensor(ids).unsqueeze(-1)).squeeze(-1).tolist()
    trainer.optimize(rows, np.array([1.0, -1.0]))
    after = logp(good), logp(bad)
    assert after[0] > before[0] and after[1] < before[1]


def test_nonfinite_losses_are_skipped_then_stop_the_run(tmp_path):
    """A broken reward (NaN) makes every advantage and the loss NaN. It registers here, at run time, so that the
    tests that train on every registered reward (collected before) never see it."""
    if "test_nan_reward" not in REWARDS:
        register_reward("test_nan_reward")(lambda sample: float("nan"))
    trainer = GRPOTrainer(small_cfg(tmp_path, max_nonfinite_steps=2, eval_every=0, reward="test_nan_reward"))
    snapshot = [p.detach().clone() for p in trainer.model.parameters()]
    metrics = trainer.train_step()
    assert trainer.nonfinite_total == 1 and metrics["nonfinite_skipped"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(snapshot, trainer.model.parameters()))
    with pytest.raises(NonFiniteLossError, match="2 optimizer steps in a row"):
        trainer.train_step()


@pytest.mark.parametrize("command", ["train", "sft", "eval", "sample", "redi", "plot"])
def test_every_flag_of_every_command_has_help(command):
    """`--help` documents each flag; train's come from the GRPOConfig field docstrings, with defaults."""
    import argparse

    from thinkgym.agents.cli import build_parser
    from thinkgym.agents.learner.config import field_docs

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    undocumented = [a.dest for a in sub._actions if not a.help]
    assert not undocumented
    if command == "train":
        text = sub.format_help()
        docs = field_docs()
        assert len(docs) == len(fields(GRPOConfig))
        for name in ("learning_rate", "scale_rewards", "loss_type", "sft_extra_envs"):
            assert " ".join(docs[name].split()[:4]) in " ".join(text.split())
        assert "(default: 1e-06)" in " ".join(text.split())


@pytest.mark.parametrize("args, needle", [(["--loss-type", "ppo9"], "valid names"), (["--env", "Nope-v0"], "not registered"),
                                          (["--sft-extra-envs", '{"Nope-v0": {}}'], "not registered"),
                                          (["--engine", "tgi"], "engine='tgi' is unknown; valid names: ['hf', 'vllm']"),
                                          (["--scale-rewards", "std"], "valid: ['group', 'batch', 'none']"), (["--bogus", "1"], "unrecognized")])
def test_cli_errors_name_the_valid_choices(tmp_path, capsys, args, needle):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--steps", "1", "--output-dir", str(tmp_path), *args])
    assert exit_.value.code != 0
    assert needle in capsys.readouterr().err + str(exit_.value.code)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "thinkgym.agents.cli", *args], capture_output=True, text=True)


def test_cli_train_with_yaml_and_flags(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"steps: 1\nprompts_per_step: 1\nnum_generations: 2\neval_every: 0\noutput_dir: {tmp_path / 'out'}\n")
    out = run_cli("train", "--config", str(cfg), "--loss-type", "dr_grpo", "--env-kwargs", json.dumps({"max_chunks": 2}))
    assert out.returncode == 0, out.stderr[-2000:]
    saved = torch.load(tmp_path / "out" / "checkpoint-1" / "trainer_state.pt", weights_only=False)
    assert saved["config"]["loss_type"] == "dr_grpo" and saved["config"]["env_kwargs"] == {"max_chunks": 2}
    assert (tmp_path / "out" / "checkpoint-1" / "policy" / "model.safetensors").exists()


def test_yaml_stages_run_in_order_and_carry_the_policy(tmp_path):
    from pathlib import Path

    import yaml

    example = yaml.safe_load((Path(__file__).resolve().parents[1] / "examples" / "process_then_outcome.yaml").read_text())
    for stage in example["stages"]:  # budgets that fit the tiny model's 1024-token context
        stage["env_kwargs"]["max_thinking_tokens"] = 200
    cfg = tmp_path / "stages.yaml"
    cfg.write_text(yaml.safe_dump(example))
    out = tmp_path / "stages"
    main(["train", "--config", str(cfg), "--model", "tiny", "--steps", "1", "--prompts-per-step", "1", "--num-generations", "2",
          "--eval-every", "0", "--output-dir", str(out)])
    dirs = sorted(p.name for p in out.iterdir())
    assert dirs == ["stage1-MaskedStep-v0", "stage2-StepReorder-v0", "stage3-LongCoT-v0"]
    for d in dirs:
        assert (out / d / "checkpoint-1" / "policy" / "model.safetensors").exists()


def test_curriculum_is_shared_logged_and_checkpointed(tmp_path):
    cfg = small_cfg(tmp_path, env="SATCurriculum-v0", env_kwargs={"check_every": 2, "max_thinking_tokens": 64}, reward="",
                    eval_every=0, steps=1)
    trainer = GRPOTrainer(cfg)
    trainer.train()
    envs = trainer.collector._envs
    assert len(envs) == 6 and all(e.curriculum is envs[0].curriculum for e in envs)
    assert envs[0].curriculum.state_dict()["episodes"] == 6  # every episode's result reached the one curriculum
    assert "curriculum/level" in read_scalars(cfg.output_dir)
    envs[0].curriculum.level = 2
    trainer.save()
    resumed = GRPOTrainer(small_cfg(tmp_path, env="SATCurriculum-v0", env_kwargs={"check_every": 2, "max_thinking_tokens": 64},
                                    reward="", eval_every=0, steps=2, resume=True))
    assert resumed.load() and resumed.collector._envs[0].curriculum.level == 2


@pytest.mark.parametrize("env, kwargs", [("LongCoT-v0", {"task_kwargs": {"n_terms": 4}}), ("DelethinkDemo-v0", {})])
def test_siri_schedule_sets_the_environments_budgets(tmp_path, env, kwargs):
    from thinkgym.rewards import SiriSchedule

    siri = {"l_min": 64, "l_max": 192, "period": 4, "shape": "stair"}
    trainer = GRPOTrainer(small_cfg(tmp_path, env=env, env_kwargs=kwargs, siri=siri, reward="", eval_every=0, steps=4))
    sched = SiriSchedule(**siri)
    for step in range(4):
        trainer.step = step
        trainer.train_step()
        budget = sched(step)
        for e in trainer.collector._envs:
            if env.startswith("Delethink"):
                assert e.max_chunks == 1 + (budget - 64) // 32 and e.max_thinking_tokens <= budget
            else:
                assert e.max_thinking_tokens == budget
        assert trainer.last_episode.num_tokens <= budget
    assert len({sched(s) for s in range(4)}) == 2  # the schedule did change the budget


def test_train_prompts_cycles_a_fixed_pool_so_prompts_recur(tmp_path):
    trainer = GRPOTrainer(small_cfg(tmp_path, train_prompts=3, prompts_per_step=2))
    seeds = [s for step in range(6) for s in trainer.train_seeds(step)]
    assert len(set(seeds)) == 3 and len(seeds) == 12  # every seed comes from the pool, and each recurs
    fresh = GRPOTrainer(small_cfg(tmp_path, prompts_per_step=2))
    assert len({s for step in range(6) for s in fresh.train_seeds(step)}) == 12
    with pytest.raises(ValueError, match="train_prompts"):
        small_cfg(tmp_path, train_prompts=-1)
