"""SATURN's curriculum in miniature: RL through `SATCurriculum-v0` against `SAT-v0` fixed at the hardest
and at the easiest level, at equal steps, scored on held-out instances of the hardest level.

Per seed: one warm start (a small Qwen2 policy, SFT on the task's DPLL demonstrations at the easiest
level), saved; then three GRPO arms from exactly those weights, with equal steps, prompts, group size
and learning rate:
- curriculum: `SATCurriculum-v0` over `--levels`, promoting when pass@1 over one step's episodes
  exceeds 0.5 (SATURN's ε; checked every step instead of every 250 episodes, since the runs are short);
- hardest: `SAT-v0` at the last level; easiest: `SAT-v0` at the first.
Each is scored (and the warm start) on `--held-out` instances of the hardest level: greedy, and pass@1
sampled at T = 1 (`--samples` each). Results per seed in OUT/s<seed>/result.json (a seed whose file
exists is read, not rerun); the table over seeds in OUT/summary.json and OUT/summary.md.

SATURN's prompt alone is about 800 byte-tokens, so the policy is the embedded tiny one with 2048
positions (`--max-positions`; `--hidden-size` and `--layers` make it larger), and a seed is slow on
a CPU (every row is ~1,000 tokens): use `--device cuda`.

    python benchmarks/saturn_curriculum.py --seeds 0-2 --jobs 3 --device cuda
    python benchmarks/saturn_curriculum.py --seeds 0 --sft-steps 0 --rl-steps 1 --prompts 2 --group-size 2 \\
        --budget 16 --held-out 2 --samples 2 --out /tmp/sat                                       # a smoke run

What it does not show: SATURN's scale (1.5B-7B models, thousands of steps) or its test sets.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from demo_seeds import parse_seeds, run_pool, seed_flags

from thinkgym.agents.evaluate import evaluate
from thinkgym.agents.learner.config import GRPOConfig
from thinkgym.agents.learner.trainer import GRPOTrainer
from thinkgym.agents.plot import read_scalars
from thinkgym.agents.policy import Policy
from thinkgym.agents.rollout.engine import Engine
from thinkgym.envs.tasks.sat import SATURN_STAGES

ARMS = ("curriculum", "hardest", "easiest")


def parse_levels(text: str) -> list[dict[str, int]]:
    """`3,5,5;3,5,6` -> [{n: 3, k: 5, l: 5}, {n: 3, k: 5, l: 6}]: (literals per clause, variables, clauses)."""
    try:
        levels = [dict(zip("nkl", map(int, part.split(",")), strict=True)) for part in text.split(";") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--levels {text!r}: give ';'-separated n,k,l triples, e.g. 3,5,5;3,5,6") from None
    if len(levels) < 2:
        raise argparse.ArgumentTypeError(f"--levels {text!r}: a curriculum needs at least two levels")
    return levels


def arm_env(args: argparse.Namespace, arm: str) -> tuple[str, dict[str, Any]]:
    """The environment id and kwargs `arm` trains in."""
    shared = {"max_thinking_tokens": args.budget}
    if arm == "curriculum":
        check = args.prompts * args.group_size  # one step's episodes
        return "SATCurriculum-v0", {**shared, "levels": args.levels, "check_every": check, "promote_above": 0.5}
    return "SAT-v0", {**shared, "task_kwargs": args.levels[-1 if arm == "hardest" else 0]}


def config(args: argparse.Namespace, seed: int, env: tuple[str, dict[str, Any]], out: Path, sft_steps: int) -> GRPOConfig:
    return GRPOConfig(env=env[0], env_kwargs=env[1], model="tiny", output_dir=str(out), seed=seed, device=args.device,
                      dtype=args.dtype, sft_steps=sft_steps, sft_learning_rate=args.sft_lr, sft_seeds=400,
                      steps=args.rl_steps, prompts_per_step=args.prompts, num_generations=args.group_size, temperature=1.0,
                      learning_rate=args.learning_rate, loss_type="dapo", epsilon_high=0.28,
                      micro_batch_size=16, eval_every=0, save_every=0, log_completions_every=10)


def hardest_pass_at_1(engine: Engine, args: argparse.Namespace, seed: int, who: str) -> dict[str, float]:
    """Greedy accuracy and sampled pass@1 on held-out instances of the hardest level."""
    kw = {"max_thinking_tokens": args.budget, "task_kwargs": args.levels[-1]}
    engine.seed(10_000 + seed)
    greedy = evaluate(engine, "SAT-v0", range(args.held_out), n=1, temperature=0.0, env_kwargs=kw, progress=f"s{seed} {who}: greedy")
    sampled = evaluate(engine, "SAT-v0", range(args.held_out), n=args.samples, temperature=1.0, env_kwargs=kw,
                       progress=f"s{seed} {who}: sampled")
    return {"greedy": greedy["accuracy"], "pass@1": sampled["pass@1"], "mean_tokens": sampled["mean_tokens"]}


def one_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    root = Path(args.out) / f"s{seed}"
    path = root / "result.json"
    if path.exists() or args.report_only:
        return json.loads(path.read_text()) if path.exists() else {}
    policy = Policy.tiny(seed=seed, device=args.device, dtype=getattr(torch, args.dtype), max_position_embeddings=args.max_positions,
                         hidden_size=args.hidden_size, intermediate_size=3 * args.hidden_size, num_hidden_layers=args.layers)
    warm = GRPOTrainer(config(args, seed, arm_env(args, "easiest"), root / "warm_start", args.sft_steps), policy=policy)
    if args.sft_steps:  # demonstrations of the easiest level
        warm.warm_start()
    warm.policy.save_pretrained(root / "warm_start" / "policy")
    res: dict[str, Any] = {"warm_start": hardest_pass_at_1(warm.engine, args, seed, "warm start")}
    for arm in ARMS:
        cfg = config(args, seed, arm_env(args, arm), root / arm, 0)
        cfg.model = str(root / "warm_start" / "policy")
        trainer = GRPOTrainer(cfg)
        trainer.train()
        levels = read_scalars(root / arm).get("curriculum/level", [])
        res[arm] = {**hardest_pass_at_1(trainer.engine, args, seed, arm), "final_level": levels[-1][1] if levels else None,
                    "train_accuracy_last_5": float(np.mean([v for _, v in read_scalars(root / arm)["accuracy"][-5:]]))}
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1))
    return res


def table(results: dict[int, dict[str, Any]], args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    runs = [r for r in results.values() if r]
    hardest = ",".join(str(args.levels[-1][x]) for x in "nkl")

    def cell(values: list[float]) -> str:
        v = np.array(values, dtype=float)
        return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}"

    summary = {who: {k: [r[who][k] for r in runs] for k in ("greedy", "pass@1")} for who in ("warm_start", *ARMS)} if runs else {}
    lines = [f"Held-out {args.held_out} instances of the hardest level (n,k,l = {hardest}), {len(runs)} seeds, mean ± sd; "
             f"{args.rl_steps} GRPO steps of {args.prompts} x {args.group_size} per arm; pass@1 sampled at T = 1, {args.samples} each.", "",
             "| policy | greedy | pass@1 | curriculum level reached |", "|---|---|---|---|"]
    for who in ("warm_start", *ARMS):
        if runs:
            reached = cell([r[who]["final_level"] for r in runs]) if who == "curriculum" else "-"
            lines.append(f"| {who.replace('_', ' ')} | {cell(summary[who]['greedy'])} | {cell(summary[who]['pass@1'])} | {reached} |")
    return summary, "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    seed_flags(ap)
    ap.add_argument("--levels", type=parse_levels, default=parse_levels(";".join(",".join(map(str, s)) for s in SATURN_STAGES)),
                    help="the curriculum's levels, easiest first, as n,k,l;n,k,l;... (default: SATURN's released stages)")
    ap.add_argument("--budget", type=int, default=512, help="thinking tokens per instance (the easiest level's demonstrations need up to 401)")
    ap.add_argument("--max-positions", type=int, default=2048, help="the tiny policy's context (SATURN's prompt is ~800 tokens)")
    ap.add_argument("--hidden-size", type=int, default=128, help="the tiny policy's width (its default: 128), to find the smallest that learns SAT")
    ap.add_argument("--layers", type=int, default=4, help="the tiny policy's layers (its default: 4)")
    ap.add_argument("--sft-steps", type=int, default=600, help="warm-start SFT steps on the easiest level's demonstrations (0: none)")
    ap.add_argument("--sft-lr", type=float, default=1.5e-3, help="warm-start SFT peak learning rate")
    ap.add_argument("--rl-steps", type=int, default=30, help="GRPO steps of --prompts x --group-size samples, each arm")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per GRPO step, every arm")
    ap.add_argument("--group-size", type=int, default=8, help="samples per prompt, every arm")
    ap.add_argument("--learning-rate", type=float, default=5e-5, help="GRPO learning rate, every arm")
    ap.add_argument("--held-out", type=int, default=128, help="held-out instances of the hardest level")
    ap.add_argument("--samples", type=int, default=4, help="sampled answers per held-out instance, for pass@1")
    ap.add_argument("--report-only", action="store_true", help="tabulate the results on disk, running nothing")
    ap.add_argument("--out", default="runs/saturn_curriculum", help="one folder per seed, and summary.json / summary.md")
    args = ap.parse_args()
    results = run_pool(one_seed, {s: (args, s) for s in parse_seeds(args.seeds)}, args.jobs)
    summary, text = table(results, args)
    print("\n" + text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps({"args": {**vars(args)}, **summary}, indent=1))
    (out / "summary.md").write_text(text)
    print(f"tables: {out / 'summary.md'}, {out / 'summary.json'}")


if __name__ == "__main__":
    main()
