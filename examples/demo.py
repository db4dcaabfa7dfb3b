"""The main job (`make demo`): warm-start a tiny policy, train it with GRPO on Delethink, and show
(1) held-out success rising during RL and (2) Markovian thinking: the same policy fails under
LongCoT with a one-chunk budget, while Delethink solves the same problems in a constant context.

Runs on 2 CPU cores in a few minutes; logs to runs/demo (TensorBoard) and writes runs/demo/curves.png.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from thinkgym.agents.config import GRPOConfig
from thinkgym.agents.evaluate import evaluate
from thinkgym.agents.grpo import GRPOTrainer
from thinkgym.agents.plot import plot_run
from thinkgym.envs.registration import DEMO_DELETHINK

ap = argparse.ArgumentParser()
ap.add_argument("--sft-steps", type=int, default=800)
ap.add_argument("--rl-steps", type=int, default=30)
ap.add_argument("--learning-rate", type=float, default=3e-4)
ap.add_argument("--held-out", type=int, default=128)
ap.add_argument("--out", default="runs/demo")
args = ap.parse_args()
torch.set_num_threads(2)

cfg = GRPOConfig(
    env="DelethinkDemo-v0", model="tiny", output_dir=args.out, seed=0,
    sft_steps=args.sft_steps, sft_learning_rate=3e-3, sft_seeds=400,
    steps=args.rl_steps, prompts_per_step=8, num_generations=8, temperature=1.0,
    learning_rate=args.learning_rate, loss_type="delethink", scale_rewards="group", epsilon_high=0.28,
    micro_batch_size=64, eval_every=0, save_every=10, log_completions_every=10,
)
HELD_OUT = range(args.held_out)
t0 = time.time()
trainer = GRPOTrainer(cfg)
trainer.warm_start()


def held_out(env: str = cfg.env, **env_kwargs) -> dict[str, float]:
    greedy = evaluate(trainer.engine, env, HELD_OUT, n=1, temperature=0.0, env_kwargs=env_kwargs)
    sampled = evaluate(trainer.engine, env, HELD_OUT, n=4, temperature=1.0, env_kwargs=env_kwargs, ks=(1, 4))
    return {"greedy_accuracy": greedy["accuracy"], "sampled_accuracy": sampled["accuracy"], "pass@4": sampled["pass@4"],
            "mean_chunks": greedy["mean_chunks"], "mean_tokens": greedy["mean_tokens"]}


before = held_out()
trainer.log({f"eval/{k}": v for k, v in before.items()} | {"eval/accuracy": before["sampled_accuracy"]}, 0)
print(f"after SFT warm start ({time.time() - t0:.0f}s): {before}", flush=True)
trainer.train()
after = held_out()
trainer.log({f"eval/{k}": v for k, v in after.items()} | {"eval/accuracy": after["sampled_accuracy"]}, cfg.steps)
one_chunk = {"max_thinking_tokens": DEMO_DELETHINK["chunk_size"], "task_kwargs": DEMO_DELETHINK["task_kwargs"]}
longcot = evaluate(trainer.engine, "LongCoT-v0", HELD_OUT, n=1, temperature=0.0, env_kwargs=one_chunk)
png = plot_run(cfg.output_dir)

result = {"before_rl": before, "after_rl": after, "longcot_one_chunk_greedy_accuracy": longcot["accuracy"],
          "seconds": round(time.time() - t0)}
with open(f"{cfg.output_dir}/demo_result.json", "w") as f:
    json.dump(result, f, indent=1)
print(f"""
held-out accuracy on {len(HELD_OUT)} problems ({DEMO_DELETHINK['task_kwargs']['n_terms']}-term running sums, ~{before['mean_chunks']:.1f} chunks of {DEMO_DELETHINK['chunk_size']} tokens):
                              greedy   sampled(T=1)   pass@4
  after SFT, before RL        {before['greedy_accuracy']:.3f}    {before['sampled_accuracy']:.3f}          {before['pass@4']:.3f}
  after {cfg.steps} GRPO steps          {after['greedy_accuracy']:.3f}    {after['sampled_accuracy']:.3f}          {after['pass@4']:.3f}
Markovian thinking, same policy, greedy:
  Delethink (C={DEMO_DELETHINK['chunk_size']}, m={DEMO_DELETHINK['carryover']})    {after['greedy_accuracy']:.3f}   ({after['mean_chunks']:.1f} chunks, {after['mean_tokens']:.0f} thinking tokens)
  LongCoT, one-chunk budget   {longcot['accuracy']:.3f}
curves: {png}   TensorBoard: tensorboard --logdir {cfg.output_dir}   ({result['seconds']} s)""")
