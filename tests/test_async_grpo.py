"""Asynchronous GRPO (`async_rollouts`): the staleness buffer, the off-policy corrections, policy versions on
rows (a Delethink chunk's own), and, in one process with a rollout thread as under torchrun with gloo: with max_staleness=0 the asynchronous trainer
gives the one-process synchronous trainer's weights; with max_staleness=1 no step trains on a row more than one
version old; a run stopped mid-pipeline drops what it sampled ahead, says so, and its resume samples it again.

Run as a script, this file is the torchrun worker: `torchrun --nproc-per-node N tests/test_async_grpo.py OUT MODE`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from thinkgym.agents.cli import main
from thinkgym.agents.learner.async_grpo import AsyncGRPOTrainer, train_async
from thinkgym.agents.learner.config import GRPOConfig
from thinkgym.agents.learner.losses import importance_weights
from thinkgym.agents.learner.staleness import Shipment, StalenessBuffer, merge_batches
from thinkgym.agents.learner.trainer import GRPOTrainer
from thinkgym.agents.plot import read_scalars
from thinkgym.agents.policy import Policy
from thinkgym.agents.rollout.collector import Collector
from thinkgym.agents.rollout.engine import Completion, make_engine
from thinkgym.agents.types import Batch, Episode, Row, Step, episode_rows
from thinkgym.rewards import register_reward

pytestmark = pytest.mark.usefixtures("one_thread")


@register_reward("distinct_chars")
def distinct_chars(sample, **_):
    """Distinct characters of the completion over 10: varies within every group of the tiny model's samples."""
    return len(set(sample.text)) / 10


STOP_AT_CALL = {"calls": 0, "at": None}


@register_reward("sigterm_at")
def sigterm_at(sample, **_):
    """0, and a SIGTERM to this process at its `at`-th call: a stop that arrives in the middle of a step."""
    STOP_AT_CALL["calls"] += 1
    if STOP_AT_CALL["calls"] == STOP_AT_CALL["at"]:
        os.kill(os.getpid(), signal.SIGTERM)
    return 0.0


# 2 prompts x 3 samples of the tiny policy, whose samples run over several Delethink chunks
BASE = dict(env="DelethinkDemo-v0", model="tiny", num_generations=3, prompts_per_step=2, micro_batch_size=6, learning_rate=1e-3,
            eval_every=0, save_every=0, reward="distinct_chars", steps=3, log_completions_every=0)


def one_process_weights(out: Path) -> dict[str, torch.Tensor]:
    trainer = GRPOTrainer(GRPOConfig(**BASE, output_dir=str(out)))
    trainer.train()
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


# -- without processes ----------------------------------------------------------------------------

def batch_of(versions: list[list[int]], seed: int = 0) -> Batch:
    """One group per inner list: an episode per entry, one row each, sampled by that version."""
    eps, rows = [], []
    for g, group in enumerate(versions):
        for v in group:
            rows.append(Row([1, 2, 3], 1, [1, 1], [-1.0, -1.0], len(eps), v))
            eps.append(Episode(g, seed + g, [Step([1], [2, 3], [-1.0, -1.0], "length", version=v)]))
    return Batch(eps, rows, {"generated_tokens": 2.0 * len(rows), "time/rollout_s": 1.0, "time/env_s": 1.0})


def test_buffer_drops_a_shipment_with_a_row_too_stale_and_serves_whole_steps_in_rank_order():
    buf = StalenessBuffer(max_staleness=1, ranks=[1, 2])
    assert not buf.put(Shipment(3, 1, batch_of([[2, 1]]), 2))  # version 1 at step 3: 2 stale
    assert buf.dropped_rows == 2 and "2 steps stale" in buf.log[-1] and "rank 1" in buf.log[-1]
    assert buf.put(Shipment(3, 2, batch_of([[3, 2]], seed=10), 2))
    assert not buf.ready(3)
    with pytest.raises(RuntimeError, match=r"ranks \[1\] have not shipped"):
        buf.take(3)
    assert buf.put(Shipment(3, 1, batch_of([[2, 2], [3, 3]]), 2, wait_s=0.5))
    batch, metrics = buf.take(3)
    assert [ep.seed for ep in batch.episodes] == [0, 0, 1, 1, 10, 10]  # rank 1's groups, then rank 2's
    assert [ep.group for ep in batch.episodes] == [0, 0, 1, 1, 2, 2]
    assert [r.episode for r in batch.rows] == list(range(6)) and [r.version for r in batch.rows] == [2, 2, 3, 3, 3, 2]
    assert metrics == {"async/staleness_mean": 0.5, "async/staleness_max": 1.0, "async/rows_dropped": 2.0,
                       "async/rollout_weight_wait_s": 0.5}
    assert batch.stats["generated_tokens"] == 12.0 and not buf.held


