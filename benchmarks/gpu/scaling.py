"""Data-parallel scaling of a GRPO step, strong and weak: run it with 1 process, then under torchrun with N,
and compare.

    python benchmarks/gpu/scaling.py --out one.json
    NCCL_NVLS_ENABLE=0 torchrun --standalone --nproc-per-node 2 benchmarks/gpu/scaling.py --out two.json --baseline one.json
    torchrun --standalone --nproc-per-node 2 benchmarks/gpu/scaling.py --tiny --out t.json   # the script itself, on a CPU (gloo)

A step is what `thinkgym train` does, at fixed lengths: each rank samples its share of the step's prompts ×
generations with the trainer's own engine (EOS ignored), `GRPOTrainer.optimize` runs on those rows (dapo, DDP
across the ranks), and the engine syncs. The models have real shapes (bench.py's SHAPES) with random weights.
For each shape in `--shapes`:
- strong scaling: `--prompts` prompts per step over all processes, the same global batch for any number;
- weak scaling: `--prompts` prompts per process, the batch per GPU held.
With one process the two are the same run. Rank 0 prints one JSON line per step and the medians over the
steps after the first (the first captures CUDA graphs and compiles). With `--baseline` (the one-process
JSON) it prints the speed-ups, each part of the step on its own: strong = T1 / TN on the same global batch;
weak = N · T1 / TN, the throughput gained with the batch per GPU held.
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

from bench import SHAPES, TINY, build, free, sync  # beside this script
from thinkgym.agents import distributed
from thinkgym.agents.learner.config import GRPOConfig
from thinkgym.agents.learner.trainer import GRPOTrainer
from thinkgym.agents.rollout.engine import GenerationRequest
from thinkgym.agents.types import Row

PARTS = ("step_s", "train_s", "rollout_s")
SAME_SETTINGS = ("generations", "prompt_len", "new_tokens", "micro_batch")


def step_rows(trainer: GRPOTrainer, prompt_ids: list[list[int]], G: int, new_tokens: int) -> list[Row]:
    """This rank's rollouts of its prompts, as training rows (one episode per completion)."""
    reqs = [GenerationRequest(p, new_tokens, temperature=1.0, n=G, ignore_eos=True) for p in prompt_ids]
    outs = trainer.engine.generate(reqs)
    return [Row(p + c.token_ids, len(p), [1] * len(c.token_ids), c.logprobs, G * i + j)
            for i, (p, cs) in enumerate(zip(prompt_ids, outs)) for j, c in enumerate(cs)]


def timed_steps(trainer: GRPOTrainer, vocab: int, P: int, args: argparse.Namespace) -> list[dict]:
    """`args.steps` fixed-length GRPO steps of P prompts over every rank; per step, each part's seconds."""
    world = distributed.world()
    g = np.random.default_rng(0)  # the global batch is the same for any number of processes
    results = []
    for step in range(args.steps):
        prompts = g.integers(300, vocab, size=(P, args.prompt_len)).tolist()
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
        t2 = time.perf_counter()
        trainer.sync_weights()
        sync()
        distributed.barrier()
        t3 = time.perf_counter()
        generated, trained = P * args.generations * args.new_tokens, P * args.generations * (args.prompt_len + args.new_tokens)
        res = {"step": step, "rollout_s": t1 - t0, "train_s": t2 - t1, "sync_s": t3 - t2, "step_s": t3 - t0,
               "generated_tokens_per_s": generated / (t3 - t0), "rollout_tokens_per_s": generated / (t1 - t0),
               "train_tokens_per_s": trained / (t2 - t1), "decode_ms_per_token": 1e3 * (t1 - t0) / args.new_tokens}
        results.append(res)
        if world.is_main:
            print(json.dumps(res), flush=True)
    return results


def check_baseline(baseline: list[dict], shapes: list[str], args: argparse.Namespace) -> dict[str, dict]:
    """The one-process summary of each shape, refusing (before any GPU time is spent) one run with other settings."""
    one = {r["summary"]["shape"]: r["summary"] for r in baseline if r["summary"]["world_size"] == 1}
    for name in shapes:
        b = one.get(name)
        if b is None:
            raise SystemExit(f"the baseline has no one-process run of {name}; it has {sorted(one)}")
        if any(b[k] != getattr(args, k) for k in SAME_SETTINGS) or b["prompts_per_gpu"] != args.prompts:
            raise SystemExit(f"the baseline of {name} was run with {({k: b[k] for k in SAME_SETTINGS})} and {b['prompts_per_gpu']} "
                             f"prompts; this run has {({k: getattr(args, k) for k in SAME_SETTINGS})} and --prompts {args.prompts}")
    return one


