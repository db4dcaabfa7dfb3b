"""Data-parallel scaling of a GRPO step: run it under torchrun with 1 and with N processes and compare.

    python benchmarks/gpu/scaling.py --out one.json
    NCCL_NVLS_ENABLE=0 torchrun --standalone --nproc-per-node 2 benchmarks/gpu/scaling.py --out two.json
    torchrun --standalone --nproc-per-node 2 benchmarks/gpu/scaling.py --tiny      # the script itself, on a CPU (gloo)

A step is what `thinkgym train` does, at fixed lengths: each rank samples its share of the step's
prompts × generations with the trainer's own engine (EOS ignored), then `GRPOTrainer.optimize` runs on
those rows (dapo, DDP across the ranks). The model has a real shape (bench.py's SHAPES) with random
weights. `--prompts` is the global batch, the same for any number of processes (strong scaling);
`--weak` gives each process that many prompts instead. Rank 0 prints one JSON line per step and the
medians over the steps after the first (warm-up).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench import SHAPES, TINY, build, sync  # beside this script
from thinkgym.agents import distributed
from thinkgym.agents.learner.config import GRPOConfig
from thinkgym.agents.learner.trainer import GRPOTrainer
from thinkgym.agents.rollout.engine import GenerationRequest
from thinkgym.agents.types import Row


def step_rows(trainer: GRPOTrainer, prompt_ids: list[list[int]], G: int, new_tokens: int) -> list[Row]:
    """This rank's rollouts of its prompts, as training rows (one episode per completion)."""
    reqs = [GenerationRequest(p, new_tokens, temperature=1.0, n=G, ignore_eos=True) for p in prompt_ids]
    outs = trainer.engine.generate(reqs)
    return [Row(p + c.token_ids, len(p), [1] * len(c.token_ids), c.logprobs, G * i + j)
            for i, (p, cs) in enumerate(zip(prompt_ids, outs)) for j, c in enumerate(cs)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="qwen2.5-0.5b", choices=sorted(SHAPES))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=32, help="prompts per step, over all processes (per process with --weak)")
    ap.add_argument("--weak", action="store_true", help="every process keeps --prompts prompts (weak scaling)")
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--tiny", action="store_true", help="a tiny model and batch, to check the script on a CPU")
    ap.add_argument("--out", help="write the per-step results and medians here (JSON)")
    args = ap.parse_args()
    if args.tiny:
        args.prompts, args.generations, args.prompt_len, args.new_tokens, args.micro_batch, args.steps = 4, 2, 16, 8, 4, 2
        torch.set_num_threads(1)
    world = distributed.world()
    device = distributed.setup(None) or ("cuda" if torch.cuda.is_available() else "cpu")
    shape = TINY if args.tiny else SHAPES[args.shape]
    policy = build(shape, device, torch.bfloat16 if device.startswith("cuda") else torch.float32)
    P = args.prompts * (world.size if args.weak else 1)
    cfg = GRPOConfig(prompts_per_step=P, num_generations=args.generations, micro_batch_size=args.micro_batch, loss_type="dapo",
                     learning_rate=1e-6, eval_every=0, save_every=0, output_dir=tempfile.mkdtemp(prefix="thinkgym-scaling-"))
    trainer = GRPOTrainer(cfg, policy=policy)
    g = np.random.default_rng(0)  # the global batch is the same for any number of processes
    results = []
    for step in range(args.steps):
        prompts = g.integers(300, shape["vocab_size"], size=(P, args.prompt_len)).tolist()
        adv = g.standard_normal(P * args.generations)
        mine = distributed.shard(range(P))
        distributed.barrier()
        sync()
        t0 = time.perf_counter()
        rows = step_rows(trainer, [prompts[i] for i in mine], args.generations, args.new_tokens)
        sync()
        t1 = time.perf_counter()
        first = mine[0] * args.generations if mine else 0
        trainer.optimize(rows, adv[first:first + len(rows)])
        sync()
        distributed.barrier()
        t2 = time.perf_counter()
        generated, trained = P * args.generations * args.new_tokens, P * args.generations * (args.prompt_len + args.new_tokens)
        res = {"world_size": world.size, "step": step, "rollout_s": t1 - t0, "train_s": t2 - t1, "step_s": t2 - t0,
               "generated_tokens_per_s": generated / (t2 - t0), "rollout_tokens_per_s": generated / (t1 - t0),
               "train_tokens_per_s": trained / (t2 - t1)}
        results.append(res)
        if world.is_main:
            print(json.dumps(res), flush=True)
    timed = results[1:] or results
    summary = {"world_size": world.size, "shape": "tiny" if args.tiny else args.shape, "weak": args.weak, "prompts_per_step": P,
               "generations": args.generations, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
               "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
               **{f"median_{k}": statistics.median(r[k] for r in timed) for k in results[0] if k not in ("world_size", "step")}}
    if world.is_main:
        print(json.dumps(summary), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps({"summary": summary, "steps": results}, indent=1))
    distributed.barrier()  # no rank tears gloo down while another still uses it (that aborted rank 0 once in the tests)
    distributed.shutdown()


if __name__ == "__main__":
    main()
