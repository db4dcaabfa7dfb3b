"""The evaluation harness (`evaluate`, `thinkgym eval`): greedy and sampling modes, pass@k for every k <= n
against the unbiased estimator, per-problem records, exact dataset coverage; in-training evaluation; the
trainer's text samples; `sample --format steps --text`; `thinkgym plot`."""

import json
from collections import Counter
from types import SimpleNamespace

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from thinkgym.agents.cli import main
from thinkgym.agents.evaluate import evaluate
from thinkgym.agents.learner.config import GRPOConfig
from thinkgym.agents.learner.trainer import GRPOTrainer
from thinkgym.agents import plot
from thinkgym.agents.plot import read_scalars
from thinkgym.agents.rollout.engine import Completion
from thinkgym.envs import builtin_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

CORRECT_SAMPLES = {"10": 0, "11": 1, "12": 2, "13": 4}  # gold answer -> how many of a problem's 4 samples are right


class ScriptedEngine:
    """Answers a dataset problem (`Problem <gold>`) right on its first CORRECT_SAMPLES[gold] requests, wrong after."""

    logprobs_are_trainers = False

    def __init__(self):
        tok = builtin_tokenizer()
        self.policy = SimpleNamespace(tokenizer=tok, eos_token_id=tok.eos_token_id)
        self.asked: Counter = Counter()

    def generate(self, requests):
        out = []
        for r in requests:
            gold = self.policy.tokenizer.decode(r.prompt_ids).split("Problem ")[1].split()[0]
            right = self.asked[gold] < CORRECT_SAMPLES.get(gold, 0)
            self.asked[gold] += 1
            text = "</think>\\boxed{" + (gold if right else "-1") + "}"
            ids = self.policy.tokenizer.encode(text)
            out.append([Completion(ids, text, [0.0] * len(ids), "eos", 0.0)])
        return out

    def sync_weights(self):
        pass


def dataset(tmp_path, golds):
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps({"problem": f"Problem {g} .", "answer": g}) + "\n" for g in golds))
    return {"task": "math_dataset", "task_kwargs": {"path": str(path), "prompt_suffix": ""}}


def test_pass_at_k_for_every_k_is_the_unbiased_estimator_and_the_records_hold_the_scores(tmp_path):
    """c = 0, 1, 2, 4 right of n = 4: pass@k = mean over problems of 1 - C(4-c, k) / C(4, k), computed by hand."""
    out = tmp_path / "records.jsonl"
    res = evaluate(ScriptedEngine(), "LongCoT-v0", range(4), n=4, env_kwargs=dataset(tmp_path, list(CORRECT_SAMPLES)),
                   temperature=1.0, out=out, problem_seeds=True)
    assert res["pass@1"] == pytest.approx((0 + 1 / 4 + 2 / 4 + 1) / 4)
    assert res["pass@2"] == pytest.approx((0 + (1 - 3 / 6) + (1 - 1 / 6) + 1) / 4)
    assert res["pass@3"] == pytest.approx((0 + (1 - 1 / 4) + 1 + 1) / 4)
    assert res["pass@4"] == pytest.approx(3 / 4)
    assert res["avg@4"] == res["accuracy"] == res["pass@1"]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["gold"] for r in records) == sorted(CORRECT_SAMPLES)  # each problem once
    for r in records:
        assert r["prompt"].startswith(f"Problem {r['gold']}")
        assert sum(r["correct"]) == CORRECT_SAMPLES[r["gold"]] and r["rewards"] == [float(c) for c in r["correct"]]
        assert len(r["completions"]) == len(r["tokens"]) == len(r["chunks"]) == len(r["reward_components"]) == 4
        assert r["answers"] == [r["gold"] if c else "-1" for c in r["correct"]]
    assert res["avg@4"] == pytest.approx(sum(sum(r["correct"]) / 4 for r in records) / len(records))


def test_greedy_is_its_own_mode_one_answer_per_problem_and_no_pass_at_k(tmp_path):
    engine = ScriptedEngine()
    res = evaluate(engine, "LongCoT-v0", range(4), n=4, env_kwargs=dataset(tmp_path, list(CORRECT_SAMPLES)), temperature=0.0,
                   problem_seeds=True)
    assert sum(engine.asked.values()) == 4
    assert res["accuracy"] == pytest.approx(3 / 4)  # every problem's first answer is right but that of gold 10
    assert not [k for k in res if "@" in k]


def test_problem_seeds_cover_a_dataset_exactly_once(tmp_path):
    golds = [str(g) for g in range(100, 120)]
    seen = {}
    for problem_seeds in (True, False):
        engine = ScriptedEngine()
        evaluate(engine, "LongCoT-v0", range(20), env_kwargs=dataset(tmp_path, golds), temperature=0.0, problem_seeds=problem_seeds)
        seen[problem_seeds] = engine.asked
    assert sorted(seen[True]) == golds and set(seen[True].values()) == {1}
    assert len(seen[False]) < 20  # a seed draws its problem: some are posed twice, some never


