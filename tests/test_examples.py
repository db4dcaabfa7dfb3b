"""The examples run (small sizes) and do what they say."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(args, **env):
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **env}, timeout=900)


def test_custom_agent_solves_every_seed():
    out = run([sys.executable, "examples/custom_agent.py"])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("reward 1.0") == 3 and "chunks 3" in out.stdout


def test_custom_reward_and_loss_train_through_the_cli(tmp_path):
    out = run([sys.executable, "examples/custom_loss_and_reward.py", "--steps", "1", "--output-dir", str(tmp_path)])
    assert out.returncode == 0, out.stderr[-2000:]
    from thinkgym.agents.plot import read_scalars

    assert "rewards/short_bonus/mean" in read_scalars(tmp_path)


@pytest.mark.slow
def test_gpu_example_runs_on_the_tiny_model_on_cpu(tmp_path, shared_data):
    out = run(["bash", "examples/train_gpu.sh", "--steps", "1", "--prompts-per-step", "1", "--num-generations", "2",
               "--env-kwargs", '{"chunk_size": 64, "carryover": 32, "head": 8, "max_chunks": 2, "task": "math_dataset", '
               f'"task_kwargs": {{"path": "{shared_data}/math/gsm8k.jsonl"}}}}', "--eval-every", "0", "--output-dir", str(tmp_path)],
              MODEL="tiny", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "checkpoint-1" / "policy" / "model.safetensors").exists()


@pytest.mark.slow
def test_trl_example_trains_in_grpo_trainer_through_the_adapter(tmp_path):
    if importlib.util.find_spec("trl") is None:  # not imported here: importing trl imports vLLM, which sets env variables
        pytest.skip("the TRL example needs trl (pip install -e '.[dev]')")
    out = run([sys.executable, "examples/trl_grpo.py", "--sft-steps", "2", "--steps", "2", "--prompts-per-step", "2",
               "--num-generations", "2", "--threads", "1", "--out", str(tmp_path)], TQDM_DISABLE="1")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [r.split(" | ")[0] for r in rows] == ["| 1", "| 2"]
    assert (tmp_path / "log_history.json").exists()


@pytest.mark.slow
def test_length_shaping_writes_under_the_working_directory_and_leaves_benchmarks_alone(tmp_path):
    """Run from anywhere but the repository: its outputs land under ./runs/length_shaping (the committed
    figure in benchmarks/ is left as it is), and a second run refuses to mix into the first's folder."""
    committed = (ROOT / "benchmarks" / "length_shaping.png").read_bytes()
    args = [sys.executable, str(ROOT / "examples" / "length_shaping.py"), "--sft-steps", "2", "--sft-seeds", "4", "--steps", "1",
            "--eval-prompts", "2", "--eval-samples", "1", "--weights", "0.5", "--threads", "1"]
    out = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=900, env={**os.environ, "TQDM_DISABLE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "runs" / "length_shaping" / "length_shaping.png").exists()
    assert (tmp_path / "runs" / "length_shaping" / "length_shaping.json").exists()
    assert "correctness" in out.stdout and (ROOT / "benchmarks" / "length_shaping.png").read_bytes() == committed
    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert again.returncode != 0 and "already holds files" in again.stderr


@pytest.mark.slow
def test_demo_plots_its_own_run_and_never_mixes_two_runs(tmp_path):
    """The demo draws runs/demo/curves.png from its run's TensorBoard logs; a second run refuses that folder
    (its curves would be drawn as one with the first's) unless given --overwrite, which `make demo` passes."""
    args = [sys.executable, str(ROOT / "examples" / "demo.py"), "--sft-steps", "0", "--rl-steps", "1", "--held-out", "2",
            "--threads", "1", "--set", "prompts_per_step=1", "--set", "num_generations=2"]
    first = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=900, env={**os.environ, "TQDM_DISABLE": "1"})
    assert first.returncode == 0, first.stderr[-3000:]
    demo = tmp_path / "runs" / "demo"
    assert 0 < (demo / "curves.png").stat().st_size < 200_000 and (demo / "demo_result.json").exists()  # small enough to commit
    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert again.returncode == 2 and "already holds files" in again.stderr and "--overwrite" in again.stderr
    replaced = subprocess.run([*args, "--overwrite"], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                              env={**os.environ, "TQDM_DISABLE": "1"})
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert len(list(demo.glob("events.out.tfevents.*"))) == 1  # the first run's logs went with it
    assert "examples/demo.py --overwrite" in (ROOT / "Makefile").read_text()  # `make demo` twice replaces its own run
