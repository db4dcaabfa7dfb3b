"""GRPO arms side by side from one warm start: what learns, what degrades, and why.

Every arm starts from the same weights (the demo's warm start for `--seed`, cached in `--out`) and
runs the same prompts; only its overrides differ. For each arm the table gives held-out accuracy
after RL (128 seeds, greedy and 4 samples at T = 1), the share of Delethink resets whose carryover
held the true state, and the signals behind a degradation: the relative size of the first update
|ΔW|/|W|, and KL(start ‖ policy) per token on a fixed probe set of the start policy's own rollouts.

An arm is `name:key=value,key=value` over `GRPOConfig` fields; `shuffle=1` permutes the advantages
within each step, which keeps the gradient's size and removes its signal (a noise-only control).

    python benchmarks/grpo_learning.py                       # every default arm, seed 0
    python benchmarks/grpo_learning.py --arms "lr 3e-5:learning_rate=3e-5;lr 1e-4:learning_rate=1e-4" --seed 1

What it does not show: anything at real model sizes (see benchmarks/gpu), or beyond `--steps`.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from thinkgym.agents.evaluate import evaluate
from thinkgym.agents.learner.config import GRPOConfig, parse_overrides
from thinkgym.agents.learner.logprobs import pad_rows
from thinkgym.agents.learner.trainer import GRPOTrainer
from thinkgym.agents.policy import Policy
from thinkgym.agents.rollout.collector import Collector
from thinkgym.agents.rollout.hf.engine import HFEngine
from thinkgym.envs.registration import DEMO_DELETHINK

ARMS = [
    "lr 1e-5:learning_rate=1e-5", "lr 3e-5 (the demo):", "lr 1e-4:learning_rate=1e-4", "lr 3e-4:learning_rate=3e-4",
    "lr 3e-5, shuffled advantages:shuffle=1", "lr 1e-4, shuffled advantages:learning_rate=1e-4,shuffle=1",
    "loss grpo:loss_type=grpo", "loss dapo:loss_type=dapo", "loss dr_grpo:loss_type=dr_grpo", "loss gspo:loss_type=gspo",
    "scale_rewards group:scale_rewards=group", "scale_rewards batch:scale_rewards=batch",
]
# the demo's run (loss delethink, scale_rewards none, lr 3e-5); every arm overrides some of it
BASE = dict(env="DelethinkDemo-v0", steps=40, prompts_per_step=8, num_generations=8, temperature=1.0, learning_rate=3e-5,
            loss_type="delethink", scale_rewards="none", epsilon=0.2, epsilon_high=0.28, micro_batch_size=64, eval_every=0,
            save_every=0, log_completions_every=0)


def parse_arm(spec: str) -> tuple[str, dict[str, Any], bool]:
    name, _, body = spec.partition(":")
    parts = list(filter(None, body.split(",")))
    shuffle = any(p.partition("=")[2] not in ("0", "false") for p in parts if p.startswith("shuffle="))
    try:
        over = parse_overrides([p for p in parts if not p.startswith("shuffle=")])
    except ValueError as exc:
        raise SystemExit(f"arm {name!r}: {exc}") from exc
    return name, over, shuffle


def kl_probe(start: Policy, env: str, kw: dict) -> Any:
    """KL(start ‖ π) per token on 64 rollouts of the start policy, as a function of π's model."""
    rows = Collector(env, HFEngine(start, seed=99), kw, group_size=4).collect(list(range(50_000, 50_016))).rows
    batch = pad_rows(rows, start.tokenizer.pad_token_id, start.device)

    def all_logp(model):
        with torch.no_grad():
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
        B, Lc = batch.targets.shape
        pos = (torch.tensor(batch.prompt_lens, device=logits.device).unsqueeze(1) - 1
               + torch.arange(Lc, device=logits.device)).clamp(max=logits.shape[1] - 1)
        return torch.log_softmax(logits.gather(1, pos.unsqueeze(-1).expand(B, Lc, logits.shape[-1])), -1)

    ref = all_logp(start.model)
    return lambda model: float(((ref.exp() * (ref - all_logp(model))).sum(-1) * batch.loss_mask).sum() / batch.loss_mask.sum())


