"""thinkgym's GRPO learner against TRL's `GRPOTrainer`, on equal settings, from the same warm start.

The task is the single-turn form of the demo's: running sums in LongCoT-v0, one context. The warm
start leaves room to learn: half of its demonstrations re-check every line (`recheck=0.5`), and such a
trace overruns the RL thinking budget (64 tokens, against about 50 for a plain one), so the policy
fails about half the time. For each seed: warm-start the tiny policy, score it on held-out seeds,
train one copy with thinkgym and one with TRL, and score both again. Both arms use the same group
size, prompts per step, learning rate and schedule, clip range, beta = 0, loss aggregation (`dapo`),
reward scaling, temperature and steps, and the env's own reward: 1 for a correct boxed answer that
ends with EOS within the budget. One engine scores every policy (128 seeds x 4 samples at T = 1).

    python benchmarks/learning_vs_trl.py            # 3 seeds; prints the table

What it does not show: speed (both run on the CPU, TRL through `model.generate`), or anything about
Delethink, which TRL cannot represent (one row per completion; see README).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from thinkgym.agents.evaluate import evaluate
from thinkgym.agents.learner.config import GRPOConfig
from thinkgym.agents.learner.trainer import GRPOTrainer
from thinkgym.agents.types import SFT_SEED_BASE, TRAIN_SEED_BASE
from thinkgym.agents.learner.sft import demonstration_rows, train_sft
from thinkgym.agents.policy import Policy
from thinkgym.agents.rollout.hf.engine import HFEngine

ENV = "LongCoT-v0"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--seeds", type=int, default=3, help="independent runs (warm start, both arms); the table gives their spread")
    ap.add_argument("--steps", type=int, default=30, help="RL steps (one optimizer step each) per arm")
    ap.add_argument("--sft-steps", type=int, default=500, help="warm-start SFT steps")
    ap.add_argument("--learning-rate", type=float, default=1e-4, help="RL learning rate of both arms (constant, no warm-up)")
    ap.add_argument("--prompts-per-step", type=int, default=8, help="prompts per step (groups)")
    ap.add_argument("--num-generations", type=int, default=8, help="samples per prompt (G)")
    ap.add_argument("--n-terms", type=int, default=4, help="terms of each running sum")
    ap.add_argument("--recheck", type=float, default=0.5, help="share of warm-start demonstrations that re-check every line")
    ap.add_argument("--budget", type=int, default=64, help="RL thinking budget in tokens, EOS included = TRL's max_completion_length")
    ap.add_argument("--held-out", type=int, default=128, help="held-out seeds scored before and after")
    ap.add_argument("--samples", type=int, default=4, help="samples per held-out seed, at T = 1")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--out", default="runs/learning_vs_trl", help="where both arms log and the results JSON goes")
    return ap.parse_args()


def held_out(policy: Policy, kw: dict, args: argparse.Namespace) -> float:
    """Sampled accuracy on seeds 0..held_out-1, with a fixed sampling seed for every policy."""
    res = evaluate(HFEngine(policy, seed=1234), ENV, range(args.held_out), n=args.samples, env_kwargs=kw, temperature=1.0)
    return res["accuracy"]


def warm_start(seed: int, kw: dict, args: argparse.Namespace) -> Policy:
    """SFT on demonstrations, under a budget that every demonstration fits (re-checking ones too)."""
    policy = Policy.tiny(seed=seed)
    rows = demonstration_rows(ENV, range(SFT_SEED_BASE, SFT_SEED_BASE + 400), policy.tokenizer, {**kw, "max_thinking_tokens": 256})
    train_sft(policy, rows, steps=args.sft_steps, lr=3e-3, seed=seed)
    return policy


def thinkgym_arm(start: Policy, seed: int, kw: dict, args: argparse.Namespace) -> Policy:
    policy = copy.deepcopy(start)
    cfg = GRPOConfig(env=ENV, env_kwargs=kw, steps=args.steps, prompts_per_step=args.prompts_per_step,
                     num_generations=args.num_generations, learning_rate=args.learning_rate, lr_scheduler="constant",
                     loss_type="dapo", scale_rewards="group", epsilon=0.2, epsilon_high=0.28, beta=0.0, temperature=1.0,
                     micro_batch_size=args.prompts_per_step * args.num_generations, seed=seed, eval_every=0, save_every=0,
                     log_completions_every=0, output_dir=f"{args.out}/seed{seed}/thinkgym")
    GRPOTrainer(cfg, policy=policy).train()
    return policy


def env_reward(env: Any) -> Callable[..., list[float]]:
    """The env's reward as a TRL reward function: 1 for a correct answer that ended with EOS within the
    budget. TRL passes each completion's ids (EOS included) and the dataset's `problem_seed` column."""
    tok = env.tokenizer

    def correctness(prompts, completions, completion_ids, problem_seed, **_):
        out = []
        for ids, seed in zip(completion_ids, problem_seed):
            ended = bool(ids) and ids[-1] == tok.eos_token_id
            text = tok.decode(ids[:-1] if ended else ids, skip_special_tokens=False)
            out.append(float(ended and env.task.verify(env.task.sample(seed), text).correct))
        return out

    return correctness


def trl_arm(start: Policy, seed: int, kw: dict, args: argparse.Namespace) -> Policy:
    """TRL's GRPOTrainer on the same prompts (as the env words them, token for token) and reward."""
    import gymnasium as gym
    from datasets import Dataset
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer as TRLTrainer

    policy = copy.deepcopy(start)
    tok = policy.tokenizer
    env = gym.make(ENV, tokenizer=tok, **kw).unwrapped
    rows = {"prompt": [], "problem_seed": []}
    for s in range(TRAIN_SEED_BASE, TRAIN_SEED_BASE + args.steps * args.prompts_per_step):
        obs, info = env.reset(seed=s)
        assert tok(text=[obs])["input_ids"][0] == info["prompt_token_ids"], "TRL would tokenize the prompt differently"
        rows["prompt"].append(obs)
        rows["problem_seed"].append(env.problem.seed)

    batch = args.prompts_per_step * args.num_generations
    targs = TRLConfig(output_dir=f"{args.out}/seed{seed}/trl", max_steps=args.steps, per_device_train_batch_size=batch,
                      gradient_accumulation_steps=1, num_generations=args.num_generations, learning_rate=args.learning_rate,
                      lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, loss_type="dapo",
                      scale_rewards="group", epsilon=0.2, epsilon_high=0.28, beta=0.0, temperature=1.0, top_p=1.0, top_k=0,
                      num_iterations=1, max_completion_length=args.budget, mask_truncated_completions=False, seed=seed,
                      use_cpu=True, bf16=False, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=False)
    trainer = TRLTrainer(model=policy.model, reward_funcs=env_reward(env), args=targs, train_dataset=Dataset.from_dict(rows),
                         processing_class=tok)
    trainer.train()
    policy.model = trainer.model
    return policy


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    kw = {"task_kwargs": {"n_terms": args.n_terms, "recheck": args.recheck}, "max_thinking_tokens": args.budget}
    results = []
    for seed in range(args.seeds):
        t0 = time.time()
        start = warm_start(seed, kw, args)
        res = {"seed": seed, "before": held_out(start, kw, args)}
        t = time.time()
        res["thinkgym"] = held_out(thinkgym_arm(start, seed, kw, args), kw, args)
        res["thinkgym_s"] = time.time() - t
        t = time.time()
        res["trl"] = held_out(trl_arm(start, seed, kw, args), kw, args)
        res["trl_s"] = time.time() - t
        res["total_s"] = time.time() - t0
        results.append(res)
        print(json.dumps(res), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))

    def ms(xs):
        xs = np.asarray(xs, dtype=float)
        return f"{xs.mean():.3f} ± {xs.std(ddof=1) if len(xs) > 1 else 0.0:.3f}"

    print(f"\nheld-out sampled accuracy ({args.held_out} seeds x {args.samples} at T=1), LongCoT-v0, "
          f"{args.steps} steps of {args.prompts_per_step} x {args.num_generations}, lr {args.learning_rate}")
    print("| seed | before RL | thinkgym after | thinkgym gain | TRL after | TRL gain | thinkgym − TRL |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['seed']} | {r['before']:.3f} | {r['thinkgym']:.3f} | {r['thinkgym'] - r['before']:+.3f} | {r['trl']:.3f} | "
              f"{r['trl'] - r['before']:+.3f} | {r['thinkgym'] - r['trl']:+.3f} |")
    col = lambda k: [r[k] for r in results]  # noqa: E731
    gain = lambda k: [r[k] - r["before"] for r in results]  # noqa: E731
    print(f"| mean ± sd | {ms(col('before'))} | {ms(col('thinkgym'))} | {ms(gain('thinkgym'))} | {ms(col('trl'))} | "
          f"{ms(gain('trl'))} | {ms([a - b for a, b in zip(col('thinkgym'), col('trl'))])} |")
    print(f"seconds per arm (RL + evaluation): thinkgym {ms(col('thinkgym_s'))}, TRL {ms(col('trl_s'))}")


if __name__ == "__main__":
    main()
