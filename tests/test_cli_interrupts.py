"""Ctrl-C and SIGTERM in the long commands: the first stops at the next safe point within seconds, saves what a
resume needs and exits 130 (SIGINT) or 143 (SIGTERM); resuming ends on exactly the weights of an uninterrupted
run; a second signal exits at once."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
# one short chunk, which a 2-term sum's demonstration fits: fast episodes on the tiny model
ENV_KW = {"chunk_size": 32, "carryover": 16, "max_chunks": 1, "task_kwargs": {"n_terms": 2}}
EXIT_WITHIN_S = 10.0  # from the signal to the process's exit, saving included, on a busy 2-core machine


def cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "thinkgym.agents.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"exited early ({proc.returncode}): {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.05)


def interrupt(proc: subprocess.Popen, signum: int = signal.SIGINT) -> tuple[int, float, str, str]:
    """Send `signum`; the exit code, the seconds until the process exited, and its output."""
    t = time.monotonic()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, time.monotonic() - t, out, err


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return out


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_sft_stops_on_sigint_saves_and_resumes_exactly(tmp_path):
    from thinkgym.agents.learner.sft import demonstration_rows, train_sft
    from thinkgym.agents.plot import read_scalars
    from thinkgym.agents.policy import Policy
    from thinkgym.agents.types import SFT_SEED_BASE

    run = tmp_path / "sft"
    args = ["sft", "--env", "DelethinkDemo-v0", "--seeds", "8", "--steps", "150", "--batch-size", "2", "--save-every", "5",
            "--output-dir", str(run)]
    proc = cli(*args)
    wait_for(run / "checkpoint-5" / "trainer_state.pt", proc)
    code, seconds, out, err = interrupt(proc)
    assert code == 130, err[-3000:]
    print(f"sft: SIGINT to exit {seconds:.1f} s")
    assert seconds < EXIT_WITHIN_S, f"took {seconds:.1f} s to stop"
    assert "Traceback" not in err and "stopped by SIGINT" in out and "--resume" in out
    stopped_at = int((run / "latest").read_text().split("-")[1])
    assert 5 <= stopped_at < 150 and not (run / "model.safetensors").exists()  # a checkpoint, not a final policy
    assert "sft/loss" in read_scalars(run)  # TensorBoard logs

    finish(cli(*args, "--resume"))
    resumed = load_file(run / "model.safetensors")
    reference = Policy.tiny(seed=0)
    train_sft(reference, demonstration_rows("DelethinkDemo-v0", range(SFT_SEED_BASE, SFT_SEED_BASE + 8), reference.tokenizer),
              steps=150, batch_size=2, lr=1e-3, progress=False)
    expected = {k: v for k, v in reference.model.state_dict().items() if k in resumed}
    assert same_weights(resumed, expected)


@pytest.mark.slow
def test_train_stops_in_the_warm_start_and_the_first_evaluation_and_resumes_exactly(tmp_path):
    """SIGINT during the `--sft-steps` warm start, then SIGTERM during the step-0 evaluation: each exits within
    seconds with the signal's code, and the twice-resumed run ends on the uninterrupted run's weights."""
    from thinkgym.agents.learner.config import GRPOConfig
    from thinkgym.agents.learner.trainer import GRPOTrainer

    settings = dict(env="DelethinkDemo-v0", env_kwargs=ENV_KW, steps=2,
                    prompts_per_step=1, num_generations=2, learning_rate=1e-3, sft_steps=30, sft_seeds=8, eval_every=2,
                    eval_prompts=256, eval_samples=1, eval_temperature=1.0, save_every=1)
    run = tmp_path / "rl"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items() if k != "env_kwargs"]
    args = ["train", *flags, "--env-kwargs", json.dumps(ENV_KW), "--output-dir", str(run)]

    proc = cli(*args)
    wait_for(run, proc)  # the TensorBoard writer exists: the warm start comes next
    code, seconds, out, err = interrupt(proc, signal.SIGINT)
    assert code == 130, err[-3000:]
    print(f"train warm start: SIGINT to exit {seconds:.1f} s")
    assert seconds < EXIT_WITHIN_S, f"took {seconds:.1f} s to stop in the warm start"
    assert "Traceback" not in err and "during the warm start" in out
    assert (run / "warm_start" / "latest").exists() and not (run / "checkpoint-0").exists()

    proc = cli(*args, "--resume")
    wait_for(run / "checkpoint-0" / "trainer_state.pt", proc)  # the evaluation of step 0 (256 prompts) runs next
    code, seconds, out, err = interrupt(proc, signal.SIGTERM)
    assert code == 143, err[-3000:]
    print(f"train step-0 evaluation: SIGTERM to exit {seconds:.1f} s")
    assert seconds < EXIT_WITHIN_S, f"took {seconds:.1f} s to stop in the step-0 evaluation"
    assert "Traceback" not in err and "stopped by SIGTERM before step 1" in out
    assert not (run / "warm_start").exists() and not (run / "checkpoint-1").exists()

    finish(cli(*args, "--resume"))
    resumed = load_file(run / "checkpoint-2" / "policy" / "model.safetensors")
    reference = GRPOTrainer(GRPOConfig(**settings, output_dir=str(tmp_path / "reference")))
    reference.train()
    assert same_weights(resumed, load_file(tmp_path / "reference" / "checkpoint-2" / "policy" / "model.safetensors"))


@pytest.mark.slow
def test_redi_stops_in_either_stage_and_resumes_exactly(tmp_path):
    """SIGINT during stage 1 (SFT on the positives), then SIGTERM during stage 2: each exits within seconds with
    the signal's code, saving a checkpoint, and the twice-resumed run ends on the uninterrupted run's weights."""
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Add: {a} {b}\n", "response": f"{a}+{b}={s}\n</think>\\boxed{{{s}}}",
                                        "correct": s == a + b}) + "\n" for a, b in [(1, 2), (3, 4), (2, 5)] for s in (a + b, a + b + 1)))
    common = ["redi", "--data", str(data), "--env", "LongCoT-v0", "--env-kwargs",
              json.dumps({"task_kwargs": {"n_terms": 2}, "max_thinking_tokens": 12}),
              "--sft-steps", "400", "--steps", "30", "--batch-size", "2", "--save-every", "1", "--eval-prompts", "2",
              "--learning-rate", "1e-4"]
    run = tmp_path / "redi"
    args = [*common, "--output-dir", str(run)]

    proc = cli(*args)
    wait_for(run, proc)  # the TensorBoard writer exists: stage 1 comes next
    code, seconds, out, err = interrupt(proc, signal.SIGINT)
    assert code == 130, err[-3000:]
    print(f"redi stage 1: SIGINT to exit {seconds:.1f} s")
    assert seconds < EXIT_WITHIN_S, f"took {seconds:.1f} s to stop in stage 1"
    assert "Traceback" not in err and "in stage 1 (SFT)" in out and "--resume" in out
    assert (run / "sft" / "latest").exists() and not list(run.glob("checkpoint-*"))

    proc = cli(*args, "--resume")
    wait_for(run / "checkpoint-2" / "trainer_state.pt", proc)
    code, seconds, out, err = interrupt(proc, signal.SIGTERM)
    assert code == 143, err[-3000:]
    print(f"redi stage 2: SIGTERM to exit {seconds:.1f} s")
    assert seconds < EXIT_WITHIN_S, f"took {seconds:.1f} s to stop in stage 2"
    assert "Traceback" not in err and "stopped by SIGTERM" in out
    stopped_at = int((run / "latest").read_text().split("-")[1])
    assert 2 <= stopped_at < 30

    finish(cli(*args, "--resume"))
    finish(cli(*common, "--output-dir", str(tmp_path / "reference")))
    final = "checkpoint-30/policy/model.safetensors"
    assert same_weights(load_file(run / final), load_file(tmp_path / "reference" / final))


def test_a_second_signal_exits_at_once(tmp_path):
    code = ("import os, signal, time\nfrom thinkgym.agents import interrupt\nwith interrupt.stop_on_signal():\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n    print('asked to stop by', interrupt.requested(), flush=True)\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n    time.sleep(30)\n    print('not reached')\n")
    t = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 130 and time.monotonic() - t < 25
    assert f"asked to stop by {int(signal.SIGINT)}" in out.stdout and "not reached" not in out.stdout
    assert "SIGINT again: exiting now" in out.stderr


def test_abortable_work_stops_at_once_and_the_loop_sees_the_request():
    from thinkgym.agents import interrupt

    with interrupt.stop_on_signal():
        with pytest.raises(interrupt.Interrupted):
            with interrupt.abortable():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
                pytest.fail("the signal did not stop the abortable block")
        assert interrupt.requested() == signal.SIGTERM
        with pytest.raises(interrupt.Interrupted):  # a stop already asked for ends abortable work before it starts
            with interrupt.abortable():
                pass
    assert interrupt.requested() is None  # outside any block
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