def held_out(policy: Policy, env: str, kw: dict, n: int) -> dict[str, float]:
    eng = HFEngine(policy, seed=1234)
    g = evaluate(eng, env, range(n), n=1, temperature=0.0, env_kwargs=kw)
    s = evaluate(eng, env, range(n), n=4, temperature=1.0, env_kwargs=kw, ks=(1, 4))
    return {"greedy": g["accuracy"], "sampled": s["accuracy"], "carried": s.get("carried_state", float("nan"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--arms", default=";".join(ARMS), help="';'-separated arms, each 'name:key=value,...'")
    ap.add_argument("--seed", type=int, default=0, help="seed of the warm start, the prompts' sampler and every arm")
    ap.add_argument("--steps", type=int, default=40, help="GRPO steps per arm")
    ap.add_argument("--restate", type=float, default=0.35, help="the demo's share of restating demonstrations")
    ap.add_argument("--sft-steps", type=int, default=900, help="warm-start SFT steps (the demo's)")
    ap.add_argument("--sft-learning-rate", type=float, default=1.5e-3, help="warm-start SFT learning rate (the demo's)")
    ap.add_argument("--start", default=None, help="a saved policy to start every arm from instead of the demo's warm start")
    ap.add_argument("--size", default="{}", help="JSON overrides of the tiny policy's config for the warm start, e.g. the ~30M "
                    '\'{"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 8, "num_attention_heads": 8}\'')
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda where there is one)")
    ap.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: bf16 on a GPU, fp32 on the CPU)")
    ap.add_argument("--held-out", type=int, default=128, help="held-out seeds scored after each arm")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--out", default="runs/grpo_learning", help="cached warm start, TensorBoard logs per arm, results.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    arms = [parse_arm(a) for a in args.arms.split(";") if a.strip()]
    out = Path(args.out)
    kw = {"task_kwargs": {**DEMO_DELETHINK["task_kwargs"], "restate": args.restate}}
    base = {**BASE, "env_kwargs": kw, "steps": args.steps, "seed": args.seed}

    size = json.loads(args.size)
    tag = "".join(f"-{k}{v}" for k, v in sorted(size.items()))
    name = f"start-seed{args.seed}-sft{args.sft_steps}-lr{args.sft_learning_rate}-restate{args.restate}{tag}"
    start_dir = Path(args.start) if args.start else out / name
    if not (start_dir / "config.json").exists():
        warm = GRPOTrainer(GRPOConfig(**base, sft_steps=args.sft_steps, sft_learning_rate=args.sft_learning_rate,
                                      output_dir=str(out / "warm")),
                           policy=Policy.tiny(seed=args.seed, device=args.device, dtype=getattr(torch, args.dtype or "", None), **size))
        warm.warm_start()
        warm.policy.save_pretrained(start_dir)
    start = Policy.from_pretrained(str(start_dir), device=args.device, dtype=args.dtype)
    kl_to_start = kl_probe(start, base["env"], kw)
    first = held_out(start, base["env"], kw, args.held_out)
    print(f"start {start_dir}: {json.dumps(first)}", flush=True)

    results = []
    for name, over, shuffle in arms:
        t0 = time.time()
        policy = copy.deepcopy(start)
        cfg = GRPOConfig(**{**base, **over, "output_dir": str(out / f"seed{args.seed}" / name.replace(" ", "_").replace(",", ""))})
        trainer = GRPOTrainer(cfg, policy=policy)
        if shuffle:
            real, rng = trainer.advantages, np.random.default_rng(args.seed)
            trainer.advantages = lambda batch, rewards: rng.permutation(real(batch, rewards))
        w0 = [p.detach().clone() for p in policy.model.parameters()]
        norm0 = float(sum((w.float() ** 2).sum() for w in w0)) ** 0.5
        rewards, first_dw = [], None
        for _ in range(cfg.steps):
            m = trainer.train_step()
            trainer.step += 1
            trainer.log(m, trainer.step)
            rewards.append(m["reward"])
            if first_dw is None:
                first_dw = float(sum(((p.detach().float() - w.float()) ** 2).sum() for p, w in zip(policy.model.parameters(), w0))) ** 0.5 / norm0
        res = {"arm": name, **held_out(policy, base["env"], kw, args.held_out), "kl_to_start": kl_to_start(policy.model),
               "first_update": first_dw, "reward_first10": float(np.mean(rewards[:10])), "reward_last10": float(np.mean(rewards[-10:])),
               "seconds": time.time() - t0, "seed": args.seed}
        results.append(res)
        with open(out / "results.jsonl", "a") as f:
            f.write(json.dumps(res) + "\n")
        print(json.dumps(res), flush=True)

    print(f"\nfrom {start_dir} (seed {args.seed}): greedy {first['greedy']:.3f}, sampled {first['sampled']:.3f}, "
          f"carryover held the state {first['carried']:.3f}; {args.steps} steps of 8 x 8 per arm")
    print("| arm | greedy | sampled (T=1) | sampled gain | carryover held the state | KL to start | first update ‖ΔW‖/‖W‖ | train reward, first → last 10 steps |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['arm']} | {r['greedy']:.3f} | {r['sampled']:.3f} | {r['sampled'] - first['sampled']:+.3f} | {r['carried']:.3f} | "
              f"{r['kl_to_start']:.4f} | {r['first_update']:.5f} | {r['reward_first10']:.2f} → {r['reward_last10']:.2f} |")


if __name__ == "__main__":
    main()
