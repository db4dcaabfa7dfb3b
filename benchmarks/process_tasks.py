"""MaskedStep-v0 / StepReorder-v0 on each source: coverage, build and verify cost, baseline rewards.

For every item of a source (the first 500 seeds for procedural ones) it builds the episode and
prints: the share of items that yield an episode, the mean time to build one, the mean time to
verify the gold answer (its reward must be 1.0), for number/formula masks the reward and cost of
gold fills rewritten as `gold+0` (only math-verify can accept those), and for reordering the reward
of two trivial policies (keep the shown order; a random permutation): the floor a policy must beat.

    .venv/bin/python benchmarks/process_tasks.py [--data ../shared/data/math]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from thinkgym.envs.tasks.masked_step import MaskedStepTask
from thinkgym.envs.tasks.step_reorder import StepReorderTask

KINDS = [("MaskedStep number", MaskedStepTask, {"mask": "number"}), ("MaskedStep formula", MaskedStepTask, {"mask": "formula"}),
         ("MaskedStep step", MaskedStepTask, {"mask": "step"}), ("StepReorder k=3", StepReorderTask, {"k": 3}),
         ("StepReorder k=3 kendall", StepReorderTask, {"k": 3, "reward": "kendall"})]


def boxed(order) -> str:
    return "</think>\\boxed{" + ",".join(map(str, order)) + "}"


def run(name: str, cls, kwargs: dict, source: dict, n_verify: int = 100) -> dict:
    task = cls(**source, **kwargs)
    n = len(task.source) or 500
    t0 = time.perf_counter()
    built = [task.build(task.source.solution(s), s) for s in range(n)]
    build_ms = 1000 * (time.perf_counter() - t0) / n
    ok = [b for b in built if b is not None][:n_verify]
    t0 = time.perf_counter()
    gold = np.mean([task.verify(p, demo).score for p, demo in ok])
    verify_ms = 1000 * (time.perf_counter() - t0) / len(ok)
    row = {"env": name, "items": n, "valid": sum(b is not None for b in built) / n, "build_ms": build_ms,
           "verify_ms": verify_ms, "gold": gold, "rewrite": "—", "rewrite_ms": "—", "shown": "—", "random": "—"}
    if cls is MaskedStepTask and kwargs["mask"] != "step":
        # `+0` appended to every gold fill: the text no longer matches, so only math-verify can accept it.
        t0 = time.perf_counter()
        scores = [task.verify(p, "</think>\n" + "\n".join(f"[MASK_{i}]: {g}+0" for i, g in enumerate(p.meta["golds"], 1))).score
                  for p, _ in ok]
        row["rewrite"], row["rewrite_ms"] = f"{np.mean(scores):.3f}", f"{1000 * (time.perf_counter() - t0) / len(ok):.0f}"
    if cls is StepReorderTask:
        rng = np.random.default_rng(0)
        k = [len(p.meta["window"]) for p, _ in ok]
        row["shown"] = f"{np.mean([task.verify(p, boxed(range(1, kk + 1))).score for (p, _), kk in zip(ok, k)]):.3f}"
        row["random"] = f"{np.mean([task.verify(p, boxed(rng.permutation(kk) + 1)).score for (p, _), kk in zip(ok, k)]):.3f}"
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "math"))
    args = ap.parse_args()
    sources = {"running_sum": {"source": "running_sum"}, "long_addition": {"source": "long_addition"}}
    for name in ("gsm8k", "math500"):
        path = Path(args.data) / f"{name}.jsonl"
        if path.exists():
            sources[name] = {"path": str(path)}
    print("| source | env | items | valid | build ms | verify ms | gold reward | `+0` rewrite reward | rewrite ms | keep-shown | random perm |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for src, kw in sources.items():
        for name, cls, kwargs in KINDS:
            r = run(name, cls, kwargs, kw)
            print(f"| {src} | {r['env']} | {r['items']} | {r['valid']:.1%} | {r['build_ms']:.2f} | {r['verify_ms']:.1f} "
                  f"| {r['gold']:.3f} | {r['rewrite']} | {r['rewrite_ms']} | {r['shown']} | {r['random']} |")


if __name__ == "__main__":
    main()
