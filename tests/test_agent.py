"""Policy, hf engine, collector, SFT and evaluation on the tiny policy (CPU)."""

import gymnasium as gym
import pytest
import torch

import thinkgym  # noqa: F401
from thinkgym.agents.evaluate import evaluate, pass_at_k
from thinkgym.agents.learner.sft import demonstration_rows, jsonl_rows, train_sft
from thinkgym.agents.policy import Policy
from thinkgym.agents.rollout.collector import Collector
from thinkgym.agents.rollout.engine import GenerationRequest
from thinkgym.agents.rollout.hf.engine import HFEngine
from thinkgym.agents.rollout.sampling import compiled_race, race, sample_tokens
from thinkgym.agents.types import episode_rows
from thinkgym.envs import TokenAction

DEMO = "DelethinkDemo-v0"


@pytest.fixture(scope="module")
def policy():
    return Policy.tiny(seed=0)


def test_tiny_policy_saves_and_loads_through_from_pretrained(policy, tmp_path):
    policy.save_pretrained(tmp_path / "p")
    assert (tmp_path / "p" / "model.safetensors").exists()
    back = Policy.from_pretrained(str(tmp_path / "p"))
    ids = torch.tensor([policy.tokenizer.encode("Add: 1 2\n")])
    with torch.no_grad():
        assert torch.allclose(back.model(ids).logits, policy.model(ids).logits, atol=1e-6)
    assert back.tokenizer.encode("x</think>") == policy.tokenizer.encode("x</think>")


def test_bad_model_inputs_get_clear_errors(policy, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        Policy.from_pretrained(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="could not load"):
        Policy.from_pretrained("no-such-org/no-such-model-xyz")
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    big = PreTrainedTokenizerFast(tokenizer_object=policy.tokenizer.backend_tokenizer)
    big.add_tokens([f"<extra{i}>" for i in range(400)])
    with pytest.raises(ValueError, match="tokenizer has"):
        Policy(policy.model, big)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        HFEngine(policy).generate([GenerationRequest([1] * 1000, max_new_tokens=100)])
    with pytest.raises(ValueError, match="not registered"):
        Collector("NoSuchEnv-v9", HFEngine(policy))


def test_engine_honours_budgets_and_stop_strings(policy):
    eng = HFEngine(policy, seed=0)
    tok = policy.tokenizer
    outs = eng.generate([GenerationRequest(tok.encode("a"), 3, ignore_eos=True), GenerationRequest(tok.encode("b"), 11, ignore_eos=True, n=2),
                         GenerationRequest(tok.encode("c"), 50, stop=["1", "2", "3", "4", "5", "6", "7", "8", "9", "0"], temperature=2.0)])
    assert [len(c.token_ids) for c in outs[0]] == [3] and [len(c.token_ids) for c in outs[1]] == [11, 11]
    stopped = outs[2][0]
    if stopped.finish_reason == "stop":
        assert stopped.text[-1].isdigit() and not any(ch.isdigit() for ch in stopped.text[:-1])
    else:
        assert not any(ch.isdigit() for ch in stopped.text)
    for c in outs[0] + outs[1]:
        assert len(c.logprobs) == len(c.token_ids) and c.finish_reason == "length"


def test_engine_logprobs_equal_a_full_forward(policy):
    eng = HFEngine(policy, seed=1)
    req = GenerationRequest(policy.tokenizer.encode("Add: 3 4\n"), 20, temperature=0.7, ignore_eos=True)
    c = eng.generate([req])[0][0]
    ids = torch.tensor([req.prompt_ids + c.token_ids])
    with torch.no_grad():
        logits = policy.model(ids).logits[0, len(req.prompt_ids) - 1:-1].float() / 0.7
    ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c.token_ids).unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(ref, torch.tensor(c.logprobs), atol=1e-5)


