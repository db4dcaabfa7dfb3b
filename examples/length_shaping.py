"""Length shaping: one warm-started policy trained with plain correctness and with LASER, side by side.

Half of the demonstrations needlessly re-check every line (about 94 tokens against about 45), so after
SFT the policy writes long and short solutions alike. Plain correctness has no reason to prefer either;
LASER's bonus for a correct answer within `target_length` tokens should shorten the outputs while
accuracy holds. Every arm starts from the same weights and is measured on the same held-out prompts
(the trainer's eval seeds 0..eval_prompts-1, sampled at T=1); the table gives the binomial standard
error of each accuracy.

    python examples/length_shaping.py [--steps 30] [--threads 2] [--out runs/length_shaping]

Everything it writes goes under `--out`, relative to the working directory: the arms' TensorBoard runs,
the curves as JSON and the figure (`--png` puts the figure elsewhere, e.g. the committed
benchmarks/length_shaping.png when regenerating it). A second run refuses a folder that holds the
first's, whose curves would mix with its own, unless given `--overwrite`.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from thinkgym.agents.learner.config import GRPOConfig  # noqa: E402
from thinkgym.agents.learner.trainer import GRPOTrainer  # noqa: E402
from thinkgym.agents.learner.sft import demonstration_rows, train_sft  # noqa: E402
from thinkgym.agents.plot import read_scalars  # noqa: E402
from thinkgym.agents.policy import Policy  # noqa: E402
from thinkgym.agents.run_dir import prepare_output_dir  # noqa: E402
from thinkgym.agents.types import SFT_SEED_BASE  # noqa: E402

ap = argparse.ArgumentParser(allow_abbrev=False)
ap.add_argument("--steps", type=int, default=30, help="GRPO steps per arm")
ap.add_argument("--sft-steps", type=int, default=1500, help="warm-start steps (600 left accuracy near 0.75, where GRPO itself was unstable)")
ap.add_argument("--sft-seeds", type=int, default=2000, help="demonstrations in the warm-start set")
ap.add_argument("--target-length", type=int, default=64, help="LASER's L_T: between the concise (~45) and re-checking (~94) modes")
ap.add_argument("--weights", default="0.5,0.2", help="LASER weights, one arm each (0.5 is the paper's alpha)")
ap.add_argument("--learning-rate", type=float, default=5e-5)
ap.add_argument("--eval-prompts", type=int, default=256)
ap.add_argument("--eval-samples", type=int, default=4)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--out", default="runs/length_shaping", help="TensorBoard runs, the curves as JSON and the figure")
ap.add_argument("--png", help="the figure's path (default: OUT/length_shaping.png)")
ap.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
args = ap.parse_args()
try:  # before training: a figure or table drawn from two runs' logs would mislead
    prepare_output_dir(args.out, overwrite=args.overwrite)
except ValueError as exc:
    ap.error(str(exc))
png = Path(args.png or Path(args.out) / "length_shaping.png")
torch.set_num_threads(args.threads)
t0 = time.perf_counter()

ENV, KW = "LongCoT-v0", {"task_kwargs": {"n_terms": 4, "recheck": 0.5}, "max_thinking_tokens": 200}
base = Policy.tiny(seed=0)
train_sft(base, demonstration_rows(ENV, range(SFT_SEED_BASE, SFT_SEED_BASE + args.sft_seeds), base.tokenizer, KW),
          steps=args.sft_steps, lr=3e-3)
runs = {"correctness": "correctness"}
runs.update({f"LASER {w}": f"correctness + {w}*laser(target_length={args.target_length})" for w in args.weights.split(",")})
curves = {}
for name, spec in runs.items():
    cfg = GRPOConfig(env=ENV, env_kwargs=KW, reward=spec, steps=args.steps, prompts_per_step=8, num_generations=8,
                     learning_rate=args.learning_rate, loss_type="dapo", eval_every=10, eval_prompts=args.eval_prompts,
                     eval_samples=args.eval_samples, eval_temperature=1.0, output_dir=f"{args.out}/{name.replace(' ', '_')}",
                     save_every=0, seed=args.seed)
    GRPOTrainer(cfg, policy=copy.deepcopy(base)).train()
    sc = read_scalars(cfg.output_dir)
    curves[name] = {"spec": spec, "accuracy": sc["eval/accuracy"], "mean_tokens": sc["eval/mean_tokens"]}

fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
for name, c in curves.items():
    for ax, key in zip(axes, ("mean_tokens", "accuracy")):
        steps, values = zip(*c[key])
        ax.plot(steps, values, marker="o", label=name)
        ax.set_title(f"held-out {key.replace('_', ' ')} ({args.eval_prompts}×{args.eval_samples}, T=1)")
        ax.set_xlabel("GRPO step")
axes[0].legend()
fig.tight_layout()
png.parent.mkdir(parents=True, exist_ok=True)
fig.savefig(png, dpi=110)
with open(f"{args.out}/length_shaping.json", "w") as f:
    json.dump(curves, f, indent=1)

n = args.eval_prompts * args.eval_samples


def se(p: float) -> float:
    """Binomial standard error over the n held-out samples (it treats samples of one prompt as independent)."""
    return math.sqrt(p * (1 - p) / n)


print(f"{'reward':<48} {'tokens (start -> end)':>22} {'accuracy ± s.e. (start -> end)':>34}")
for name, c in curves.items():
    (t_a, t_b), (a_a, a_b) = (c["mean_tokens"][0][1], c["mean_tokens"][-1][1]), (c["accuracy"][0][1], c["accuracy"][-1][1])
    print(f"{c['spec']:<48} {t_a:>9.1f} -> {t_b:<9.1f} {a_a:>11.3f} ± {se(a_a):.3f} -> {a_b:.3f} ± {se(a_b):.3f}")
print(f"{time.perf_counter() - t0:.0f} s; figure: {png}")
