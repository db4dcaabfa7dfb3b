"""Soft scores from crafted completions with known log-probabilities, and the planner's selection and metrics."""

import math

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from thinkgym.agents.methods.discriminator import Discriminator, parse_verdict, soft_score, token_index
from thinkgym.agents.methods.planner import NO_ANSWER, Planner, random_selection_metrics, ranking, ranking_metrics
from thinkgym.agents.rollout.engine import Completion
from thinkgym.envs import builtin_tokenizer
from thinkgym.envs.tasks.text2sql import finish_sql
from thinkgym.envs.text2sql import Text2SQLEnv


def crafted(tok, text: str, word: str, p_word: float, p_other: float = 0.9) -> Completion:
    """A completion of `text` whose every token has probability p_other, except the one covering `word`'s first char."""
    ids = tok.encode(text, add_special_tokens=False)
    pos = text.rindex(word)
    logps = []
    for k in range(len(ids)):
        start, end = len(tok.decode(ids[:k])), len(tok.decode(ids[: k + 1]))
        logps.append(math.log(p_word if start <= pos < end else p_other))
    return Completion(ids, text, logps, "eos", 0.0)


@pytest.fixture(scope="module")
def bpe():
    """A small trained BPE tokenizer, so verdict words share tokens with spaces and quotes."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|endoftext|>"])
    core.train_from_iterator(['The query is right. {"correct": true}', 'It is wrong {"correct": false}'] * 50, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>")


@pytest.mark.parametrize("which", ["bytes", "bpe"])
def test_soft_score_reads_the_verdict_token_probability(which, bpe):
    tok = builtin_tokenizer() if which == "bytes" else bpe
    c = crafted(tok, 'Okay, the join is right. {"correct": true}', "true", 0.8)
    j = soft_score(c, tok)
    assert j.verdict is True and j.p == pytest.approx(0.8) and j.score == pytest.approx(0.8)
    c = crafted(tok, 'The filter is wrong. {"correct": false}', "false", 0.7)
    j = soft_score(c, tok)
    assert j.verdict is False and j.p == pytest.approx(0.7) and j.score == pytest.approx(0.3)


def test_merged_token_covering_the_word_is_the_one_read(bpe):
    text = 'So the answer: {"correct": true}'
    ids = bpe.encode(text, add_special_tokens=False)
    k = token_index(bpe, ids, text.rindex("true"))
    assert bpe.decode([ids[k]]) == " true"  # the space and the word are one token: its p is used
    assert bpe.decode(ids[:k]) + " " == text[: text.rindex("true")]


def test_last_verdict_wins_and_json_is_repaired():
    tok = builtin_tokenizer()
    text = 'Maybe {"correct": false} at first. Then {"correct": True,} and {"note": 1}'
    assert parse_verdict(text) == (True, text.rindex("True"))
    c = crafted(tok, text, "True", 0.6)
    assert soft_score(c, tok).score == pytest.approx(0.6)
    # a later block without the key, or with a non-boolean value, does not count
    assert parse_verdict('{"correct": false} {"correct": "maybe"}') == (False, 12)


@pytest.mark.parametrize("text", ["no verdict at all", '{"correct": tru}', '{"answer": true}', ""])
def test_fallback_when_no_verdict_parses(text):
    tok = builtin_tokenizer()
    ids = tok.encode(text, add_special_tokens=False)
    c = Completion(ids, text, [0.0] * len(ids), "length")
    assert soft_score(c, tok).score == 0.5 and not soft_score(c, tok).parsed
    assert soft_score(c, tok, fail_value=-0.5).score == -0.5


def test_binary_score_without_logprobs():
    tok = builtin_tokenizer()
    text = 'x {"correct": false}'
    j = soft_score(Completion(tok.encode(text), text, [], "eos", 0.0), tok)
    assert (j.score, j.verdict, j.p) == (0.0, False, None)


class ScriptedEngine:
    """An engine whose completions are a function of the prompt text (log-probabilities chosen by the script)."""

    def __init__(self, tok, script):
        self.tok, self.script, self.requests = tok, script, []

    def generate(self, requests):
        self.requests += requests
        out = []
        for r in requests:
            prompt = self.tok.decode(r.prompt_ids)
            out.append([self.script(prompt, i) for i in range(r.n)])
        return out

    def sync_weights(self):
        pass


def test_discriminator_prompts_greedily_and_scores(bpe):
    tok = builtin_tokenizer()
    engine = ScriptedEngine(tok, lambda prompt, i: crafted(tok, '{"correct": true}' if "SELECT 1" in prompt else '{"correct": false}',
                                                            "true" if "SELECT 1" in prompt else "false", 0.9))
    disc = Discriminator(engine, tok, max_new_tokens=32)
    scores = [j.score for j in disc.judge([("How many?", "SELECT 1"), ("How many?", "SELECT 2", "Schema:\nt(x)")])]
    assert scores == pytest.approx([0.9, 0.1])
    assert all(r.temperature == 0.0 and r.max_new_tokens == 32 for r in engine.requests)
    prompt = tok.decode(engine.requests[1].prompt_ids)
    assert "Schema:\nt(x)" in prompt and prompt.endswith("<think>\nOkay,") and '"correct"' in prompt


def test_planner_selects_by_score_with_execution_feedback():
    tok = builtin_tokenizer()
    env = Text2SQLEnv(task_kwargs={"templates": ("count",)})
    _, info = env.reset(seed=0)
    gold = env.problem.answer
    texts = [finish_sql("", gold), finish_sql("", gold.replace("COUNT(*)", "COUNT(*) + 1")), finish_sql("", "SELECT nope FROM customers"), "no answer"]
    gen = ScriptedEngine(tok, lambda prompt, i: Completion(tok.encode(texts[i]), texts[i], [0.0] * len(tok.encode(texts[i])), "eos", 0.0))

    def judge(prompt, i):  # fond of non-executable SQL, lukewarm about the gold
        verdict = "true" if "nope" in prompt else "false"
        p = 0.95 if "nope" in prompt else (0.4 if "+ 1" not in prompt else 0.9)
        return crafted(tok, f'{{"correct": {verdict}}}', verdict, p)

    disc = Discriminator(ScriptedEngine(tok, judge), tok, max_new_tokens=16)
    plain = Planner(gen, disc, n=4)
    cands = plain.score(env, plain.sample(info))
    assert [c.correct for c in cands] == [True, False, False, False]
    assert [round(c.score, 2) for c in cands] == [0.6, 0.1, 0.95, NO_ANSWER]
    assert plain.select(cands) == 2
    checked = Planner(gen, disc, n=4, check_exec=True)
    action = checked.act(env, info)
    assert [c.executable for c in checked.candidates] == [True, True, False, None]
    assert str(action) == texts[0] and env.step(action)[1] == 1.0


def test_ranking_metrics_by_hand():
    groups = [([0.9, 0.2, 0.6], [True, False, False], ["a", "b", "c"]),  # correct ranked first
              ([0.7, 0.7], [False, True], ["b", "a"]),  # tie: broken by the smaller answer, "a" (correct)
              ([0.8, 0.1], [False, False], ["x", "y"])]  # no correct candidate
    m = ranking_metrics(groups)
    assert m["pws_acc"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m["hit@1"] == 1.0 and m["mrr"] == 1.0 and m["exec_acc"] == pytest.approx(2 / 3)
    # predicted positive: 0.9(T) 0.6(F) 0.7(F) 0.7(T) 0.8(F) -> tp 2, fp 3, fn 0, tn 2
    assert m["f1_pos"] == pytest.approx(4 / 7) and m["f1_neg"] == pytest.approx(4 / 7)
    assert ranking([0.5, 0.5, 0.9], ["b", "a", "z"]) == [2, 1, 0]
    rand = random_selection_metrics(groups, draws=2000)
    assert rand["pws_acc"] == pytest.approx(0.5, abs=0.03) and rand["exec_acc"] == pytest.approx((1 / 3 + 1 / 2) / 3, abs=0.03)
    assert math.isnan(ranking_metrics([([0.3], [False], ["a"])])["pws_acc"])


def test_soft_score_matches_the_model_on_a_forced_verdict():
    """With a real (tiny) model and engine: p is the softmax probability of the verdict token at its position."""
    import torch

    from thinkgym.agents.policy import Policy
    from thinkgym.agents.rollout.engine import GenerationRequest
    from thinkgym.agents.rollout.hf.engine import HFEngine

    policy = Policy.tiny(seed=3, device="cpu")
    tok = policy.tokenizer
    prompt, verdict = tok.encode("Is SELECT 1 right?<think>\nOkay,"), tok.encode(' fine. {"correct": false}')
    out = HFEngine(policy, seed=0).generate([GenerationRequest(prompt, len(verdict), temperature=0.0, prefix_ids=verdict)])[0][0]
    assert out.token_ids == verdict
    j = soft_score(out, tok)
    with torch.no_grad():
        logits = policy.model(torch.tensor([prompt + verdict])).logits[0]
    k = len(verdict) - len("false}")  # the byte tokenizer: one token per character
    p = torch.softmax(logits[len(prompt) + k - 1].float(), -1)[verdict[k]].item()
    assert j.verdict is False and j.p == pytest.approx(p, rel=1e-4) and j.score == pytest.approx(1 - p, rel=1e-4)
