"""R2R on the CPU: a weak small policy, a strong large one, a router trained on verifier labels, and
routed generation that gets most of the large policy's accuracy while the small one writes most tokens.

    .venv/bin/python examples/r2r_routing.py [--small-steps 300 --large-steps 500 --out /tmp/r2r]

Both policies are tiny Qwen2 models SFT-trained on LongCoT-v0 running sums (4 terms): the small one
(64 wide, 2 layers) for fewer steps, the large one (Policy.tiny: 128 wide, 4 layers) for more. Labels, router and numbers land in --out. Takes a few minutes on one core.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from thinkgym.agents.evaluate import evaluate
from thinkgym.agents.methods.r2r import DIVERGENT, NEUTRAL, label_tokens, save_labels, select_seeds
from thinkgym.agents.rollout.hf.routed import RoutedEngine
from thinkgym.agents.methods.router import RateRouter, RouterConfig, binary_metrics, router_probs, train_router
from thinkgym.agents.learner.sft import demonstration_rows, train_sft
from thinkgym.agents.policy import Policy
from thinkgym.agents.rollout.hf.engine import HFEngine
from thinkgym.agents.types import SFT_SEED_BASE

ENV_ID = "LongCoT-v0"
ENV_KWARGS = {"task_kwargs": {"n_terms": 4}, "max_thinking_tokens": 200}


def trained(steps: int, seed: int, **config) -> Policy:
    policy = Policy.tiny(seed, device="cpu", **config)
    rows = demonstration_rows(ENV_ID, range(SFT_SEED_BASE, SFT_SEED_BASE + 300), policy.tokenizer, ENV_KWARGS)
    train_sft(policy, rows, steps=steps, lr=3e-3, seed=seed)
    return policy


def timed_eval(engine, seeds) -> tuple[dict, float]:
    t0 = time.perf_counter()
    res = evaluate(engine, ENV_ID, seeds, n=1, env_kwargs=ENV_KWARGS, temperature=0.0)
    return res, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--small-steps", type=int, default=300)
    ap.add_argument("--large-steps", type=int, default=500)
    ap.add_argument("--label-seeds", type=int, default=250, help="tasks labelled for router training (80%) and tau (20%)")
    ap.add_argument("--test-seeds", type=int, default=80, help="held-out tasks labelled to measure the router")
    ap.add_argument("--eval-seeds", type=int, default=200)
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="/tmp/r2r")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    small = trained(args.small_steps, 0, hidden_size=64, intermediate_size=192, num_hidden_layers=2)
    large = trained(args.large_steps, 1)
    print(f"SFT done in {time.perf_counter() - t0:.0f}s")

    t0 = time.perf_counter()
    n_fit = args.label_seeds
    labels = label_tokens(small, large, ENV_ID, range(n_fit + args.test_seeds), ENV_KWARGS)
    save_labels(labels, out / "labels.pt")
    kinds = labels["kind"]
    print(f"labelled {len(kinds)} tokens in {time.perf_counter() - t0:.0f}s: identical {(kinds == 0).float().mean():.1%}, "
          f"neutral {(kinds == NEUTRAL).float().mean():.1%}, divergent {(kinds == DIVERGENT).float().mean():.1%}")
    split = int(0.8 * n_fit)
    train, valid = select_seeds(labels, range(split)), select_seeds(labels, range(split, n_fit))
    test = select_seeds(labels, range(n_fit, n_fit + args.test_seeds))
    # a router about as small as the small policy, so routing pays off in active parameters
    config = RouterConfig(hidden_size=small.model.config.hidden_size, width=64, n_blocks=2)
    router = train_router(train, valid, config, target_recall=args.target_recall)
    router.save(out / "router.pt")
    m = binary_metrics(router_probs(router, test["hidden"], test["token_emb"], test["topk_logits"]) >= router.threshold,
                       test["label"].numpy())
    print(f"router tau={router.threshold:.3f}; held-out labels ({int(test['label'].sum())} divergent of {len(test['label'])}): "
          f"recall {m['recall']:.3f} precision {m['precision']:.3f} fpr {m['fpr']:.3f} fires on {m['positive_rate']:.1%}")

    seeds = list(range(10_000, 10_000 + args.eval_seeds))
    print(f"\n{'policy':>14} | {'accuracy':>8} | {'routed':>6} | {'avg active params':>17} | {'wall s':>6}")

    def show(name: str, engine) -> dict:
        res, wall = timed_eval(engine, seeds)
        rep = engine.report() if isinstance(engine, RoutedEngine) else {
            "routed_frac": float(engine.policy is large), "avg_active_params": sum(p.numel() for p in engine.policy.model.parameters())}
        print(f"{name:>14} | {res['accuracy']:>8.3f} | {rep['routed_frac']:>6.1%} | {rep['avg_active_params'] / 1e6:>16.2f}M | {wall:>6.1f}")
        return rep

    show("small", HFEngine(small))
    show("large", HFEngine(large))
    rep = show("routed", RoutedEngine(small, large, router))
    # control: the same share of tokens routed at random, to see what the router's choice is worth
    show("random routing", RoutedEngine(small, large, RateRouter(rep["routed_frac"])))

if __name__ == "__main__":
    main()
