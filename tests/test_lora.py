"""LoRA through peft on the tiny policy: only the adapter trains, is optimised and checkpointed; resume is
exact; the hf engine samples the adapted policy (applied, or merged) with the learner's log-probabilities;
the KL reference is the model with its adapter off; bad settings are refused by name."""

from __future__ import annotations

import pytest
import torch

from thinkgym.agents import lora
from thinkgym.agents.learner.config import GRPOConfig
from thinkgym.agents.learner.logprobs import completion_logprobs, pad_rows
from thinkgym.agents.learner.trainer import GRPOTrainer
from thinkgym.agents.plot import read_scalars
from thinkgym.agents.policy import Policy
from thinkgym.agents.rollout.engine import GenerationRequest
from thinkgym.agents.rollout.hf.engine import HFEngine
from thinkgym.agents.types import Row
from thinkgym.rewards import register_reward

pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("one_thread")


@register_reward("lora_sevens")
def lora_sevens(sample, **_):
    """Rewards with variance within a group of the untrained policy: how many 7s it wrote."""
    return float(sample.text.count("7"))


def lora_cfg(tmp_path, **kw) -> GRPOConfig:
    base = dict(env="DelethinkDemo-v0", model="tiny", output_dir=str(tmp_path / "run"), steps=2, prompts_per_step=2, num_generations=3,
                micro_batch_size=4, learning_rate=1e-2, eval_every=0, save_every=1, reward="lora_sevens", use_peft=True, lora_r=4,
                lora_alpha=8)
    return GRPOConfig(**{**base, **kw})


def adapter_and_base(model) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    named = {n: p.detach().clone() for n, p in model.named_parameters()}
    return {n: p for n, p in named.items() if "lora_" in n}, {n: p for n, p in named.items() if "lora_" not in n}


def test_only_the_adapter_is_trained_and_optimised(tmp_path):
    trainer = GRPOTrainer(lora_cfg(tmp_path))
    adapter0, base0 = adapter_and_base(trainer.model)
    trainable = {id(p) for p in trainer.model.parameters() if p.requires_grad}
    assert adapter0 and {id(p) for p in trainer.opt.model_params} == trainable
    assert trainable == {id(p) for n, p in trainer.model.named_parameters() if "lora_" in n}
    for _ in range(2):
        assert trainer.train_step()["grad_norm"] > 0
    adapter1, base1 = adapter_and_base(trainer.model)
    assert all(torch.equal(base0[n], base1[n]) for n in base0)
    assert all(not torch.equal(adapter0[n], adapter1[n]) for n in adapter0 if "lora_B" in n)  # B starts at zero and moved


