"""REDI: the objective's value and gradient, pairing counts, the sampling pipeline's resume, stage 2's
resume after a stop signal, the CLI and its errors."""

import json
import os
import signal

import pytest
import torch

from thinkgym.agents import interrupt
from thinkgym.agents.cli import main
from thinkgym.agents.methods.redi import (Trace, build_redi_data, cut_after_first_error, first_error, label_by_reference, load_traces,
                                  record_trace, redi_loss, sequence_logprobs, train_redi)
from thinkgym.agents.methods.sample import sample_traces
from thinkgym.agents.plot import read_scalars
from thinkgym.agents.policy import Policy
from thinkgym.agents.rollout.hf.engine import HFEngine
from thinkgym.agents.types import Row

ENV, KW = "LongCoT-v0", {"task_kwargs": {"n_terms": 2}, "max_thinking_tokens": 12}


@pytest.fixture(scope="module")
def policy():
    return Policy.tiny(seed=3, device="cpu")


def trace(policy, prompt, response, correct):
    return record_trace({"prompt": prompt, "response": response, "correct": correct}, policy.tokenizer)


def test_loss_matches_hand_computation():
    # pair 1: -(-2/4) + 0.8 * (-3/2) = -0.7 ; pair 2: -(-6/3) + 0.8 * (-1/5) = 1.84 ; mean 0.57
    loss = redi_loss(torch.tensor([-2.0, -6.0]), torch.tensor([4.0, 3.0]), torch.tensor([-3.0, -1.0]), torch.tensor([2.0, 5.0]))
    assert loss.item() == pytest.approx(0.57, abs=1e-6)
    assert redi_loss(torch.tensor([-2.0]), torch.tensor([0.0]), torch.tensor([-3.0]), torch.tensor([2.0]), alpha=0.0).item() == 2.0


def test_sequence_logprobs_sum_over_chunks_match_a_plain_forward(policy):
    """log π(y|x) of a two-chunk trace is the sum of each chunk's tokens scored in its own context."""
    tok = policy.tokenizer
    rec = {"prompt": "Add: 1 2\n", "response": "x", "correct": True,
           "steps": [{"prompt_ids": tok.encode("Add: 1 2\n"), "response_ids": tok.encode("1+2=3")},
                     {"prompt_ids": tok.encode("carry 3\n"), "response_ids": tok.encode("</think>\\boxed{3}")}]}
    t = record_trace(rec, tok)
    assert len(t.rows) == 2 and t.rows[-1].input_ids[-1] == tok.eos_token_id
    with torch.no_grad():
        total, length = sequence_logprobs(policy, [t])
        want = 0.0
        for r in t.rows:
            logits = policy.model(input_ids=torch.tensor([r.input_ids])).logits[0].log_softmax(-1)
            want += sum(logits[i - 1, r.input_ids[i]].item() for i in range(r.prompt_len, len(r.input_ids)))
    assert total.item() == pytest.approx(want, rel=1e-5)
    assert length.item() == t.num_tokens == len(tok.encode("1+2=3")) + len(tok.encode("</think>\\boxed{3}")) + 1


def test_gradient_raises_positive_and_lowers_negative(policy):
    model = Policy.tiny(seed=3, device="cpu")
    w, l = trace(model, "Add: 4 5\n", "4+5=9\n</think>\\boxed{9}", True), trace(model, "Add: 4 5\n", "4+5=8\n</think>\\boxed{8}", False)

    def mean_logps():
        with torch.no_grad():
            s, n = sequence_logprobs(model, [w, l])
        return (s / n).tolist()

    (w0, l0) = mean_logps()
    s, n = sequence_logprobs(model, [w, l])
    redi_loss(s[:1], n[:1], s[1:], n[1:], alpha=0.8).backward()
    with torch.no_grad():  # one small plain gradient step
        for p in model.model.parameters():
            p -= 1e-2 * p.grad
    (w1, l1) = mean_logps()
    assert w1 > w0 and l1 < l0
    # through the trainer (AdamW): the shared prefix "4+5=" may rise in both, but the gap widens
    hist = train_redi(model, [(w, l)], steps=5, batch_size=1, lr=1e-3)
    (w2, l2) = mean_logps()
    assert w2 > w1 and w2 - l2 > w1 - l1 and hist[-1]["loss"] < hist[0]["loss"]


