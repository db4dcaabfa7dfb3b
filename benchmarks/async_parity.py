"""Does asynchronous GRPO learn as well as the synchronous trainer? (issue 37's learning parity)

From each seed's demo `checkpoint-0` (the weights `examples/demo.py` starts GRPO from, after its warm start),
the demo's GRPO run in each of `--arms`: `sync` (one process), `async` (torchrun, 2 processes: a learner
and a rollout rank) and `thread` (one process: a rollout thread beside the learner), the asynchronous arms at
`max_staleness` 1 with the correction `--correction`. Each run is scored on the demo's
held-out problems as the demo scores them (greedy, and sampled at T = 1, 4 each), before and after; the
summary gives, per arm, the mean ± sd over seeds of the gain in sampled accuracy.

    python benchmarks/demo_seeds.py --seeds 0-2 --out runs/demo_seeds                  # the starts, if none exist
    python benchmarks/async_parity.py --starts runs/demo_seeds/demo --seeds 0-2 --out runs/async_parity

A run whose `result.json` exists is read, not rerun. What it does not show: speed (the arms share this
machine's cores), or anything beyond the demo's task and the tiny policy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
ARMS = ("sync", "async", "thread")


def parse_seeds(text: str) -> list[int]:
    """`0,1,2` or `0-2`."""
    out: list[int] = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def held_out(engine, cfg, seed: int, problems: int) -> dict[str, float]:
    """The demo's held-out numbers (`examples/demo.py`'s `held_out`, without LongCoT): same seeds, same sampling seed."""
    from thinkgym.agents.evaluate import evaluate

    engine.seed(10_000 + seed)
    greedy = evaluate(engine, cfg.env, range(problems), n=1, temperature=0.0, env_kwargs=cfg.env_kwargs)
    sampled = evaluate(engine, cfg.env, range(problems), n=4, temperature=1.0, env_kwargs=cfg.env_kwargs, ks=(1, 4))
    return {"greedy_accuracy": greedy["accuracy"], "sampled_accuracy": sampled["accuracy"], "pass@4": sampled["pass@4"]}


def worker(arm: str, start: Path, seed: int, out: Path, problems: int, correction: str, steps: int, lr: float) -> None:
    """One arm of one seed: GRPO from `start` (a demo's checkpoint-0) with the demo's own settings."""
    import torch

    from thinkgym.agents import distributed, interrupt
    from thinkgym.agents.learner.async_grpo import train_async
    from thinkgym.agents.learner.checkpoint import load_trainer_state
    from thinkgym.agents.learner.config import GRPOConfig
    from thinkgym.agents.learner.trainer import GRPOTrainer

    torch.set_num_threads(1)
    demo = load_trainer_state(start)["config"]
    cfg = GRPOConfig.from_dict({**demo, "model": str(start / "policy"), "sft_steps": 0, "output_dir": str(out), "eval_every": 0,
                                "save_every": 0, "async_rollouts": arm != "sync", "max_staleness": 1,
                                "off_policy_correction": correction, **({"steps": steps} if steps else {}),
                                **({"learning_rate": lr} if lr else {})})
    if arm == "sync":
        trainer = GRPOTrainer(cfg)
        before = held_out(trainer.engine, cfg, seed, problems)
        trainer.train()
    else:
        trainer, _ = train_async(cfg)
        before = None
    if interrupt.requested() is not None:  # a stopped run is no arm's result
        return
    if distributed.world().is_main:
        after = held_out(trainer.engine, cfg, seed, problems)
        (out / "result.json").write_text(json.dumps({"arm": arm, "seed": seed, "start": str(start), "before": before, "after": after}))


def run(arm: str, start: Path, seed: int, out: Path, problems: int, correction: str, steps: int, lr: float) -> dict:
    result = out / "result.json"
    if not result.exists():
        out.mkdir(parents=True, exist_ok=True)
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"] if arm == "async" else []
        cmd = [sys.executable, *launcher, str(HERE), "--worker", arm, "--checkpoint0", str(start), "--seed", str(seed), "--out", str(out),
               "--held-out", str(problems), "--correction", correction, "--steps", str(steps), "--learning-rate", str(lr)]
        with open(out / "log.txt", "w") as log:
            subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True)
    return json.loads(result.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--starts", type=Path, help="a demo_seeds.py arm folder: sS/checkpoint-0 for each seed S")
    ap.add_argument("--seeds", default="0-2", help="seeds, e.g. 0,1,2 or 0-2")
    ap.add_argument("--out", type=Path, default=Path("runs/async_parity"), help="one folder per arm and seed")
    ap.add_argument("--held-out", type=int, default=128, help="held-out problems (the demo's 128)")
    ap.add_argument("--correction", default="tis", choices=("tis", "mis"), help="the asynchronous arm's off_policy_correction")
    ap.add_argument("--steps", type=int, default=0, help="GRPO steps (0: the demo's 30)")
    ap.add_argument("--learning-rate", type=float, default=0.0,
                    help="GRPO learning rate, both arms (0: the one saved in each start's config, that demo's own)")
    ap.add_argument("--arms", default="sync,async", help=f"comma-separated arms, from {', '.join(ARMS)}; sync is the reference")
    ap.add_argument("--worker", choices=ARMS, help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint0", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.checkpoint0, args.seed, args.out, args.held_out, args.correction, args.steps, args.learning_rate)
    if args.learning_rate < 0:
        ap.error(f"--learning-rate must be >= 0 (0: each start's own); got {args.learning_rate}")
    if args.starts is None:
        sys.exit("--starts is required: a folder of demo runs (sS/checkpoint-0), e.g. from benchmarks/demo_seeds.py")
    arms = args.arms.split(",")
    if "sync" not in arms or any(a not in ARMS for a in arms):
        ap.error(f"--arms must list sync and any of {', '.join(ARMS[1:])}, comma-separated; got {args.arms!r}")
    gains: dict[str, list[float]] = {arm: [] for arm in arms}
    for seed in parse_seeds(args.seeds):
        start = args.starts / f"s{seed}" / "checkpoint-0"
        if not (start / "trainer_state.pt").exists():
            sys.exit(f"{start} is not a checkpoint (no trainer_state.pt); run benchmarks/demo_seeds.py for seed {seed} first")
        common = (args.held_out, args.correction, args.steps, args.learning_rate)
        results = {arm: run(arm, start, seed, args.out / arm / f"s{seed}", *common) for arm in arms}
        before = results["sync"]["before"]
        for arm, r in results.items():
            gains[arm].append(r["after"]["sampled_accuracy"] - before["sampled_accuracy"])
        print(f"seed {seed}: sampled accuracy {before['sampled_accuracy']:.3f} -> "
              + ", ".join(f"{arm} {r['after']['sampled_accuracy']:.3f}" for arm, r in results.items())
              + f"; greedy {before['greedy_accuracy']:.3f} -> "
              + ", ".join(f"{arm} {r['after']['greedy_accuracy']:.3f}" for arm, r in results.items()), flush=True)
    for arm, g in gains.items():
        print(f"{arm:5s} gain in sampled accuracy over {len(g)} seeds: {np.mean(g):+.3f} ± {np.std(g, ddof=1) if len(g) > 1 else 0:.3f}")


if __name__ == "__main__":
    main()
