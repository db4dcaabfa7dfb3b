"""The paper's claims in miniature: the measured compute counts, per-episode evaluation metrics, and
both benchmark scripts (benchmarks/markovian_vs_longcot.py, benchmarks/saturn_curriculum.py) in a tiny mode."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from thinkgym.agents.evaluate import evaluate
from thinkgym.agents.learner.metrics import compute_counts
from thinkgym.agents.policy import Policy
from thinkgym.agents.rollout.engine import make_engine
from thinkgym.agents.types import Batch, Episode, Row, Step

ROOT = Path(__file__).resolve().parents[1]


def bench(script, *args):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--threads", "1", *args], cwd=ROOT,
                          capture_output=True, text=True, env=dict(os.environ), timeout=900)


def test_compute_counts_are_the_rows_and_rollout_segments_actually_run(tmp_path):
    rows = [Row([5] * 10, 6, [1, 1, 1, 0], [0.0] * 4, 0), Row([5] * 5, 2, [1, 1, 1], [0.0] * 3, 1)]
    episodes = [Episode(0, 0, [Step([5] * 6, [5] * 4, [0.0] * 4, "length"), Step([5] * 3, [5] * 2, [0.0] * 2, "eos")])]
    counts = compute_counts(Batch(episodes, rows, {}), iterations=2)
    # a forward over T tokens computes T(T+1)/2 query-key pairs; a prefill of p then g decoded tokens as many as p+g at once
    assert counts == {"compute/train_tokens": 2 * 15, "compute/train_attention_pairs": 2 * (55 + 15), "compute/trained_tokens": 6,
                      "compute/rollout_tokens": 15, "compute/rollout_attention_pairs": 55 + 15}


def test_evaluate_reports_the_mean_of_each_per_episode_metric():
    engine = make_engine("hf", Policy.tiny(), 0)
    kw = {"max_chunks": 2, "task_kwargs": {"n_terms": 3}}
    res = evaluate(engine, "DelethinkDemo-v0", range(3), n=2, env_kwargs=kw,
                   per_episode={"tokens": lambda ep: ep.num_tokens, "first_seed": lambda ep: float(ep.seed == 0)})
    assert res["tokens"] == pytest.approx(res["mean_tokens"])
    assert res["first_seed"] == pytest.approx(1 / 3)


@pytest.mark.slow
def test_markovian_vs_longcot_runs_both_arms_and_the_scaling_evaluation(tmp_path):
    out, png = tmp_path / "mvl", tmp_path / "scaling.png"
    args = ["--seeds", "0", "--sft-steps", "5", "--sft-max-steps", "5", "--sft-seeds", "20", "--rl-steps", "1",
            "--held-out", "2", "--samples", "2", "--scaling-problems", "1",
            "--scaling-terms", "8,12", "--scaling-chunks", "5,6", "--out", str(out), "--plot", str(png)]
    proc = bench("markovian_vs_longcot.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert png.exists() and "| delethink-RL | LongCoT-v0 |" in (out / "summary.md").read_text()
    scaling = json.loads((out / "s0" / "scaling.json").read_text())
    assert sorted(scaling) == sorted(f"{a}/{t}/{i}" for a in ("delethink", "longcot") for t in (8, 12) for i in (5, 6))
    for key, r in scaling.items():
        chunks = int(key.split("/")[2])
        assert r["budget"] == 64 + (chunks - 1) * 32 and r["mean_tokens"] <= r["budget"]
        if key.startswith("delethink"):
            assert r["mean_chunks"] <= chunks
    train = json.loads((out / "s0" / "train.json").read_text())
    # one warm start on both formats, its gate checked in each (5 steps: one round and a verdict)
    gate = train["warm_start_gate"]
    assert set(gate["gate_accuracies"]) == {"DelethinkDemo-v0", "LongCoT-v0"} and gate["sft_steps"] == 5 and gate["passed"] is False
    for arm in ("delethink", "longcot"):
        c = train[arm]["compute"]
        assert c["trained_tokens"] > 0 and c["flops_per_trained_token"] > c["learner_flops_per_trained_token"] > 0
        assert 0 < c["learner_attention_share"] < 1 and c["rows_tokens_per_trained_token"] >= 1
        assert set(train[arm]["held_out"]) == {"delethink_env_greedy", "delethink_env_sampled", "longcot_env_greedy", "longcot_env_sampled"}
    # every Delethink chunk after the first re-reads the query and the carryover: more learner tokens per trained token
    assert train["delethink"]["compute"]["rows_tokens_per_trained_token"] > train["longcot"]["compute"]["rows_tokens_per_trained_token"]
    again = bench("markovian_vs_longcot.py", *args, "--report-only")  # reads the results on disk, runs nothing
    assert again.returncode == 0 and json.loads((out / "summary.json").read_text())["seeds"] == [0]


@pytest.mark.slow
def test_saturn_curriculum_runs_three_arms_from_one_warm_start(tmp_path):
    out = tmp_path / "sat"
    proc = bench("saturn_curriculum.py", "--seeds", "0", "--sft-steps", "0", "--rl-steps", "1", "--prompts", "2", "--group-size", "2",
                 "--budget", "16", "--held-out", "2", "--samples", "2", "--levels", "2,3,2;2,3,3", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "s0" / "result.json").read_text())
    assert set(res) == {"warm_start", "curriculum", "hardest", "easiest"}
    assert res["curriculum"]["final_level"] in (0, 1) and res["hardest"]["final_level"] is None
    assert all(0 <= r["pass@1"] <= 1 for r in res.values())
    assert "n,k,l = 2,3,3" in (out / "summary.md").read_text()


def test_saturn_curriculum_refuses_malformed_levels(tmp_path):
    proc = bench("saturn_curriculum.py", "--levels", "3,5", "--out", str(tmp_path))
    assert proc.returncode == 2 and "n,k,l triples" in proc.stderr