class SignalAt:
    """A writer that sends this process SIGINT, as Ctrl-C would, when step `at` is logged."""

    def __init__(self, at: int):
        self.at = at

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        if step == self.at and interrupt.requested() is None:
            os.kill(os.getpid(), signal.SIGINT)

    def flush(self) -> None:
        pass


def test_stage_2_stopped_by_a_signal_resumes_to_the_uninterrupted_weights(tmp_path):
    """Ctrl-C at step 3 of 6 saves checkpoint-3; resuming into a policy of other weights ends on exactly the
    weights of a run that was never stopped (weights, AdamW state, schedule and pair sampler all restored)."""
    def pairs(p):
        sums = [(4, 5), (2, 7), (3, 3)]
        return [(trace(p, f"Add: {a} {b}\n", f"{a}+{b}={a + b}\n</think>\\boxed{{{a + b}}}", True),
                 trace(p, f"Add: {a} {b}\n", f"{a}+{b}={a + b + 1}\n</think>\\boxed{{{a + b + 1}}}", False)) for a, b in sums]

    settings = dict(steps=6, batch_size=2, lr=1e-3, seed=1, log_every=0)
    reference = Policy.tiny(seed=3, device="cpu")
    train_redi(reference, pairs(reference), **settings)

    stopped = Policy.tiny(seed=3, device="cpu")
    with interrupt.stop_on_signal():
        first = train_redi(stopped, pairs(stopped), **settings, writer=SignalAt(3), output_dir=tmp_path)
    assert len(first) == 3 and (tmp_path / "latest").read_text() == "checkpoint-3"
    resumed = Policy.tiny(seed=5, device="cpu")  # other weights: the checkpoint's must replace them
    rest = train_redi(resumed, pairs(resumed), **settings, output_dir=tmp_path, resume=True)
    assert len(rest) == 3 and (tmp_path / "latest").read_text() == "checkpoint-6"
    want, got = reference.model.state_dict(), resumed.model.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_pairing_counts_only_positive_and_only_negative_prompts(policy):
    ts = [trace(policy, "A", "a1", True), trace(policy, "A", "a2", False), trace(policy, "A", "a3", True),
          trace(policy, "A", "a4", False), trace(policy, "A", "a5", False),
          trace(policy, "B", "b1", True), trace(policy, "B", "b2", True), trace(policy, "C", "c1", False)]
    one = build_redi_data(ts)
    assert one.counts == {"traces": 8, "prompts": 3, "positives": 4, "negatives": 4, "prompts_with_both": 1,
                          "prompts_only_positive": 1, "prompts_only_negative": 1, "pairs": 1}
    assert len(one.positives) == 4 and all(t.correct for t in one.positives)
    every = build_redi_data(ts, pairs_per_prompt=None)
    assert every.counts["pairs"] == 2
    assert all(w.correct and not l.correct and w.prompt == l.prompt == "A" for w, l in every.pairs)
    assert len({id(w) for w, _ in every.pairs}) == 2 and len({id(l) for _, l in every.pairs}) == 2


def test_negative_is_cut_after_its_first_wrong_token(policy):
    tok = policy.tokenizer
    ref = tok.encode("1|79\n1+7=8|9\n8+9=17|\n</think>\\boxed{17}") + [tok.eos_token_id]
    wrong = trace(policy, "Add: 1 7 9\n", "1|79\n1+7=9|9\n9+9=18|\n</think>\\boxed{18}", False)
    k = first_error(wrong, ref)
    assert k == len("1|79\n1+7=")
    cut = cut_after_first_error(wrong, ref)
    row = cut.rows[0]
    assert tok.decode(row.input_ids[row.prompt_len:]) == "1|79\n1+7=9" and cut.num_tokens == k + 1 and not cut.correct
    assert row.input_ids[:row.prompt_len] == wrong.rows[0].input_ids[:row.prompt_len]
    right = trace(policy, "Add: 1 7 9\n", "1|79\n1+7=8|9\n8+9=17|\n</think>\\boxed{17}", True)
    r = right.rows[0]
    early = Trace("Add: 1 7 9\n", False, [Row(r.input_ids[:r.prompt_len + 10], r.prompt_len, [1] * 10, [0.0] * 10, 0)])
    assert first_error(right, ref) is None and first_error(early, ref) is None  # nothing wrong; a prefix that stopped early
    with pytest.raises(ValueError, match="no first error"):
        cut_after_first_error(right, ref)
    with pytest.raises(ValueError, match="one-row trace"):
        first_error(Trace("p", False, right.rows * 2), ref)


