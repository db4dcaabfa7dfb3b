"""Refill and streaming: rows that hand their decoder places to pending requests give, greedily, what
the default path (batches one after the other, rounds of chunks) gives, and streamed Delethink
collections are valid episodes."""

import pytest
import torch

from thinkgym.agents.learner.logprobs import completion_logprobs, pad_rows
from thinkgym.agents.policy import Policy
from thinkgym.agents.rollout.collector import Collector
from thinkgym.agents.rollout.engine import Completion, GenerationRequest, stream
from thinkgym.agents.rollout.hf import static_cache
from thinkgym.agents.rollout.hf.engine import HFEngine
from thinkgym.agents.types import Episode, episode_rows
from thinkgym.envs import TokenAction
from thinkgym.envs.registration import make_env

from test_static_decode import _requests, _with_stops


@pytest.fixture(scope="module")
def policy():
    torch.set_num_threads(1)
    return Policy.tiny(seed=0, dtype=torch.float32)


@pytest.fixture
def prefills(monkeypatch):
    """The row offset of every prefill the decoders run."""
    seen = []
    real = static_cache.StaticDecoder.prefill

    def spy(self, ids, mask, at=0, refresh=True):
        seen.append(at)
        return real(self, ids, mask, at, refresh)

    monkeypatch.setattr(static_cache.StaticDecoder, "prefill", spy)
    return seen


def _assert_same(a: list[list[Completion]], b: list[list[Completion]]) -> None:
    for x, y in zip(a, b, strict=True):
        assert x[0].token_ids == y[0].token_ids and x[0].finish_reason == y[0].finish_reason
        assert x[0].logprobs == pytest.approx(y[0].logprobs, abs=1e-5)