def speedups(runs: list[dict], one: dict[str, dict]) -> list[dict]:
    """Each N-process run against the one-process run of its shape."""
    out = []
    for run in runs:
        s, b = run["summary"], one[run["summary"]["shape"]]
        n = s["world_size"] if s["mode"] == "weak" else 1  # weak: N times the work in the time measured
        out.append({"shape": s["shape"], "mode": s["mode"], "world_size": s["world_size"], "prompts_per_gpu": s["prompts_per_gpu"],
                    **{f"speedup_{p}": n * b[f"median_{p}"] / s[f"median_{p}"] for p in PARTS},
                    "median_step_s": s["median_step_s"], "baseline_step_s": b["median_step_s"],
                    "decode_ms_per_token": s["median_decode_ms_per_token"], "baseline_decode_ms_per_token": b["median_decode_ms_per_token"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--shapes", default="qwen2.5-0.5b,qwen2.5-1.5b", help=f"comma-separated, of {sorted(SHAPES)}")
    ap.add_argument("--modes", default="strong,weak", help="under torchrun: strong, weak or both (one process runs one)")
    ap.add_argument("--steps", type=int, default=3, help="steps per run; the first is not timed")
    ap.add_argument("--prompts", type=int, default=32, help="prompts per step: over all processes (strong), per process (weak)")
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--baseline", help="the one-process run's JSON: print and record the speed-ups against it")
    ap.add_argument("--tiny", action="store_true", help="a tiny model and batch, to check the script on a CPU")
    ap.add_argument("--out", help="write every run's steps and medians here (JSON)")
    args = ap.parse_args()
    shapes = args.shapes.split(",")
    modes = args.modes.split(",")
    unknown = [s for s in shapes if s not in SHAPES] + [m for m in modes if m not in ("strong", "weak")]
    if unknown:
        ap.error(f"unknown {unknown}: shapes are {sorted(SHAPES)}, modes strong and weak")
    if args.tiny:
        shapes = ["tiny"]
        args.prompts, args.generations, args.prompt_len, args.new_tokens, args.micro_batch, args.steps = 4, 2, 16, 8, 4, 2
        torch.set_num_threads(1)
    baseline = check_baseline(json.loads(Path(args.baseline).read_text())["runs"], shapes, args) if args.baseline else None
    world = distributed.world()
    if world.size == 1:
        modes = ["strong"]  # one process: strong and weak are the same run
    device = distributed.setup(None) or ("cuda" if torch.cuda.is_available() else "cpu")
    runs = []
    for name in shapes:
        shape = TINY if name == "tiny" else SHAPES[name]
        policy = build(shape, device, torch.bfloat16 if device.startswith("cuda") else torch.float32)
        cfg = GRPOConfig(prompts_per_step=max(args.prompts, world.size), num_generations=args.generations,
                         micro_batch_size=args.micro_batch, loss_type="dapo", learning_rate=1e-6, eval_every=0, save_every=0,
                         output_dir=tempfile.mkdtemp(prefix="thinkgym-scaling-"))
        trainer = GRPOTrainer(cfg, policy=policy)
        for mode in modes:
            P = args.prompts * (world.size if mode == "weak" else 1)
            steps = timed_steps(trainer, shape["vocab_size"], P, args)
            timed = steps[1:] or steps
            summary = {"shape": name, "mode": mode, "world_size": world.size, "prompts_per_step": P, "prompts_per_gpu": P // world.size,
                       **{k: getattr(args, k) for k in SAME_SETTINGS},
                       "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu", "torch": torch.__version__,
                       **{f"median_{k}": statistics.median(r[k] for r in timed) for k in steps[0] if k != "step"}}
            runs.append({"summary": summary, "steps": steps})
            if world.is_main:
                print(json.dumps(summary), flush=True)
        trainer.engine.close()
        del trainer, policy
        free()
    result = {"runs": runs}
    if baseline is not None:
        result["speedups"] = speedups(runs, baseline)
    if world.is_main:
        print(f"\n{'shape':<14} {'mode':<7} GPUs  prompts/GPU   step s  learner s  rollout s  sync s  decode ms/token")
        for run in runs:
            s = run["summary"]
            print(f"{s['shape']:<14} {s['mode']:<7} {s['world_size']:<5} {s['prompts_per_gpu']:<12} {s['median_step_s']:7.2f}  "
                  f"{s['median_train_s']:9.2f}  {s['median_rollout_s']:9.2f}  {s['median_sync_s']:6.3f}  {s['median_decode_ms_per_token']:8.2f}")
    if world.is_main and baseline is not None:
        print(f"\nspeed-up over one process ({args.baseline})")
        print(f"{'shape':<14} {'mode':<7} GPUs  prompts/GPU  step s (1 GPU)   step    learner  rollout  decode ms/token (1 GPU)")
        for r in result["speedups"]:
            print(f"{r['shape']:<14} {r['mode']:<7} {r['world_size']:<5} {r['prompts_per_gpu']:<12} {r['median_step_s']:6.2f} "
                  f"({r['baseline_step_s']:6.2f})  {r['speedup_step_s']:5.2f}x  {r['speedup_train_s']:5.2f}x   {r['speedup_rollout_s']:5.2f}x   "
                  f"{r['decode_ms_per_token']:6.2f} ({r['baseline_decode_ms_per_token']:6.2f})")
    if world.is_main and args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    distributed.barrier()  # no rank tears gloo down while another still uses it (that aborted rank 0 once in the tests)
    distributed.shutdown()


if __name__ == "__main__":
    main()
