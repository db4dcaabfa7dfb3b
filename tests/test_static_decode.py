"""The static-cache decode path gives what the DynamicCache path gives, token for token."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

from thinkgym.agents.policy import Policy
from thinkgym.agents.rollout.engine import GenerationRequest
from thinkgym.agents.rollout.hf import static_cache
from thinkgym.agents.rollout.hf.engine import HFEngine
from thinkgym.agents.rollout.hf.fused_step import supports_fused
from thinkgym.envs.tokenizer import builtin_tokenizer

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _requests(seed: int = 0, n: int = 10, temperature: float = 0.0) -> list[GenerationRequest]:
    g = torch.Generator().manual_seed(seed)
    reqs = []
    for i in range(n):
        prompt = torch.randint(0, 250, (int(torch.randint(2, 50, (1,), generator=g)),), generator=g).tolist()
        reqs.append(GenerationRequest(prompt, int(torch.randint(1, 70, (1,), generator=g)), temperature=temperature,
                                      ignore_eos=i % 3 == 0, prefix_ids=[104, 105] if i % 5 == 2 else []))
    return reqs


def _with_stops(policy: Policy, reqs: list[GenerationRequest]) -> list[GenerationRequest]:
    """Give every other request a stop string that its greedy output contains, so rows end at varied steps."""
    out = HFEngine(policy, static_cache=False).generate(reqs)
    for i, (r, c) in enumerate(zip(reqs, out)):
        if i % 2 and len(c[0].text) > 3:
            r.stop = (c[0].text[len(c[0].text) // 2],)
    return reqs


def _compare(policy: Policy, reqs: list[GenerationRequest], **static_kwargs) -> float:
    """Assert equal tokens and finish reasons; return the largest log-probability difference."""
    fast = HFEngine(policy, static_cache=True, **static_kwargs).generate(reqs)
    slow = HFEngine(policy, static_cache=False).generate(reqs)
    worst = 0.0
    for a, b in zip(fast, slow):
        assert a[0].token_ids == b[0].token_ids and a[0].finish_reason == b[0].finish_reason
        worst = max([worst] + [abs(x - y) for x, y in zip(a[0].logprobs, b[0].logprobs)])
    return worst


@pytest.mark.parametrize("device", DEVICES)
def test_static_matches_dynamic_on_mixed_rows(device):
    policy = Policy.tiny(seed=0, device=device, dtype=torch.float32)
    reqs = _with_stops(policy, _requests())
    fast = HFEngine(policy, static_cache=True).generate(reqs)
    assert {c[0].finish_reason for c in fast} >= {"length", "stop"}  # rows leave at different steps
    assert _compare(policy, reqs) < 1e-4


def test_llama_architecture_and_small_prefill_chunks(monkeypatch):
    cfg = LlamaConfig(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=32, max_position_embeddings=512)
    torch.manual_seed(0)
    policy = Policy(LlamaForCausalLM(cfg), builtin_tokenizer(), "cpu", torch.float32)
    monkeypatch.setattr(static_cache, "PREFILL_MASK_ELEMS", 2000)  # one row, and query chunks of about 40 positions
    assert _compare(policy, _requests(seed=1)) < 1e-4


SMALL = dict(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=32, max_position_embeddings=512)


@pytest.mark.parametrize("model", [
    lambda: Qwen2ForCausalLM(Qwen2Config(**SMALL)),                               # q/k/v biases
    lambda: LlamaForCausalLM(LlamaConfig(**SMALL, attention_bias=True, mlp_bias=True,
                                         rope_scaling={"rope_type": "linear", "factor": 2.0})),
    lambda: Qwen3ForCausalLM(Qwen3Config(**SMALL)),                               # per-head q/k norms
], ids=["qwen2", "llama", "qwen3"])
def test_fused_step_decodes_what_the_model_forward_does(model):
    torch.manual_seed(0)
    m = model()
    with torch.no_grad():  # non-trivial norm weights and biases, so that a dropped one shows
        for name, p in m.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.3 * torch.randn_like(p))
    policy = Policy(m, builtin_tokenizer(), "cpu", torch.float32)
    assert supports_fused(m)
    engine = HFEngine(policy, static_cache=True)
    assert _compare(policy, _requests(seed=6)) < 1e-4
    engine.generate(_requests(seed=6, n=2))
    assert engine._decoder.fused is not None  # the comparison above ran the fused step
    assert _compare(policy, _requests(seed=6), fused=False) < 1e-4
    assert HFEngine(policy, fused=False).static_decoder(2, 64).fused is None


def test_models_the_fused_step_does_not_cover_run_their_own_forward():
    gelu = Qwen2ForCausalLM(Qwen2Config(**SMALL, hidden_act="gelu"))
    adapted = Qwen2ForCausalLM(Qwen2Config(**SMALL))

    class Adapter(torch.nn.Linear):  # e.g. a LoRA layer, whose weight alone is not the map it applies
        pass

    adapted.model.layers[1].mlp.up_proj = Adapter(64, 128, bias=False)
    for m in (gelu, adapted):
        assert not supports_fused(m)
        assert HFEngine(Policy(m, builtin_tokenizer(), "cpu", torch.float32)).static_decoder(2, 64).fused is None
    policy = Policy(gelu, builtin_tokenizer(), "cpu", torch.float32)
    assert _compare(policy, _requests(seed=7, n=4)) < 1e-4


def test_cache_is_reused_and_reads_updated_weights():
    policy = Policy.tiny(seed=0, dtype=torch.float32)
    engine = HFEngine(policy, static_cache=True)
    reqs = _requests(seed=2, n=4)
    engine.generate(reqs)
    decoder = engine._decoder
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    fast = engine.generate(reqs)
    assert engine._decoder is decoder
    slow = HFEngine(policy, static_cache=False).generate(reqs)
    assert [c[0].token_ids for c in fast] == [c[0].token_ids for c in slow]


def test_kv_budget_bounds_rows_per_batch():
    policy = Policy.tiny(seed=0, dtype=torch.float32)
    reqs = _requests(seed=3, n=6)
    per_row = (max(len(r.prompt_ids) for r in reqs) + max(r.max_new_tokens for r in reqs)) * \
        static_cache.SlotCache.bytes_per_slot(policy.model)
    engine = HFEngine(policy, static_cache=True, kv_cache_gb=2.5 * per_row / 1e9)
    fast = engine.generate(reqs)
    assert engine._decoder.cache.n_rows == 2
    slow = HFEngine(policy, static_cache=False).generate(reqs)
    assert [c[0].token_ids for c in fast] == [c[0].token_ids for c in slow]


def test_sampling_uses_the_same_stream_as_the_dynamic_path():
    policy = Policy.tiny(seed=0, dtype=torch.float32)
    reqs = [GenerationRequest(r.prompt_ids, 30, temperature=1.0, n=3, ignore_eos=True) for r in _requests(seed=4, n=3)]
    fast = HFEngine(policy, seed=7, static_cache=True).generate(reqs)
    slow = HFEngine(policy, seed=7, static_cache=False).generate(reqs)
    assert [[c.token_ids for c in g] for g in fast] == [[c.token_ids for c in g] for g in slow]


def test_sliding_window_models_fall_back_to_the_dynamic_cache():
    cfg = Qwen2Config(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, use_sliding_window=True, sliding_window=16, max_window_layers=1)
    model = Qwen2ForCausalLM(cfg)
    assert not static_cache.supports_static(model)
    assert HFEngine(Policy(model, builtin_tokenizer(), "cpu", torch.float32)).static_cache is False
    assert static_cache.supports_static(Policy.tiny().model)


def test_cuda_graphs_need_a_gpu_and_the_static_cache():
    with pytest.raises(ValueError, match="cuda_graphs"):
        HFEngine(Policy.tiny(), cuda_graphs=True, static_cache=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_compiled_cuda_graph_decoding_matches_eager_decoding():
    policy = Policy.tiny(seed=0, device="cuda", dtype=torch.float32)
    reqs = _requests(seed=5, n=40)
    graphs = HFEngine(policy, cuda_graphs=True)
    out = graphs.generate(reqs)
    assert graphs.cuda_graphs and graphs._decoder._graphs  # graphs were captured and kept
    assert graphs._decoder.fused is not None  # and the fused step was compiled, not abandoned
    for eager in (HFEngine(policy, cuda_graphs=False), HFEngine(policy, cuda_graphs=False, fused=False)):
        assert [c[0].token_ids for c in out] == [c[0].token_ids for c in eager.generate(reqs)]