def _assert_same_chunks(a: dict[int, list[Completion]], b: dict[int, list[Completion]]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        _assert_same([[c] for c in a[key]], [[c] for c in b[key]])


@pytest.mark.parametrize("limit", [dict(max_batch_size=3), "kv"])
def test_refill_decodes_greedily_what_the_batches_do(policy, prefills, limit):
    """Rows end at different steps (budgets of 1-69 tokens, stop strings, EOS) and only 3 fit at once."""
    reqs = _with_stops(policy, _requests(seed=8, n=12))
    if limit == "kv":  # a K/V budget of 3 rows of the longest prompt + budget (refill's row; the batches' is longer)
        per_row = max(len(r.prompt_ids) + r.max_new_tokens for r in reqs) * static_cache.SlotCache.bytes_per_slot(policy.model)
        limit = dict(kv_cache_gb=3.5 * per_row / 1e9)
    base = HFEngine(policy, static_cache=True, **limit).generate(reqs)
    prefills.clear()
    engine = HFEngine(policy, static_cache=True, refill=True, **limit)
    out = engine.generate(reqs)
    assert {c[0].finish_reason for c in out} >= {"length", "stop"}
    assert engine._decoder.cache.n_rows == 3
    assert any(at > 0 for at in prefills)  # freed places were prefilled while the others decoded
    _assert_same(out, base)
    _assert_same(out, HFEngine(policy, static_cache=False).generate(reqs))


def test_refill_with_the_buckets_of_cuda_graphs(policy, prefills, monkeypatch):
    """As on a GPU, steps run on power-of-two row buckets and 64-slot buckets, so some places in a step are
    idle (finished, or beyond `max_batch_size`) and read past their row's context; a second call reuses
    the decoder that the first left with moving rows."""
    monkeypatch.setattr(static_cache.StaticDecoder, "bucket_rows",
                        lambda self, n: min(1 << (n - 1).bit_length(), self.cache.n_rows))
    graphs_slots = static_cache.StaticDecoder.bucket_slots

    def bucket_slots(self, n):
        self.graphs = True
        try:
            return graphs_slots(self, n)
        finally:
            self.graphs = False

    monkeypatch.setattr(static_cache.StaticDecoder, "bucket_slots", bucket_slots)
    reqs = _with_stops(policy, _requests(seed=11, n=14))
    base = HFEngine(policy, static_cache=True).generate(reqs)
    engine = HFEngine(policy, static_cache=True, refill=True, max_batch_size=6)
    _assert_same(engine.generate(reqs), base)
    _assert_same(engine.generate(reqs[:5]), base[:5])  # fewer rows than the bucket: idle places from the start
    _assert_same_chunks(_chunks(engine), _chunks(HFEngine(policy, static_cache=True)))


def test_refill_sampled_logprobs_are_the_learners(policy):
    reqs = [GenerationRequest(r.prompt_ids, r.max_new_tokens, temperature=1.0, top_p=0.9 if i % 2 else 1.0)
            for i, r in enumerate(_requests(seed=9, n=10))]
    out = HFEngine(policy, seed=1, static_cache=True, refill=True, max_batch_size=4).generate(reqs)
    batch = [r for i, (req, c) in enumerate(zip(reqs, out))
             for r in episode_rows(Episode(0, 0, [c[0].step(req.prompt_ids, policy.eos_token_id)]), i)]
    with torch.no_grad():
        logp, _ = completion_logprobs(policy.model, pad_rows(batch, policy.tokenizer.pad_token_id, policy.device))
    for i, row in enumerate(batch):
        assert row.old_logprobs == pytest.approx(logp[i, :len(row.old_logprobs)].tolist(), abs=1e-5)


def _chunks(engine, follow_ups: int = 3) -> dict[int, list[Completion]]:
    """Streams 8 keys whose chunks have budgets and counts that vary by key; each next chunk's prompt is the
    key's prompt plus the last chunk's final 4 tokens (a Delethink-like carryover)."""
    reqs = {k: r for k, r in enumerate(_requests(seed=10, n=8))}
    got: dict[int, list[Completion]] = {k: [] for k in reqs}

    def follow_up(key, c):
        got[key].append(c)
        if len(got[key]) > (key % follow_ups):
            return None
        return GenerationRequest(reqs[key].prompt_ids + c.token_ids[-4:], 5 + 13 * ((key + len(got[key])) % 4),
                                 temperature=0.0, ignore_eos=True)

    stream(engine, reqs, follow_up)
    return got


def test_streamed_chunks_are_the_rounds_chunks(policy, prefills):
    rounds = _chunks(HFEngine(policy, static_cache=True))
    prefills.clear()
    streamed = _chunks(HFEngine(policy, static_cache=True, refill=True, max_batch_size=4))
    assert [len(v) for v in streamed.values()] == [1, 2, 3, 1, 2, 3, 1, 2]
    assert any(at > 0 for at in prefills)
    _assert_same_chunks(streamed, rounds)


def test_stream_runs_in_rounds_for_an_engine_without_its_own():
    class Echo:
        """Completes each prompt with its last token, `max_new_tokens` times."""

        def __init__(self):
            self.calls = []

        def generate(self, requests):
            self.calls.append(len(requests))
            return [[Completion([r.prompt_ids[-1]] * r.max_new_tokens, "", [0.0] * r.max_new_tokens, "length")]
                    for r in requests]

    engine, rounds, seen = Echo(), [], []

    def follow_up(key, c):
        seen.append((key, c.token_ids))
        return GenerationRequest([key, len(seen)], 1) if len([s for s in seen if s[0] == key]) < key else None

    stream(engine, {1: GenerationRequest([7], 2), 3: GenerationRequest([8], 1)}, follow_up, lambda: rounds.append(1))
    assert engine.calls == [2, 1, 1] and len(rounds) == 3  # key 3 goes on alone for two more rounds
    assert seen == [(1, [7, 7]), (3, [8]), (3, [2]), (3, [3])]
    with pytest.raises(ValueError, match="n=1"):
        stream(engine, {0: GenerationRequest([1], 1, n=2)}, follow_up)


def test_a_native_stream_is_left_for_rounds_when_weights_may_change_between_them(policy, monkeypatch):
    engine = HFEngine(policy, static_cache=True, refill=True)
    monkeypatch.setattr(engine, "_run_refill", lambda *a, **k: pytest.fail("the rounds were skipped"))
    monkeypatch.setattr(engine, "generate", lambda reqs: [[Completion([5], "", [0.0], "length")] for _ in reqs])
    done = []
    stream(engine, {0: GenerationRequest([1], 1)}, lambda k, c: done.append(k), before_round=lambda: None)
    assert done == [0]


def test_streamed_delethink_collection_is_valid(policy):
    """Each chunk's prompt is the prompt its env built from the chunks before, its row holds its exact
    ids and log-probs (the learner's), and every step carries the policy version it was sampled with."""
    kwargs = {"chunk_size": 24, "carryover": 12, "head": 4, "max_chunks": 4}
    engine = HFEngine(policy, seed=2, static_cache=True, refill=True, max_batch_size=5)
    collector = Collector("DelethinkDemo-v0", engine, kwargs, group_size=3)
    collector.policy_version = 7
    batch = collector.collect([0, 1, 2, 3])
    assert len(batch.episodes) == 12 and len({len(ep.steps) for ep in batch.episodes}) > 1  # traces of varied chunk counts
    for ep in batch.episodes:
        env = make_env("DelethinkDemo-v0", tokenizer=policy.tokenizer, **kwargs).unwrapped
        _, info = env.reset(seed=ep.seed)
        for step in ep.steps:
            assert step.prompt_ids == info["prompt_token_ids"] and step.version == 7
            text = policy.tokenizer.decode(step.action_ids, skip_special_tokens=False)
            _, reward, term, trunc, info = env.step(TokenAction(text, step.action_ids, step.finish_reason == "eos"))
        assert (term or trunc) and float(reward) == ep.reward
    assert {r.version for r in batch.rows} == {7}
    with torch.no_grad():
        logp, _ = completion_logprobs(policy.model, pad_rows(batch.rows, policy.tokenizer.pad_token_id, policy.device))
    for i, row in enumerate(batch.rows):
        assert row.old_logprobs == pytest.approx(logp[i, :len(row.old_logprobs)].tolist(), abs=1e-5)


def test_stream_rollouts_reaches_the_engine_and_a_step_runs_on_streamed_chunks(tmp_path):
    from thinkgym.agents.learner.config import GRPOConfig
    from thinkgym.agents.learner.trainer import GRPOTrainer

    cfg = GRPOConfig(env="DelethinkDemo-v0", model="tiny", num_generations=3, prompts_per_step=2, learning_rate=1e-3, steps=1,
                     eval_every=0, save_every=0, log_completions_every=0, stream_rollouts=True, output_dir=str(tmp_path))
    trainer = GRPOTrainer(cfg)
    assert trainer.engine.refill and not GRPOTrainer(GRPOConfig(**{**vars(cfg), "stream_rollouts": False})).engine.refill
    ran = []
    real = trainer.engine._run_refill
    trainer.engine._run_refill = lambda *a: ran.append(1) or real(*a)
    metrics = trainer.train_step()
    assert ran == [1]  # one decoder run took every chunk of the step
    assert metrics["delethink/chunks_mean"] > 1 and metrics["engine_log_ratio/abs_mean"] < 1e-5  # the learner's log-probs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_refill_with_cuda_graphs_matches_eager_decoding():
    policy = Policy.tiny(seed=0, device="cuda", dtype=torch.float32)
    reqs = _requests(seed=5, n=40)
    graphs = HFEngine(policy, cuda_graphs=True, refill=True, max_batch_size=12)
    out = graphs.generate(reqs)
    assert graphs._decoder._graphs and any(key[2] for key in graphs._decoder._graphs)  # per-row steps were captured
    _assert_same(out, HFEngine(policy, cuda_graphs=False).generate(reqs))
    _assert_same_chunks(_chunks(graphs), _chunks(HFEngine(policy, cuda_graphs=False)))