def test_checkpoints_hold_the_adapter_and_resume_is_exact(tmp_path):
    full = GRPOTrainer(lora_cfg(tmp_path / "a", steps=3))
    full.train()
    GRPOTrainer(lora_cfg(tmp_path / "b", steps=2)).train()
    resumed = GRPOTrainer(lora_cfg(tmp_path / "b", steps=3, resume=True))
    resumed.train()
    files = {p.name for p in (tmp_path / "b" / "run" / "checkpoint-2" / "policy").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files and "model.safetensors" not in files
    loss_full, loss_resumed = dict(read_scalars(full.cfg.output_dir)["loss"]), dict(read_scalars(resumed.cfg.output_dir)["loss"])
    assert loss_full[3] != 0.0 and loss_resumed[3] == loss_full[3]
    for (n, a), b in zip(full.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(a, b), n


def adapted_policy() -> Policy:
    """The tiny policy with an adapter on every linear layer whose B is random, so that it changes the policy a lot."""
    policy = Policy.tiny(seed=0)
    policy.model = lora.add_adapter(policy.model, r=4, alpha=8, target_modules=["all-linear"])
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    return policy


def sampled_logprobs(engine: HFEngine, policy: Policy) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Samples of the engine: its log-probabilities, the adapted model's and the base model's for the same tokens."""
    prompt = policy.tokenizer.encode("Add: 12 34 56\n")
    comps = engine.generate([GenerationRequest(prompt, 24, temperature=1.0, n=4, ignore_eos=True)])[0]
    rb = pad_rows([Row(prompt + c.token_ids, len(prompt), [1] * 24, c.logprobs, i) for i, c in enumerate(comps)],
                  policy.tokenizer.pad_token_id, policy.device)
    with torch.no_grad():
        adapted, _ = completion_logprobs(policy.model, rb)
        with policy.model.disable_adapter():
            base, _ = completion_logprobs(policy.model, rb)
    return rb.old_logprobs, adapted, base


@pytest.mark.parametrize("merge", [False, True], ids=["apply", "merge"])
def test_hf_engine_samples_the_adapted_policy(merge):
    policy = adapted_policy()
    engine = HFEngine(policy, seed=0, lora_merge=merge)
    assert engine.logprobs_are_trainers is not merge
    engine_lp, adapted, base = sampled_logprobs(engine, policy)
    assert float((engine_lp - adapted).abs().max()) < 1e-4  # fp32 on the CPU: merged weights round once
    assert float((engine_lp - base).abs().max()) > 0.1      # the adapter changes what it samples
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.mul_(-1.0)
    engine.sync_weights()  # applied: reads the adapter in place; merged: re-merges
    engine_lp, adapted, _ = sampled_logprobs(engine, policy)
    assert float((engine_lp - adapted).abs().max()) < 1e-4


def test_merged_copy_shares_the_weights_the_adapter_leaves_alone():
    policy = adapted_policy()
    plain = lora.merged_copy(policy.model)
    base = {id(p) for p in lora.base_model(policy.model).parameters()}
    adapted = {f"{name}.weight" for name in lora.adapted_layers(policy.model)}
    for name, p in plain.named_parameters():
        assert (id(p) in base) is (name not in adapted), name
    assert not lora.is_adapted(plain) and type(plain) is type(Policy.tiny().model)


def test_the_kl_reference_is_the_model_without_its_adapter(tmp_path):
    trainer = GRPOTrainer(lora_cfg(tmp_path, beta=0.1))
    assert trainer.ref_model is None  # no frozen copy: the adapter is switched off
    metrics = [trainer.train_step() for _ in range(2)]
    assert metrics[0]["kl"] == pytest.approx(0.0, abs=1e-9) and metrics[1]["kl"] > 0  # B = 0 until the first step
    rb = pad_rows([Row([5, 6, 7, 8, 9], 2, [1, 1, 1], [0.0] * 3, 0)], 0, trainer.policy.device)
    with torch.no_grad():
        start, _ = completion_logprobs(Policy.tiny(seed=0).model, rb)
    assert torch.allclose(trainer._ref_logprobs(rb), start, atol=1e-6)


def test_lora_rollout_merge_trains_with_the_recomputed_logprobs(tmp_path):
    trainer = GRPOTrainer(lora_cfg(tmp_path, lora_rollout="merge"))
    metrics = trainer.train_step()
    assert "time/old_logprobs_s" in metrics, "the learner used the merged engine's log-probabilities as its own"
    merged = trainer.engine.model
    for name, layer in lora.adapted_layers(trainer.model).items():
        w = layer.get_base_layer().weight + layer.get_delta_weight("default")
        assert torch.allclose(merged.get_submodule(name).weight, w, atol=1e-6), name  # re-merged after the step


@pytest.mark.parametrize("kw, needle", [
    (dict(use_peft=True, parallelism="fsdp"), "parallelism='ddp'"),
    (dict(lora_rollout="merge"), "needs use_peft=True"),
    (dict(use_peft=True, lora_rollout="merge", engine="vllm"), "setting of the hf engine"),
    (dict(use_peft=True, lora_rollout="fold"), "valid: \\['apply', 'merge'\\]"),
    (dict(use_peft=True, lora_r=0), "lora_r must be >= 1"),
    (dict(use_peft=True, lora_dropout=1.0), r"lora_dropout must be in \[0, 1\)"),
    (dict(use_peft=True, lora_target_modules=[]), "lora_target_modules must be"),
    (dict(parallelism="zero3"), "valid: \\['ddp', 'fsdp'\\]"),
])
def test_bad_settings_are_refused_by_name(kw, needle):
    with pytest.raises(ValueError, match=needle):
        GRPOConfig(**kw)


def test_unknown_target_modules_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="lora_target_modules=\\['qq_proj'\\] does not fit"):
        GRPOTrainer(lora_cfg(tmp_path, lora_target_modules=["qq_proj"]))
