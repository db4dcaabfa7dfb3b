"""benchmarks/gpu/real_shape.py in its `--tiny` mode on the CPU: `thinkgym train` runs for this checkout and
a baseline checkout (here this one again) in their own processes, every step is recorded with its times,
MFU and log ratio, and the speed-up of one over the other is computed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_real_shape_benchmark_runs_both_checkouts_and_compares_them(tmp_path):
    out = tmp_path / "rs"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu" / "real_shape.py"), "--tiny", "--steps", "1", "--max-chunks", "1",
                           "--out", str(out), "--baseline", str(ROOT)], capture_output=True, text=True, timeout=400,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads((out / "results.json").read_text())
    assert [(s["side"], s["micro_batch_size"], s["returncode"]) for s in res["sides"]] == [("current", 4, 0), ("baseline", 1, 0)]
    for side in res["sides"]:
        (line,) = side["lines"]
        assert line["step"] == 1 and line["step_s"] >= line["rollout_s"] + line["learner_s"] > 0
        assert 0 < line["learner_mfu"] < 1 and line["rollout_tok_s"] > 0 and line["chunks_mean"] == 1
        assert 0 < line["rollout_frac_of_ceiling"] < 1  # the tiny policy's decode is launch-bound, far below bandwidth
        assert 0 <= line["log_ratio_mean"] < 1e-5  # fp32 on the CPU: the engine's log-probs are the learner's
    assert set(res["speedup"]) == {"step_s", "rollout_s", "learner_s"} and all(v > 0 for v in res["speedup"].values())
    assert "speed-up, baseline / current" in proc.stdout
    assert not list(out.glob("*/checkpoint-*"))  # checkpoints are off


@pytest.mark.slow
def test_real_shape_benchmark_compares_one_process_async_with_the_same_checkouts_sync(tmp_path):
    out = tmp_path / "rs"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu" / "real_shape.py"), "--tiny", "--steps", "2", "--max-chunks", "1",
                           "--async-rollouts", "true", "--out", str(out), "--baseline", str(ROOT), "--baseline-micro-batch-size", "4"],
                          capture_output=True, text=True, timeout=400, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads((out / "results.json").read_text())
    assert [(s["side"], s["async"], s["returncode"]) for s in res["sides"]] == [("current", True, 0), ("baseline", False, 0)]
    current, baseline = (side["lines"] for side in res["sides"])
    assert [line["staleness_max"] for line in current] == [0.0, 1.0]  # the second step's rows were sampled a version behind
    assert all(line["step_s"] >= line["learner_wait_s"] + line["learner_s"] and line["weight_sync_s"] > 0 for line in current)
    assert all(line["learner_wait_s"] == line["rollout_s"] and line["staleness_max"] is None for line in baseline)
    # every decode step is timed; the synchronous learner never optimises while its engine decodes
    assert all(line["decode_steps_learning"] == 0 and line["decode_steps_alone"] > 0 for line in baseline)
    assert all(line["decode_steps_learning"] + line["decode_steps_alone"] > 0 for line in current)
    assert set(res["speedup"]) == {"step_s", "rollout_s", "learner_s", "learner_wait_s"}
    assert "current async (max staleness 1) mb 4" in proc.stdout and "speed-up, baseline / current" in proc.stdout


def test_the_rollout_ceiling_counts_one_weight_read_per_round_step_and_each_rows_own_context():
    sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
    try:
        from real_shape import rollout_ceiling_s
    finally:
        sys.path.pop(0)

    class Cfg:  # 1 layer, 1 K/V head of width 4: 2 (K and V) x 4 x 2 bytes = 16 bytes per token of context
        hidden_size, num_attention_heads, num_key_value_heads, num_hidden_layers = 8, 2, 1, 1

    # two traces; round 0: completions 3 and 2 after prompts of 10; round 1 (trace 0 only): 1 token after a prompt of 5
    rows = [[0, 10, 13], [1, 10, 12], [0, 5, 6]]
    weight_reads = 3 + 1  # each round decodes as long as its longest completion
    contexts = (10 + 11 + 12) + (10 + 11) + 5
    assert rollout_ceiling_s(rows, n_params=100, cfg=Cfg, bandwidth=1.0) == weight_reads * 200 + contexts * 16


def test_the_streamed_ceiling_counts_the_longest_traces_decode_steps_not_each_rounds_longest():
    sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
    try:
        from real_shape import rollout_ceiling_s
    finally:
        sys.path.pop(0)

    class Cfg:  # 16 bytes of K/V per token of context, as above
        hidden_size, num_attention_heads, num_key_value_heads, num_hidden_layers = 8, 2, 1, 1

    # trace 0 completes 3 then 1 tokens, trace 1 completes 2 then 4: rounds wait 3 + 4 = 7 steps; streamed,
    # trace 1's second chunk starts when its first ends, so the longest trace (2 + 4 = 6) bounds the steps
    rows = [[0, 10, 13], [1, 10, 12], [0, 5, 6], [1, 5, 9]]
    contexts = (10 + 11 + 12) + (10 + 11) + 5 + (5 + 6 + 7 + 8)
    assert rollout_ceiling_s(rows, n_params=100, cfg=Cfg, bandwidth=1.0) == 7 * 200 + contexts * 16
    assert rollout_ceiling_s(rows, n_params=100, cfg=Cfg, bandwidth=1.0, streamed=True) == 6 * 200 + contexts * 16


def test_the_decode_split_counts_each_step_where_its_middle_falls_and_leaves_out_long_gaps():
    sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
    try:
        from real_shape import decode_split
    finally:
        sys.path.pop(0)

    # reads at 0, .1, .2 (alone), then 5.0 (a 4.8 s gap: a prefill, left out), then .3 s steps from 5.0 to 6.2
    # while the learner optimises over [5.0, 6.0): steps centred at 5.15, 5.45, 5.75 are beside it, 6.05 is not
    marks = [0.0, 0.1, 0.2, 5.0, 5.3, 5.6, 5.9, 6.2]
    split = decode_split(marks, busy=[(5.0, 6.0)])
    assert split["decode_steps_learning"] == 3 and split["decode_steps_alone"] == 3
    assert split["decode_step_ms_learning"] == pytest.approx(300.0)
    assert split["decode_step_ms_alone"] == pytest.approx((100 + 100 + 300) / 3)
    assert decode_split([1.0], busy=[])["decode_step_ms_alone"] is None  # no step measured