def test_collector_is_token_exact_on_delethink(policy):
    eng = HFEngine(policy, seed=0)
    col = Collector(DEMO, eng, group_size=4, temperature=1.0)
    batch = col.collect([7, 8])
    env = gym.make(DEMO, tokenizer=policy.tokenizer).unwrapped
    for ep in batch.episodes:
        _, info = env.reset(seed=ep.seed)
        for st in ep.steps:  # replay the recorded actions: the env must build the same prompts
            assert st.prompt_ids == info["prompt_token_ids"]
            _, _, term, trunc, info = env.step(TokenAction.from_ids(policy.tokenizer, st.action_ids, st.finish_reason == "eos"))
        assert term or trunc
    # group members share the task; the training rows hold exactly the sampled ids, a sampled EOS included
    assert batch.episodes[0].steps[0].prompt_ids == batch.episodes[3].steps[0].prompt_ids
    assert batch.episodes[0].steps[0].prompt_ids != batch.episodes[4].steps[0].prompt_ids
    rows = [r for i, ep in enumerate(batch.episodes) for r in episode_rows(ep, i)]
    for r in rows:
        st = next(s for s in batch.episodes[r.episode].steps if s.prompt_ids == r.input_ids[: r.prompt_len])
        assert (r.input_ids[r.prompt_len:], r.old_logprobs) == st.sampled
    assert batch.stats["generated_tokens"] == sum(ep.num_tokens for ep in batch.episodes)


def test_collector_handles_episodes_that_end_early_and_late(policy):
    """A random policy mostly hits the chunk cap; forcing EOS via a prefix ends others at once."""
    eng = HFEngine(policy, seed=0)
    col = Collector(DEMO, eng, group_size=4)
    eos = policy.tokenizer.eos_token_id
    batch = col.collect([3], prefixes=[[], [], [eos], [eos]])
    chunks = [ep.info["chunks"] for ep in batch.episodes]
    assert chunks[2] == chunks[3] == 1 and batch.episodes[2].terminated
    assert max(chunks) > 1
    with pytest.raises(ValueError, match="prefixes"):
        col.collect([3], prefixes=[[]])


def test_append_only_steps_merge_with_env_tokens_masked():
    from thinkgym.agents.types import Episode, Step

    ep = Episode(0, 0, [Step([1, 2], [3, 4], [-0.1, -0.2], "stop"), Step([1, 2, 3, 4, 9, 9], [5], [-0.3], "eos")])
    (row,) = episode_rows(ep, 0)
    assert row.input_ids == [1, 2, 3, 4, 9, 9, 5] and row.prompt_len == 2
    assert row.loss_mask == [1, 1, 0, 0, 1] and row.old_logprobs == [-0.1, -0.2, 0.0, 0.0, -0.3]


def test_a_step_that_ended_with_eos_trains_on_it():
    from thinkgym.agents.types import Episode, Step

    ep = Episode(0, 0, [Step([1, 2], [3, 4], [-0.1, -0.2], "length"), Step([1, 2, 9], [5], [-0.3], "eos", (0, -0.4))])
    first, last = episode_rows(ep, 0)
    assert first.input_ids == [1, 2, 3, 4] and first.old_logprobs == [-0.1, -0.2]
    assert last.input_ids == [1, 2, 9, 5, 0] and last.loss_mask == [1, 1] and last.old_logprobs == [-0.3, -0.4]


@pytest.mark.parametrize("static_cache", [True, False])
def test_sampled_eos_ends_the_training_row_with_its_logprob(policy, static_cache):
    """TRL and verl train on the EOS that ends a completion, so RL can teach when to stop. A random
    tiny policy samples EOS at T=1 about once in 259 tokens: some of 48 rows of 48 tokens end with it."""
    from thinkgym.agents.learner.logprobs import completion_logprobs, pad_rows

    eng = HFEngine(policy, seed=3, static_cache=static_cache)
    batch = Collector("LongCoT-v0", eng, {"max_thinking_tokens": 48}, group_size=8).collect(list(range(6)))
    eos = policy.eos_token_id
    ended = [i for i, ep in enumerate(batch.episodes) if ep.steps[-1].finish_reason == "eos"]
    assert ended and len(ended) < len(batch.episodes)
    for row in batch.rows:
        ep = batch.episodes[row.episode]
        assert (row.input_ids[-1] == eos) == (row.episode in ended)
        assert row.completion_len == ep.num_tokens + (row.episode in ended) == len(row.old_logprobs) == sum(row.loss_mask)
        assert ep.info["thinking_tokens"] == ep.num_tokens  # the env saw the ids without EOS
    rows = [batch.rows[i] for i in ended]
    with torch.no_grad():
        logp, _ = completion_logprobs(policy.model, pad_rows(rows, policy.tokenizer.pad_token_id, policy.device))
    for i, r in enumerate(rows):  # the engine's log-prob of each EOS is the trainer's: the ratio starts at 1
        assert r.old_logprobs[-1] == pytest.approx(float(logp[i, r.completion_len - 1]), abs=1e-5)


