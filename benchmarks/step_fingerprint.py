"""A SHA-256 of the tiny policy's weights after a few GRPO steps of fixed configurations: a refactor of the
learner that keeps its behaviour keeps these hashes bit for bit (on one machine, torch version and thread count).

`gspo` is issue 35's configuration: minibatches, micro-batches, two iterations, GSPO, β > 0 and an entropy
bonus. `dynamic` adds what a refactor of the run touches: a warm start, dynamic sampling over a reward spec,
masked truncations, checkpoints and a held-out evaluation.

    PYTHONPATH=/work/pp/NAME python benchmarks/step_fingerprint.py
    PYTHONPATH=/work/pp/NAME python benchmarks/step_fingerprint.py --files   # the agents/ files one step calls into
"""

from __future__ import annotations

import hashlib
import inspect
import sys
import tempfile
from pathlib import Path

import torch

from thinkgym.agents.learner.config import GRPOConfig
from thinkgym.agents.learner.trainer import GRPOTrainer
from thinkgym.rewards import register_reward


@register_reward("fingerprint_sevens")
def sevens(sample, **_):
    """A reward with variance even for an untrained policy: how many 7s it wrote."""
    return float(sample.text.count("7"))


BASE = dict(env="DelethinkDemo-v0", model="tiny", steps=3, prompts_per_step=2, num_generations=4, learning_rate=1e-3,
            eval_every=0, save_every=0, seed=3)
CONFIGS = {
    "gspo": dict(loss_type="gspo", minibatches=2, micro_batch_size=2, num_iterations=2, beta=0.02, entropy_coef=0.01),
    "dynamic": dict(loss_type="dapo", minibatches=2, micro_batch_size=3, dynamic_sampling=True, max_resample_rounds=2,
                    reward="fingerprint_sevens + correctness", mask_truncated_completions=True, sft_steps=2, sft_seeds=4,
                    eval_every=2, eval_prompts=2, save_every=2, mgpo_lambda=0.5),
}


def weights_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def fingerprint(name: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        trainer = GRPOTrainer(GRPOConfig(**{**BASE, **CONFIGS[name]}, output_dir=str(Path(tmp) / "run")))
        trainer.train()
        return weights_hash(trainer.model)


def step_files() -> dict[str, int]:
    """The files of thinkgym.agents whose functions one `train_step` of the `gspo` configuration calls, with
    their lengths in lines (a profiler sees every call)."""
    root = Path(inspect.getfile(GRPOTrainer)).resolve().parents[2]
    seen: set[Path] = set()

    def profile(frame, event, arg):
        path = Path(frame.f_code.co_filename).resolve()
        if event == "call" and path.is_relative_to(root / "agents"):
            seen.add(path)

    with tempfile.TemporaryDirectory() as tmp:
        trainer = GRPOTrainer(GRPOConfig(**{**BASE, **CONFIGS["gspo"]}, output_dir=str(Path(tmp) / "run")))
        sys.setprofile(profile)
        try:
            trainer.train_step()
        finally:
            sys.setprofile(None)
    return {str(p.relative_to(root)): len(p.read_text().splitlines()) for p in sorted(seen)}


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1:] == ["--files"]:
        files = step_files()
        print("\n".join(f"{n:5d} {f}" for f, n in files.items()))
        print(f"{len(files)} files, {sum(files.values())} lines")
        sys.exit()
    for name in sys.argv[1:] or CONFIGS:
        print(f"{name} {fingerprint(name)}", flush=True)