def test_label_by_reference_fails_a_right_total_reached_through_a_wrong_step(policy):
    tok = policy.tokenizer
    prompt = "Add: 1 7 9\n"
    ref = {prompt: tok.encode("1|79\n1+7=8|9\n8+9=17|\n</think>\\boxed{17}") + [tok.eos_token_id]}
    right = trace(policy, prompt, "1|79\n1+7=8|9\n8+9=17|\n</think>\\boxed{17}", True)
    lucky = trace(policy, prompt, "1|79\n1+7=9|9\n9+9=17|\n</think>\\boxed{17}", True)  # two slips, right total
    wrong = trace(policy, prompt, "1|79\n1+7=8|9\n8+9=18|\n</think>\\boxed{18}", False)
    assert [t.correct for t in label_by_reference([right, lucky, wrong], ref)] == [True, False, False]
    assert build_redi_data(label_by_reference([right, lucky], ref)).counts["pairs"] == 1
    with pytest.raises(ValueError, match="no worked solution for 1 prompt"):
        label_by_reference([trace(policy, "Add: 2 2\n", "4", True)], ref)


def test_bad_inputs_are_named(tmp_path, policy):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1.*missing \['correct'\]"):
        load_traces(bad, policy.tokenizer)
    bad.write_text(json.dumps({"prompt": "p", "response": "r", "correct": "maybe"}) + "\n")
    with pytest.raises(ValueError, match="'correct' must be"):
        load_traces(bad, policy.tokenizer)
    pair = (trace(policy, "p", "r", True), trace(policy, "p", "s", False))
    for alpha in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            train_redi(policy, [pair], steps=1, alpha=alpha)
    with pytest.raises(ValueError, match="no .*pairs"):
        train_redi(policy, [], steps=1)
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"prompt": "p", "response": "r", "correct": True}) + "\n")
    with pytest.raises(SystemExit, match="thinkgym redi: error: alpha must be in \\[0, 1\\]"):
        main(["redi", "--data", str(good), "--output-dir", str(tmp_path / "o"), "--alpha", "2"])


def test_sample_resumes_and_feeds_the_redi_cli(tmp_path, policy):
    out = tmp_path / "traces.jsonl"
    engine = HFEngine(policy, seed=0)
    sample_traces(engine, ENV, range(3), out, n=2, env_kwargs=KW, temperature=1.0, seeds_per_batch=2)
    lines = out.read_text().splitlines()
    rec = json.loads(lines[0])
    assert {"prompt", "response", "prompt_ids", "response_ids", "reward", "correct", "seed", "sample"} <= set(rec)
    assert policy.tokenizer.decode(rec["prompt_ids"]) == rec["prompt"] and rec["prompt"].startswith("Add:")
    # an interrupted run: the last seed's second sample is torn
    out.write_text("\n".join(lines[:5]) + "\n" + lines[5][:20])
    res = sample_traces(engine, ENV, range(4), out, n=2, env_kwargs=KW, temperature=1.0)
    assert res["skipped_seeds"] == 2 and res["new_traces"] == 4
    seeds = [json.loads(x)["seed"] for x in out.read_text().splitlines()]
    assert sorted(seeds) == [0, 0, 1, 1, 2, 2, 3, 3]

    # a correct and a wrong trace per prompt: the CLI trains, checkpoints and logs like `train`
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Add: {a} {b}\n", "response": f"{a}+{b}={s}\n</think>\\boxed{{{s}}}",
                                        "correct": s == a + b}) + "\n" for a, b in [(1, 2), (3, 4)] for s in (a + b, a + b + 1)))
    run = tmp_path / "run"
    main(["redi", "--data", str(data), "--output-dir", str(run), "--env", ENV, "--env-kwargs", json.dumps(KW), "--steps", "2",
          "--sft-steps", "2", "--eval-every", "1", "--eval-prompts", "2", "--learning-rate", "1e-4"])
    tags = set(read_scalars(run))
    assert {"loss", "logps/chosen", "logps/rejected", "eval/accuracy", "sft/loss", "learning_rate"} <= tags
    again = Policy.from_pretrained(str(run / "checkpoint-2" / "policy"), device="cpu")
    assert again.model.config.hidden_size == policy.model.config.hidden_size
