"""Length shaping: the same warm-started policy trained with plain correctness and with LASER.

Half of the demonstrations needlessly re-check every line, so after SFT the policy writes long and
short solutions alike. Plain correctness has no reason to prefer either; LASER's bonus for a correct
answer within `target_length` tokens should shorten the outputs while accuracy holds.

    python examples/length_shaping.py [--steps 30] [--out runs/length_shaping]
"""

from __future__ import annotations

import argparse
import copy
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from thinkgym.agents.config import GRPOConfig  # noqa: E402
from thinkgym.agents.grpo import GRPOTrainer  # noqa: E402
from thinkgym.agents.plot import read_scalars  # noqa: E402
from thinkgym.agents.policy import Policy  # noqa: E402
from thinkgym.agents.sft import demonstration_rows, train_sft  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=30)
ap.add_argument("--sft-steps", type=int, default=600)
ap.add_argument("--target-length", type=int, default=64)
ap.add_argument("--learning-rate", type=float, default=5e-5)
ap.add_argument("--out", default="runs/length_shaping")
args = ap.parse_args()
torch.set_num_threads(2)

ENV, KW = "LongCoT-v0", {"task_kwargs": {"n_terms": 4, "recheck": 0.5}, "max_thinking_tokens": 200}
base = Policy.tiny(seed=0)
train_sft(base, demonstration_rows(ENV, range(1_000_000, 1_000_400), base.tokenizer, KW), steps=args.sft_steps, lr=3e-3, log_every=0)
runs = {"correctness": "correctness", "LASER": f"correctness + 0.5*laser(target_length={args.target_length})"}
curves = {}
for name, spec in runs.items():
    cfg = GRPOConfig(env=ENV, env_kwargs=KW, reward=spec, steps=args.steps, prompts_per_step=8, num_generations=8,
                     learning_rate=args.learning_rate, loss_type="dapo", eval_every=5, eval_prompts=64, eval_samples=2, eval_temperature=1.0,
                     output_dir=f"{args.out}/{name}", save_every=0, seed=0)
    GRPOTrainer(cfg, policy=copy.deepcopy(base)).train()
    sc = read_scalars(cfg.output_dir)
    curves[name] = {"accuracy": sc["eval/accuracy"], "mean_tokens": sc["eval/mean_tokens"]}

fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
for name, c in curves.items():
    for ax, key in zip(axes, ("mean_tokens", "accuracy")):
        steps, values = zip(*c[key])
        ax.plot(steps, values, marker="o", label=name)
        ax.set_title(f"held-out {key.replace('_', ' ')}")
        ax.set_xlabel("GRPO step")
axes[0].legend()
fig.tight_layout()
fig.savefig(f"{args.out}/length_shaping.png", dpi=110)
with open(f"{args.out}/length_shaping.json", "w") as f:
    json.dump(curves, f, indent=1)
print(f"{'reward':<12} {'tokens (start -> end)':>24} {'accuracy (start -> end)':>26}")
for name, c in curves.items():
    (t0, t1), (a0, a1) = (c["mean_tokens"][0][1], c["mean_tokens"][-1][1]), (c["accuracy"][0][1], c["accuracy"][-1][1])
    print(f"{name:<12} {t0:>11.1f} -> {t1:<10.1f} {a0:>13.3f} -> {a1:.3f}")
