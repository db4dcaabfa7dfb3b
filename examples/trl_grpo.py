"""GRPO with TRL's own GRPOTrainer on a thinkgym environment, through `thinkgym.integrations.trl`.

The tiny policy is warm-started by thinkgym's SFT on the env's demonstrations (LongCoT-v0 running sums of 4
terms, half of them re-checking every line, so that a 64-token budget cuts about half the traces off), then
TRL trains it: `EnvRollout` runs the env with TRL's generation and returns token-exact rows, and
`thinkgym_reward` hands TRL the env's reward. Prints TRL's logged reward per step; `--out` keeps the log.

    python examples/trl_grpo.py                     # 500 SFT steps, then 20 GRPO steps of 8 prompts x 8 (CPU)
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from thinkgym.agents.learner.sft import demonstration_rows, train_sft
from thinkgym.agents.policy import Policy
from thinkgym.agents.types import SFT_SEED_BASE, TRAIN_SEED_BASE

ENV = "LongCoT-v0"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--steps", type=int, default=20, help="GRPO steps (TRL's max_steps)")
    ap.add_argument("--sft-steps", type=int, default=500, help="warm-start SFT steps")
    ap.add_argument("--prompts-per-step", type=int, default=8, help="prompts per step")
    ap.add_argument("--num-generations", type=int, default=8, help="samples per prompt (a GRPO group)")
    ap.add_argument("--learning-rate", type=float, default=1e-4, help="GRPO learning rate (constant)")
    ap.add_argument("--budget", type=int, default=64, help="the env's thinking budget in tokens, EOS included")
    ap.add_argument("--seed", type=int, default=0, help="seeds the warm start and TRL")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--out", default="runs/trl_grpo", help="TRL's output_dir; log_history.json is written there")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from thinkgym.integrations.trl import EnvRollout, thinkgym_reward
    from trl import GRPOConfig, GRPOTrainer

    task = {"task_kwargs": {"n_terms": 4, "recheck": 0.5}}
    policy = Policy.tiny(seed=args.seed, device="cpu")
    rows = demonstration_rows(ENV, range(SFT_SEED_BASE, SFT_SEED_BASE + 400), policy.tokenizer, {**task, "max_thinking_tokens": 256})
    train_sft(policy, rows, steps=args.sft_steps, lr=3e-3, seed=args.seed)

    rollout = EnvRollout(ENV, policy.tokenizer, {**task, "max_thinking_tokens": args.budget})
    batch = args.prompts_per_step * args.num_generations
    config = GRPOConfig(output_dir=args.out, max_steps=args.steps, per_device_train_batch_size=batch, num_generations=args.num_generations,
                        learning_rate=args.learning_rate, lr_scheduler_type="constant", warmup_steps=0, loss_type="dapo", beta=0.0,
                        temperature=1.0, seed=args.seed, use_cpu=True, bf16=False, report_to="none", save_strategy="no",
                        logging_steps=1, disable_tqdm=True)
    trainer = GRPOTrainer(model=policy.model, reward_funcs=thinkgym_reward, args=config, processing_class=policy.tokenizer,
                          train_dataset=rollout.dataset(range(TRAIN_SEED_BASE, TRAIN_SEED_BASE + args.steps * args.prompts_per_step)),
                          rollout_func=rollout)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    print("| step | reward | reward_std | env/correctness/mean | completions/mean_length | clipped_ratio |")
    print("|---|---|---|---|---|---|")
    for h in logs:
        print(f"| {h['step']} | {h['reward']:.3f} | {h['reward_std']:.3f} | {h.get('env/correctness/mean', float('nan')):.3f} | "
              f"{h['completions/mean_length']:.1f} | {h['completions/clipped_ratio']:.3f} |")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))


if __name__ == "__main__":
    main()