def test_cli_eval_writes_per_problem_records_reproducibly_and_refuses_greedy_samples(tmp_path, capsys):
    args = ["eval", "--env", "DelethinkDemo-v0", "--env-kwargs", json.dumps({"max_chunks": 1}), "--seeds", "3", "--n", "2",
            "--temperature", "1", "--seed", "3", "--device", "cpu"]
    results = []
    for name in ("a", "b"):
        main([*args, "--out", str(tmp_path / f"{name}.jsonl")])
        results.append(json.loads(capsys.readouterr().out))
    a = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in a] == [0, 1, 2] and a == b  # the same --seed, the same samples
    assert all(r["prompt"].startswith("Add:") and r["gold"].isdigit() and len(r["completions"]) == 2 for r in a)
    res = results[0]
    assert (res["mode"], res["n"], res["problems"]) == ("sampling", 2, 3) and {"pass@1", "pass@2"} <= set(res)
    assert res["avg@2"] == pytest.approx(sum(sum(r["correct"]) / 2 for r in a) / 3)
    assert res["mean_tokens"] == pytest.approx(sum(sum(r["tokens"]) for r in a) / 6)
    with pytest.raises(SystemExit, match="greedy decoding gives one answer per problem"):
        main(["eval", "--n", "4", "--temperature", "0", "--seeds", "1", "--device", "cpu"])


def small_cfg(tmp_path, **kw):
    base = dict(env="DelethinkDemo-v0", env_kwargs={"max_chunks": 2}, model="tiny", output_dir=str(tmp_path / "run"), steps=2,
                prompts_per_step=2, num_generations=2, micro_batch_size=4, eval_every=10, eval_prompts=2, eval_samples=4,
                eval_temperature=0.0, log_completions_every=1, save_every=0, reward="correctness")
    return GRPOConfig(**{**base, **kw})


def test_a_run_shorter_than_eval_every_ends_on_a_held_out_number_and_greedy_logs_no_pass_at_k(tmp_path):
    cfg = small_cfg(tmp_path)
    last = GRPOTrainer(cfg).train()
    scalars = read_scalars(cfg.output_dir)
    assert [step for step, _ in scalars["eval/accuracy"]] == [0, 2] and "eval/accuracy" in last
    assert not [t for t in scalars if t.startswith(("eval/pass@", "eval/avg@"))]
    acc = EventAccumulator(cfg.output_dir, size_guidance={"tensors": 0})
    acc.Reload()
    text = acc.Tensors("completions/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "**prompt**" in text and "Add:" in text and "correctness 0" in text
    gold = text.split("**gold answer** `")[1].split("`")[0]
    assert gold.isdigit()  # the demo's running sum


def test_sampled_in_training_evaluation_logs_pass_at_every_k(tmp_path):
    cfg = small_cfg(tmp_path, steps=1, eval_every=1, eval_temperature=1.0, eval_samples=3, log_completions_every=0)
    GRPOTrainer(cfg).train()
    tags = set(read_scalars(cfg.output_dir))
    assert {"eval/avg@3", "eval/pass@1", "eval/pass@2", "eval/pass@3"} <= tags


def test_sample_steps_text_decodes_each_steps_ids(tmp_path, capsys):
    out = tmp_path / "steps.jsonl"
    main(["sample", "--env", "DelethinkDemo-v0", "--env-kwargs", json.dumps({"max_chunks": 2}), "--n", "1", "--seeds", "1",
          "--seed-start", "0", "--out", str(out), "--format", "steps", "--text", "--device", "cpu"])
    tok = builtin_tokenizer()
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert recs and recs[0]["prompt_text"].startswith("Add:")
    for r in recs:
        assert r["prompt_text"] == tok.decode(r["prompt_ids"], skip_special_tokens=False)
        assert r["response_text"] == tok.decode(r["response_ids"], skip_special_tokens=False)
    with pytest.raises(SystemExit, match="--text"):
        main(["sample", "--out", str(tmp_path / "e.jsonl"), "--seeds", "1", "--text", "--device", "cpu"])


def test_ema_is_tensorboards_smoothing():
    assert plot.ema([0.0, 10.0, 10.0], 0.5) == pytest.approx([0.0, 5.0, 7.5])
    assert plot.ema([1.0, 3.0], 0.0) == [1.0, 3.0]


def test_plot_draws_the_training_quantities_smoothed_and_asked_tags(tmp_path):
    cfg = small_cfg(tmp_path, steps=3, eval_every=0, beta=0.01, log_completions_every=0)
    GRPOTrainer(cfg).train()
    fig = plot.run_figure(cfg.output_dir, smooth=0.5, tags=["time/*"])
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    for title in ("reward", "reward components", "loss", "entropy", "grad norm", "KL to the reference", "clip fraction",
                  "learning rate", "time/train_s"):
        assert title in panels, sorted(panels)
    raw = [v for _, v in read_scalars(cfg.output_dir)["loss"]]
    smoothed = next(line for line in panels["loss"].get_lines() if line.get_label() == "loss")
    assert list(smoothed.get_ydata()) == pytest.approx(plot.ema(raw, 0.5))
    assert "rewards/correctness/mean" in [line.get_label() for line in panels["reward components"].get_lines()]
    with pytest.raises(ValueError, match="match no scalar"):
        plot.run_figure(cfg.output_dir, tags=["nope/*"])
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        plot.run_figure(cfg.output_dir, smooth=1.0)
    main(["plot", cfg.output_dir, "--out", str(tmp_path / "c.png"), "--smooth", "0.5", "--tags", "time/*,reward_std"])
    assert (tmp_path / "c.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="match no scalar"):
        main(["plot", cfg.output_dir, "--tags", "nope"])
