"""Does the demo's warm start learn the task on every seed? SFT alone, scored per seed.

The demo's RL can only amplify restated traces that the warm start already writes correctly. This
runs the demo's warm start (the tiny policy, SFT on `DelethinkDemo-v0`'s mixed demonstrations) for
several seeds and scores each result on the demo's 128 held-out problems: Delethink accuracy greedy
and sampled (T=1, 4 each), the share of sampled traces in the restated format and the accuracy within
each format, and the share of resets whose carryover held the state. The SFT weights are kept in
OUT/s<seed>/policy, and a few greedy traces per seed in OUT/results.json.

    python benchmarks/warm_start_seeds.py --seeds 0-11 --jobs 12 --threads 1 --device cuda
    python benchmarks/warm_start_seeds.py --seeds 0-2 --sft-lr 3e-3 --sft-steps 1200 --out runs/warm_start_old

What it does not show: RL (see demo_seeds.py), or anything beyond the demo's task and the tiny policy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from demo_seeds import parse_seeds, run_pool, seed_flags

from thinkgym.agents.learner.sft import demonstration_rows, train_sft
from thinkgym.agents.policy import Policy
from thinkgym.agents.rollout.collector import Collector
from thinkgym.agents.rollout.engine import make_engine
from thinkgym.agents.types import SFT_SEED_BASE
from thinkgym.envs.registration import DEMO_DELETHINK

HELD_OUT = range(128)


def one_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """The demo's warm start for `seed` (seeded as `GRPOTrainer` seeds it), saved and scored."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(seed)
    np.random.seed(seed)
    task = {**DEMO_DELETHINK["task_kwargs"], "restate": args.restate}
    env_kwargs = {"task_kwargs": task, "head": DEMO_DELETHINK["head"]}
    policy = Policy.from_pretrained("tiny", device=args.device, dtype=args.dtype, seed=seed)
    rows = demonstration_rows("DelethinkDemo-v0", range(SFT_SEED_BASE, SFT_SEED_BASE + args.sft_seeds), policy.tokenizer, env_kwargs)
    losses = train_sft(policy, rows, steps=args.sft_steps, batch_size=args.batch_size, lr=args.sft_lr, seed=seed, progress=False)
    out = Path(args.out) / f"s{seed}"
    policy.save_pretrained(out / "policy")
    engine = make_engine("hf", policy, seed)
    engine.seed(10_000 + seed)  # the demo's evaluation seed

    def episodes(env_id: str, n: int, temperature: float, kwargs: dict) -> list:
        return Collector(env_id, engine, kwargs, group_size=n, temperature=temperature).collect(list(HELD_OUT)).episodes

    res: dict[str, Any] = {"final_sft_loss": float(np.mean(losses[-50:]))}
    for name, n, temp in (("greedy", 1, 0.0), ("sampled", 4, 1.0)):
        eps = episodes("DelethinkDemo-v0", n, temp, env_kwargs)
        first_lines = [policy.tokenizer.decode(ep.steps[0].action_ids).split("\n")[0] for ep in eps]
        restated = np.array(["|" in line for line in first_lines])
        correct = np.array([bool(ep.info.get("correct", False)) for ep in eps])
        carried = [held for ep in eps for held in ep.info.get("carried_state", [])]
        res |= {f"{name}_accuracy": float(correct.mean()), f"{name}_restated_share": float(restated.mean()),
                f"{name}_accuracy_restated": float(correct[restated].mean()) if restated.any() else float("nan"),
                f"{name}_accuracy_labelled": float(correct[~restated].mean()) if (~restated).any() else float("nan"),
                f"{name}_carried_state": float(np.mean(carried)) if carried else float("nan")}
        if name == "greedy":  # a few traces as the env saw them, one string per chunk, to read what went wrong
            res["greedy_traces"] = [[policy.tokenizer.decode(s.action_ids) for s in ep.steps] for ep in eps[:args.show]]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    seed_flags(ap)
    ap.add_argument("--restate", type=float, default=0.35, help="share of demonstrations that restate the state (the demo's)")
    ap.add_argument("--sft-steps", type=int, default=900, help="SFT steps (the demo's)")
    ap.add_argument("--sft-lr", type=float, default=1.5e-3, help="SFT peak learning rate (the demo's)")
    ap.add_argument("--sft-seeds", type=int, default=400, help="demonstrations (the demo's)")
    ap.add_argument("--batch-size", type=int, default=32, help="SFT rows per step (the demo's)")
    ap.add_argument("--show", type=int, default=6, help="greedy traces kept per seed in results.json")
    ap.add_argument("--out", default="runs/warm_start_seeds", help="one folder per seed, and results.json")
    args = ap.parse_args()
    results = run_pool(one_seed, {s: (args, s) for s in parse_seeds(args.seeds)}, args.jobs)
    cols = ["greedy_accuracy", "sampled_accuracy", "sampled_restated_share", "sampled_accuracy_restated",
            "sampled_accuracy_labelled", "sampled_carried_state", "greedy_restated_share", "final_sft_loss"]
    short = ["greedy", "sampled", "restated", "acc|rest", "acc|label", "carried", "g.restated", "loss"]
    print(f"\nwarm start: {args.sft_steps} SFT steps, lr {args.sft_lr}, batch {args.batch_size}, {args.sft_seeds} demonstrations, "
          f"restate {args.restate}, {args.device}")
    print(f"{'seed':>4s} " + " ".join(f"{c:>10s}" for c in short))
    for s, r in sorted(results.items()):
        print(f"{s:>4d} " + " ".join(f"{r[c]:10.3f}" for c in cols))
    if results:
        print(f"{'mean':>4s} " + " ".join(f"{np.nanmean([r[c] for r in results.values()]):10.3f}" for c in cols))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
