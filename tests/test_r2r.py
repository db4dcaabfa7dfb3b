"""R2R: routed generation is token-exact against both models, labels follow the verifier, the router's tau
meets its recall target."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from thinkgym.agents.evaluate import evaluate
from thinkgym.agents.methods.r2r import (DIVERGENT, IDENTICAL, NEUTRAL, _Verifier, label_tokens, load_labels, save_labels,
                                         select_seeds)
from thinkgym.agents.methods.router import RateRouter, Router, RouterConfig, binary_metrics, choose_threshold, router_probs, train_router
from thinkgym.agents.policy import Policy
from thinkgym.agents.rollout.engine import GenerationRequest
from thinkgym.agents.rollout.hf.engine import HFEngine
from thinkgym.agents.rollout.hf.routed import RoutedEngine

ENV_KWARGS = {"task_kwargs": {"n_terms": 2}, "max_thinking_tokens": 24}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pair() -> tuple[Policy, Policy]:
    return Policy.tiny(0, device="cpu"), Policy.tiny(1, device="cpu", hidden_size=96, num_hidden_layers=3)


def _requests(tok) -> list[GenerationRequest]:
    return [GenerationRequest(tok.encode("Add: 3 4 5\n"), 24, temperature=0.0),
            GenerationRequest(tok.encode("Hi"), 16, temperature=0.0, n=2),
            GenerationRequest(tok.encode("Add: 1 2\n"), 12, temperature=0.0, prefix_ids=tok.encode("1|"))]


def _ids(outs) -> list[list[int]]:
    return [c.token_ids for o in outs for c in o]


def test_never_routed_is_small_and_always_routed_is_large(pair):
    small, large = pair
    reqs = _requests(small.tokenizer)
    never = RoutedEngine(small, large, RateRouter(0.0))
    always = RoutedEngine(small, large, RateRouter(1.0))
    assert _ids(never.generate(reqs)) == _ids(HFEngine(small).generate(reqs))
    assert _ids(always.generate(reqs)) != _ids(never.generate(reqs))  # the two models really differ
    out = always.generate(reqs)
    # the forced prefix is never routed; everything after it is the large model's greedy output
    forced = out[2][0].routed[:2]
    assert forced == [False, False] and all(r for o in out for c in o for r in c.routed[2 if o is out[2] else 0:])
    assert _ids(out) == _ids(HFEngine(large).generate(reqs))
    assert never.report()["routed_frac"] == 0.0 and always.report()["routed_frac"] > 0.9


def test_every_routed_token_is_the_large_models_greedy_token(pair):
    small, large = pair
    reqs = _requests(small.tokenizer)
    engine = RoutedEngine(small, large, RateRouter(0.35, seed=3))
    outs = engine.generate(reqs)
    n_routed = n_small = 0
    for req, o in zip(reqs, outs):
        for c in o:
            assert len(c.routed) == len(c.token_ids) == len(c.logprobs)
            seq = torch.tensor([req.prompt_ids + c.token_ids])
            with torch.no_grad():  # teacher-force both models on the mixed sequence
                greedy_l = large.model(seq).logits[0, len(req.prompt_ids) - 1:-1].argmax(-1).tolist()
                greedy_s = small.model(seq).logits[0, len(req.prompt_ids) - 1:-1].argmax(-1).tolist()
            for j, (t, routed) in enumerate(zip(c.token_ids, c.routed)):
                if j < len(req.prefix_ids):
                    continue
                assert t == (greedy_l[j] if routed else greedy_s[j])
                n_routed += routed
                n_small += not routed
    assert n_routed >= 5 and n_small >= 5
    rep = engine.report()
    assert rep["small_params"] < rep["avg_active_params"] < rep["small_params"] + rep["large_params"]


def test_routed_engine_runs_in_evaluate(pair):
    small, large = pair
    engine = RoutedEngine(small, large, RateRouter(0.5))
    res = evaluate(engine, "LongCoT-v0", [0, 1, 2], env_kwargs=ENV_KWARGS, temperature=0.0)
    assert 0.0 <= res["accuracy"] <= 1.0 and res["mean_tokens"] > 0
    assert engine.report()["tokens"] == pytest.approx(3 * res["mean_tokens"])


def test_labels_mark_mismatches_and_are_identical_for_one_model(pair, tmp_path):
    small, large = pair
    seeds = [0, 1, 2, 3]
    same = label_tokens(small, small, "LongCoT-v0", seeds, ENV_KWARGS, top_k=8)
    assert (same["kind"] == IDENTICAL).all() and (same["small_token"] == same["large_token"]).all()
    lab = label_tokens(small, large, "LongCoT-v0", seeds, ENV_KWARGS, top_k=8)
    n = len(lab["kind"])
    assert lab["hidden"].shape == (n, 128) and lab["token_emb"].shape == (n, 128) and lab["topk_logits"].shape == (n, 8)
    assert (lab["topk_logits"][:, :-1] >= lab["topk_logits"][:, 1:]).all()
    mismatch = lab["small_token"] != lab["large_token"]
    assert mismatch.any() and torch.equal(lab["kind"] != IDENTICAL, mismatch)
    assert torch.equal(lab["label"], (lab["kind"] == 2).long())
    # random models never answer correctly, so no small token can change the outcome
    assert not lab["large_correct"].any() and lab["label"].sum() == 0
    save_labels(lab, tmp_path / "labels.pt")
    back = load_labels(tmp_path / "labels.pt")
    part = select_seeds(back, [1, 3])
    assert set(part["seed"].tolist()) == {1, 3} and torch.equal(part["hidden"], lab["hidden"][torch.isin(lab["seed"], torch.tensor([1, 3]))])


def test_a_small_token_that_changes_the_verdict_is_divergent(pair, monkeypatch):
    """A verifier under the test's control: a response is judged by its first K tokens against the large model's own
    greedy answer (even seeds: correct iff they match it; odd seeds: correct iff they do not). A mismatch before
    position K flips the verdict whatever the continuation, so it is DIVERGENT; a later one keeps it, NEUTRAL; a
    match is IDENTICAL. Both directions are covered: the large answer is correct on even seeds, wrong on odd ones."""
    small, large = pair
    seeds, K = [0, 1, 2, 3], 3
    ver = _Verifier("LongCoT-v0", small.tokenizer, ENV_KWARGS)
    starts = {s: ver.start(s) for s in seeds}
    answers = HFEngine(large).generate([GenerationRequest(starts[s]["prompt_token_ids"], starts[s]["max_new_tokens"],
                                                          starts[s]["stop"], 0.0) for s in seeds])
    ref = {s: a[0].token_ids for s, a in zip(seeds, answers)}
    assert all(len(r) > K for r in ref.values())

    def correct(self, seed, ids, ended):
        same_start = list(ids[:K]) == ref[seed][:K]
        return same_start if seed % 2 == 0 else not same_start

    monkeypatch.setattr(_Verifier, "correct", correct)
    lab = label_tokens(small, large, "LongCoT-v0", seeds, ENV_KWARGS, top_k=8)
    assert lab["large_correct"].tolist() == [True, False, True, False]
    for s in seeds:  # the labels run along the same greedy answers
        assert lab["large_token"][lab["seed"] == s].tolist()[:len(ref[s])] == ref[s]
    mismatch = lab["small_token"] != lab["large_token"]
    early = lab["position"] < K
    expected = torch.where(mismatch, torch.where(early, DIVERGENT, NEUTRAL), IDENTICAL)
    assert torch.equal(lab["kind"], expected)
    assert torch.equal(lab["label"], (mismatch & early).long())
    for s in seeds:  # both kinds of mismatch occur, on the seeds the large model gets right and on those it gets wrong
        for kind in (DIVERGENT, NEUTRAL):
            assert (lab["kind"][lab["seed"] == s] == kind).any(), (s, kind)


def test_choose_threshold_lowest_fpr_at_target_recall():
    probs = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.5, 0.2, 0.1])
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    assert binary_metrics(probs >= 0.55, labels) == {"recall": 0.75, "precision": 0.75, "fpr": 0.25, "positive_rate": 0.5}
    tau = choose_threshold(probs, labels, target_recall=1.0)  # must keep 0.3: the best is just above 0.2
    assert 0.2 < tau <= 0.3 and binary_metrics(probs >= tau, labels)["fpr"] == 0.5
    assert 0.6 < choose_threshold(probs, labels, target_recall=0.5) <= 0.8  # recall 0.5 with no false positive


def test_router_learns_a_rare_class_and_keeps_tau(tmp_path):
    g = torch.Generator().manual_seed(0)

    def data(n):
        hidden, emb = torch.randn(n, 16, generator=g), torch.randn(n, 16, generator=g)
        topk = torch.randn(n, 8, generator=g).sort(-1, descending=True).values
        label = ((topk[:, 0] - topk[:, 1]) < 0.15).long()  # an unsure small model: a narrow top-2 gap
        return {"hidden": hidden, "token_emb": emb, "topk_logits": topk, "label": label}

    train, valid, test = data(3000), data(800), data(800)
    assert 0.05 < train["label"].float().mean() < 0.3
    router = train_router(train, valid, RouterConfig(hidden_size=16, top_k=8, width=64, n_blocks=2), target_recall=0.9, epochs=15)
    m = binary_metrics(router_probs(router, test["hidden"], test["token_emb"], test["topk_logits"]) >= router.threshold,
                       test["label"].numpy())
    assert m["recall"] >= 0.8 and m["positive_rate"] < 0.6
    router.save(tmp_path / "router.pt")
    back = Router.load(tmp_path / "router.pt")
    assert back.threshold == router.threshold
    logits = torch.randn(5, 40, generator=g)
    assert torch.equal(back.decide(test["hidden"][:5], test["token_emb"][:5], logits), router.decide(test["hidden"][:5], test["token_emb"][:5], logits))


def test_bad_arguments():
    with pytest.raises(ValueError, match="rate"):
        RateRouter(1.5)
    with pytest.raises(ValueError, match="top_k"):
        RouterConfig(hidden_size=8, top_k=0)


def test_gpu_benchmark_script_runs_tiny(monkeypatch, capsys):
    """The GPU speedup script is run elsewhere in one go: check here that it works end to end."""
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_r2r.py"
    monkeypatch.setattr(sys, "argv", [str(bench), "--tiny", "--batch-sizes", "2", "--rates", "0.5", "--new-tokens", "6"])
    runpy.run_path(str(bench), run_name="__main__")
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.lstrip().startswith("2 |")]
    assert [ln.split("|")[1].strip() for ln in lines] == ["large", "small", "router only", "routed 50%"]