def test_merged_rows_point_at_their_own_episodes():
    parts = [batch_of([[0, 0]]), batch_of([[0, 0, 0]], seed=5)]
    parts[1].rows = parts[1].rows[::-1]  # rows need not follow their episodes' order
    merged = merge_batches(parts)
    assert [merged.episodes[r.episode].seed for r in merged.rows] == [0, 0, 5, 5, 5]
    assert [r.episode for r in merged.rows] == [0, 1, 4, 3, 2]


def test_truncated_and_masked_importance_weights():
    logp = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -1.0, 0.0]])
    behaviour = torch.tensor([[-1.5, -0.5, -1.0], [-1.05, -0.95, -3.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # row 2's last token does not count
    tis = importance_weights(logp, behaviour, mask, "tis", 1.5, 0.1)
    assert torch.allclose(tis, torch.tensor([[1.5, 0.6065307, 1.0], [1.0512711, 0.9512294, 1.5]]))
    mis = importance_weights(logp, behaviour, mask, "mis", 2.0, 0.1)
    # row 1: mean log ratio 0 (kept, weight 1); row 2: mean 0 over its counted tokens (the masked +3 is ignored)
    assert torch.allclose(mis, torch.ones(2, 3))
    far = importance_weights(logp, behaviour - torch.tensor([[0.0], [0.3]]), mask, "mis", 2.0, 0.2)
    assert torch.allclose(far[0], torch.ones(3)) and torch.equal(far[1], torch.zeros(3))  # row 2: mean 0.3 > 0.2, rejected
    near = importance_weights(logp, behaviour - torch.tensor([[0.0], [0.15]]), mask, "mis", 2.0, 0.2)
    assert torch.allclose(near[1], torch.full((3,), float(torch.exp(torch.tensor(0.15)))))
    with pytest.raises(ValueError, match=r"valid: \['tis', 'mis'\]"):
        importance_weights(logp, behaviour, mask, "is", 2.0, 0.1)


class ForeignEngine:
    """Random digit strings with made-up log-probs (about −1.75 a token, far from the tiny policy's): an engine
    whose log-probs are not the learner's, as a stale or vLLM rollout's are not."""

    logprobs_are_trainers = False

    def __init__(self, policy):
        self.policy, self.rng = policy, np.random.default_rng(0)
        self.digits = policy.tokenizer.encode("0123456789")

    def generate(self, requests):
        out = []
        for req in requests:
            ids = [int(t) for t in self.rng.choice(self.digits, size=int(self.rng.integers(3, 12)))]
            out.append([Completion(ids, self.policy.tokenizer.decode(ids), self.rng.uniform(-3.0, -0.5, len(ids)).tolist(), "eos", -0.2)])
        return out

    def sync_weights(self) -> None:
        pass


@pytest.mark.parametrize("correction, bound, moves", [("tis", 0.1, True), ("mis", 0.1, False), ("mis", 100.0, True)])
def test_the_trainer_applies_the_configured_correction(correction, bound, moves, tmp_path):
    """Masked IS rejects every row whose mean log ratio to the learner exceeds the bound: no gradient is left."""
    cfg = GRPOConfig(**dict(BASE, steps=1), off_policy_correction=correction, mis_bound=bound, output_dir=str(tmp_path))
    trainer = GRPOTrainer(cfg)
    trainer.engine = trainer.collector.engine = ForeignEngine(trainer.policy)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    metrics = trainer.train_step()
    moved = max(float((v - before[k]).abs().max()) for k, v in trainer.model.state_dict().items())
    assert (moved > 0) == moves, moved
    if not moves:  # the rows were rejected for a real gap, not for agreeing
        assert metrics["engine_log_ratio/abs_mean"] > bound


@pytest.mark.parametrize("bad, message", [
    (dict(async_rollouts=True, dynamic_sampling=True), r"does not support \['dynamic_sampling'\]"),
    (dict(async_rollouts=True, siri={"l_min": 64}, use_peft=True), r"does not support \['siri', 'use_peft'\]"),
    (dict(async_rollouts=True, parallelism="fsdp"), r"does not support \[\"parallelism='fsdp'\"\]"),
    (dict(max_staleness=-1), "max_staleness must be >= 0"),
    (dict(off_policy_correction="ratio"), r"off_policy_correction='ratio' is unknown; valid: \['tis', 'mis'\]"),
    (dict(mis_bound=0.0), "mis_bound must be > 0"),
])
def test_config_refuses_what_async_does_not_do(bad, message):
    with pytest.raises(ValueError, match=message):
        GRPOConfig(**bad)


@pytest.mark.parametrize("setting, message", [
    (dict(env="SATCurriculum-v0", reward=""), "SATCurriculum-v0 keeps state across episodes"),
    (dict(reward="adaptthink", num_generations=2), "forces openings on each group"),
    (dict(engine="vllm"), r"in one process runs a rollout thread on engine='hf', not engine='vllm'"),
])
def test_the_learner_refuses_what_rollout_ranks_cannot_follow(setting, message, tmp_path):
    with pytest.raises(ValueError, match=message):  # before it touches its links to the rollout ranks
        AsyncGRPOTrainer(GRPOConfig(**{**BASE, **setting, "async_rollouts": True, "output_dir": str(tmp_path)}), links=None)


def test_each_delethink_chunk_row_carries_the_version_that_sampled_it():
    policy = Policy.from_pretrained("tiny", seed=0)
    collector = Collector("DelethinkDemo-v0", make_engine("hf", policy, seed=0), group_size=3)

    def new_weights() -> None:  # a new version lands before every generation round
        collector.policy_version += 1

    collector.before_round = new_weights
    batch = collector.collect([10_000_000, 10_000_001])
    assert max(len(ep.steps) for ep in batch.episodes) > 1  # some traces ran over several chunks
    for i, ep in enumerate(batch.episodes):
        rows = [r for r in batch.rows if r.episode == i]
        assert [r.version for r in rows] == [s.version for s in ep.steps] == list(range(1, len(ep.steps) + 1))


def test_a_row_merging_several_steps_carries_its_oldest_version():
    first = Step([5, 6], [7], [-0.1], "stop", version=4)
    second = Step([5, 6, 7, 9], [8], [-0.2], "stop", version=5)  # extends the first: one row, the env's token 9 masked
    (row,) = episode_rows(Episode(0, 0, [first, second]), 0)
    assert row.input_ids == [5, 6, 7, 9, 8] and row.loss_mask == [1, 0, 1] and row.version == 4


# -- in one process: a rollout thread beside the learner ------------------------------------------

def recording_versions(monkeypatch) -> list[tuple[int, list[int]]]:
    """(step trained, the versions of its rows) for every step the asynchronous learner optimizes."""
    seen: list[tuple[int, list[int]]] = []
    optimize = AsyncGRPOTrainer.optimize

    def recording(self, rows, adv):
        seen.append((self.step, [r.version for r in rows]))
        return optimize(self, rows, adv)

    monkeypatch.setattr(AsyncGRPOTrainer, "optimize", recording)
    return seen


def assert_the_synchronous_run(mine: dict, ref: dict, run_dir: Path) -> dict:
    """A 3-step asynchronous run at staleness 0: the synchronous run's weights (`ref`) to 1e-6, after updates that
    moved them; every row its learner's own, and a version handed over after steps 1 and 2. Returns its scalars."""
    start = Policy.from_pretrained("tiny", seed=0).model.state_dict()
    moved = max(float((ref[k] - start[k]).abs().max()) for k in ref)
    diff = max(float((ref[k] - mine[k]).abs().max()) for k in ref)
    assert moved > 1e-3 and diff < 1e-6, f"3 steps moved the weights by up to {moved}; async and sync differ by up to {diff}"
    logged = read_scalars(str(run_dir))
    assert [v for _, v in logged["async/staleness_max"]] == [0.0, 0.0, 0.0]
    assert "time/old_logprobs_s" not in logged  # every row was the learner's own: nothing to correct
    assert all(v > 0 for _, v in logged["time/weight_sync_s"][:2])  # steps 1 and 2 hand a version over; the last has no taker
    return logged


def test_one_process_at_staleness_zero_gives_the_synchronous_weights(tmp_path):
    trainer, _ = train_async(GRPOConfig(**BASE, async_rollouts=True, max_staleness=0, output_dir=str(tmp_path / "async")))
    assert trainer.pipeline.channel.thread.ident is not None and not trainer.pipeline.channel.thread.is_alive()
    logged = assert_the_synchronous_run(trainer.model.state_dict(), one_process_weights(tmp_path / "one"), tmp_path / "async")
    assert all(v > 0 for _, v in logged["time/rollout_s"]) and len(logged["async/learner_wait_s"]) == 3


def test_one_process_at_staleness_one_never_serves_an_older_row(monkeypatch, tmp_path):
    seen = recording_versions(monkeypatch)
    train_async(GRPOConfig(**dict(BASE, steps=5), async_rollouts=True, max_staleness=1, off_policy_correction="mis", mis_bound=0.5,
                           output_dir=str(tmp_path)))
    assert [step for step, _ in seen] == [0, 1, 2, 3, 4]
    assert all(0 <= step - v <= 1 for step, versions in seen for v in versions), seen
    assert all(step - min(versions) == 1 for step, versions in seen[1:]), seen  # each later step began with the weights before
    logged = read_scalars(str(tmp_path))
    assert [v for _, v in logged["async/staleness_max"]] == [0.0, 1.0, 1.0, 1.0, 1.0]
    assert all(v == 0 for _, v in logged["async/rows_dropped"])
    assert [s for s, _ in logged["time/old_logprobs_s"]] == [2, 3, 4, 5]  # stale rows: recomputed and corrected


def test_one_process_stopped_drops_what_it_sampled_ahead_and_its_resume_samples_it_again(monkeypatch, capsys, tmp_path):
    cut = GRPOConfig(**dict(BASE, steps=5, save_every=1, reward="distinct_chars + sigterm_at"), async_rollouts=True,
                     max_staleness=1, output_dir=str(tmp_path))
    monkeypatch.setitem(STOP_AT_CALL, "calls", 0)
    monkeypatch.setitem(STOP_AT_CALL, "at", 3 * BASE["prompts_per_step"] * BASE["num_generations"])  # during the third step
    trainer, _ = train_async(cut)
    assert trainer.step == 3 and "stopped with steps [3, 4] sampled ahead" in capsys.readouterr().out
    assert not trainer.pipeline.channel.thread.is_alive()
    monkeypatch.setitem(STOP_AT_CALL, "at", None)
    seen = recording_versions(monkeypatch)
    train_async(GRPOConfig(**{**cut.to_dict(), "resume": True}))
    assert (tmp_path / "checkpoint-3").is_dir() and (tmp_path / "checkpoint-5").is_dir()
    assert seen[0] == (3, [3] * len(seen[0][1]))  # step 3 sampled again, by the weights it resumed from
    logged = read_scalars(str(tmp_path))
    assert [s for s, _ in logged["async/staleness_max"]] == [1, 2, 3, 4, 5]  # every step trained once
    assert [v for _, v in logged["async/staleness_max"]][3] == 0.0


def test_a_failure_in_the_rollout_thread_reaches_the_learner(monkeypatch, tmp_path):
    def broken(self, seeds, prefixes=None):
        raise ValueError("the environment broke")

    monkeypatch.setattr(Collector, "collect", broken)
    with pytest.raises(RuntimeError, match="the rollout thread failed with ValueError: the environment broke") as info:
        train_async(GRPOConfig(**BASE, async_rollouts=True, output_dir=str(tmp_path)))
    assert "in broken" in str(info.value)  # the thread's own traceback
    assert isinstance(info.value.__cause__, ValueError)


def test_cli_trains_asynchronously_in_one_process(capsys, tmp_path):
    main(["train", "--async-rollouts", "true", "--steps", "1", "--prompts-per-step", "2", "--num-generations", "2",
          "--eval-every", "0", "--output-dir", str(tmp_path)])
    reports = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["output_dir"] for r in reports] == [str(tmp_path)]
    assert "async/staleness_max" in read_scalars(str(tmp_path))


# -- under torchrun --------------------------------------------------------------------------------

def worker(out: Path, mode: str) -> None:
    torch.set_num_threads(1)
    if mode == "one":  # the synchronous trainer, in a fresh process like the ranks: no earlier test's state in it
        torch.save(one_process_weights(out / "one"), out / "one.pt")
    elif mode == "two":  # max_staleness=0 (compared with one process), then a run stopped mid-pipeline and resumed
        trainer, _ = train_async(GRPOConfig(**BASE, async_rollouts=True, max_staleness=0, output_dir=str(out / "sync")))
        if isinstance(trainer, GRPOTrainer):
            torch.save({k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, out / "async0.pt")
        cut = dict(BASE, async_rollouts=True, max_staleness=1, steps=5, save_every=1, reward="distinct_chars + sigterm_at",
                   output_dir=str(out / "cut"))
        STOP_AT_CALL["at"] = 3 * BASE["prompts_per_step"] * BASE["num_generations"]  # during the third step
        train_async(GRPOConfig(**cut))
        STOP_AT_CALL["at"] = None
        train_async(GRPOConfig(**cut, resume=True))
        main(["train", "--async-rollouts", "true", "--steps", "1", "--prompts-per-step", "2", "--num-generations", "2",
              "--eval-every", "0", "--output-dir", str(out / "cli")])
    else:  # 2 rollout ranks: max_staleness=1 with masked importance sampling; 2 with one-chunk traces
        train_async(GRPOConfig(**dict(BASE, steps=5), async_rollouts=True, max_staleness=1, off_policy_correction="mis",
                               mis_bound=0.5, output_dir=str(out / "stale")))
        train_async(GRPOConfig(**dict(BASE, steps=6), async_rollouts=True, max_staleness=2, env_kwargs={"max_chunks": 1},
                               output_dir=str(out / "stale2")))


def launch(out: Path, mode: str, nproc: int) -> str:
    """Run `worker` under torchrun; its stdout."""
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), __file__,
                           str(out), mode], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("async2")
    return out, launch(out, "two", 2)


@pytest.mark.slow
def test_staleness_zero_gives_the_one_process_weights(two_ranks, tmp_path):
    out, _ = two_ranks
    one = subprocess.run([sys.executable, __file__, str(tmp_path), "one"], capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-4000:]
    assert_the_synchronous_run(torch.load(out / "async0.pt"), torch.load(tmp_path / "one.pt"), out / "sync")


@pytest.mark.slow
def test_a_stopped_run_drops_what_it_sampled_ahead_and_its_resume_samples_it_again(two_ranks):
    out, stdout = two_ranks
    assert "stopped with steps [3, 4] sampled ahead (versions [2, 3])" in stdout
    assert (out / "cut" / "checkpoint-3").is_dir() and (out / "cut" / "checkpoint-5").is_dir()
    logged = read_scalars(str(out / "cut"))
    # every step trained once; the resume's first step was sampled again, by the weights it resumed from
    assert [s for s, _ in logged["async/staleness_max"]] == [1, 2, 3, 4, 5]
    assert [v for _, v in logged["async/staleness_max"]] == [0.0, 1.0, 1.0, 0.0, 1.0]


@pytest.mark.slow
def test_cli_trains_asynchronously_and_reports_once(two_ranks):
    out, stdout = two_ranks
    reports = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert [r["output_dir"] for r in reports] == [str(out / "cli")]
    assert "async/staleness_max" in read_scalars(str(out / "cli"))


@pytest.mark.slow
def test_staleness_bound_holds_over_two_rollout_ranks(tmp_path):
    stdout = launch(tmp_path, "three", 3)
    logged = read_scalars(str(tmp_path / "stale"))
    ages = [v for _, v in logged["async/staleness_max"]]
    assert ages == [0.0, 1.0, 1.0, 1.0, 1.0]  # after the first step, each step's first chunks come from the weights before
    assert all(v == 0 for _, v in logged["async/rows_dropped"]) and "dropped step" not in stdout
    assert [s for s, _ in logged["time/old_logprobs_s"]] == [2, 3, 4, 5]  # stale rows: recomputed and corrected
    deeper = [v for _, v in read_scalars(str(tmp_path / "stale2"))["async/staleness_max"]]
    assert len(deeper) == 6 and deeper[0] == 0.0 and max(deeper) <= 2.0  # up to k + 1 broadcasts may be in flight


if __name__ == "__main__":
    worker(Path(sys.argv[1]), sys.argv[2])


@pytest.mark.parametrize("arms, bad", [("async,thread", "must list sync"), ("sync,threads", "'sync,threads'")])
def test_the_parity_benchmark_refuses_arms_it_cannot_compare(tmp_path, arms, bad):
    """benchmarks/async_parity.py measures every arm's gain against sync's start: an arm list without sync, or
    with a name it does not run, is refused before any run starts."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "async_parity.py"
    proc = subprocess.run([sys.executable, str(script), "--starts", str(tmp_path), "--out", str(tmp_path / "out"), "--arms", arms],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and bad in proc.stderr and "thread" in proc.stderr
    assert not (tmp_path / "out").exists()