@pytest.mark.slow
def test_sft_on_demonstrations_lifts_success_from_zero():
    """Short running sums in one context: small enough to learn within a CI test."""
    torch.manual_seed(0)
    env, kw = "LongCoT-v0", {"task_kwargs": {"n_terms": 4}, "max_thinking_tokens": 80}
    pol = Policy.tiny(seed=0)
    eng = HFEngine(pol, seed=0)
    before = evaluate(eng, env, range(64), n=1, temperature=0.0, env_kwargs=kw)
    rows = demonstration_rows(env, range(1000, 1400), pol.tokenizer, kw)
    assert all(r.input_ids[-1] == pol.tokenizer.eos_token_id for r in rows)
    train_sft(pol, rows, steps=300, batch_size=32, lr=3e-3)
    after = evaluate(eng, env, range(64), n=1, temperature=0.0, env_kwargs=kw)
    print(f"SFT warm start, held-out greedy accuracy on 4-term sums: {before['accuracy']:.3f} -> {after['accuracy']:.3f}")
    assert before["accuracy"] == 0.0 and after["accuracy"] >= 0.3


def test_sft_reads_jsonl_and_rejects_missing_fields(policy, tmp_path):
    good, bad = tmp_path / "g.jsonl", tmp_path / "b.jsonl"
    good.write_text('{"prompt": "Q", "response": "A"}\n')
    bad.write_text('{"question": "Q"}\n')
    (row,) = jsonl_rows(good, policy.tokenizer)
    assert row.input_ids[row.prompt_len:] == policy.tokenizer.encode("A") + [policy.tokenizer.eos_token_id]
    with pytest.raises(ValueError, match="'prompt' and 'response'"):
        jsonl_rows(bad, policy.tokenizer)
    with pytest.raises(ValueError, match="steps >= 1; got 0"):  # not a ZeroDivisionError inside the schedule
        train_sft(policy, jsonl_rows(good, policy.tokenizer), steps=0)


def test_pass_at_k_unbiased_estimator():
    assert pass_at_k(4, 0, 2) == 0.0 and pass_at_k(4, 4, 1) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)


def test_sampling_draws_from_the_tempered_and_truncated_distribution():
    n = 40000
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])).repeat(n, 1)
    g = torch.Generator().manual_seed(0)
    temp, full = torch.full((n,), 0.5), torch.ones(n)
    tokens, logps = sample_tokens(logits, temp, full, g, truncate=False)
    want = torch.softmax(logits[0] / 0.5, -1)
    freq = torch.bincount(tokens, minlength=4).float() / n
    assert (freq - want).abs().max() < 0.01  # 4 standard errors at n = 40000
    assert torch.allclose(logps, want.log()[tokens])
    tokens, logps = sample_tokens(logits, full, torch.full((n,), 0.7), g)  # top-p keeps 0.5 and 0.3 only
    freq = torch.bincount(tokens, minlength=4).float() / n
    assert freq[2:].sum() == 0 and abs(freq[0] - 0.5 / 0.8) < 0.01
    assert torch.allclose(logps, logits[0][tokens])  # reported under the untruncated distribution
    greedy, logps = sample_tokens(logits[:3], torch.tensor([0.0, 0.0, 0.0]), full[:3], g)
    assert greedy.tolist() == [0, 0, 0] and torch.allclose(logps, logits[0, :1].expand(3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the sampler is compiled on a GPU only")
def test_the_compiled_sampler_picks_what_the_eager_one_does():
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(64, 50000, device="cuda", dtype=torch.bfloat16) * 3
    temp = torch.rand(64, device="cuda").masked_fill_(torch.arange(64, device="cuda") % 7 == 0, 0.0)
    noise = torch.empty(logits.shape, device="cuda").exponential_(generator=g)
    for top_p in (None, torch.full((64,), 0.9, device="cuda")):
        (a, la), (b, lb) = race(logits, temp, noise, top_p), compiled_race(logits, temp, noise, top_p)
        assert torch.equal(a, b) and torch.allclose(la, lb, atol=1e-4)
