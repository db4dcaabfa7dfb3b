"""Where a decode step's time goes: torch.profiler over a few steps of the hf engine's graph path.

    python benchmarks/gpu/profile_decode.py [--shape r1-distill-1.5b] [--batch 256] [--new 64] [--unfused]

Prints a step's wall time split into the graph replay, the sampling and the rest (the host's share
and the prefill spread over the steps), then the top CUDA kernels and CPU ops by total time, for one
generate() call after a warm-up.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from bench import SHAPES, build, timed  # noqa: E402  (run from this folder's parent or with it on sys.path)
from thinkgym.agents.rollout.engine import GenerationRequest
from thinkgym.agents.rollout.hf.engine import HFEngine
from thinkgym.agents.rollout.sampling import sample_tokens


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--shape", default="r1-distill-1.5b", choices=list(SHAPES))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--unfused", action="store_true", help="run transformers' layers instead of FusedStep")
    args = ap.parse_args()
    pol = build(SHAPES[args.shape], "cuda", torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(300, pol.model.config.vocab_size, (args.batch, args.prompt), generator=g)
    reqs = [GenerationRequest(p.tolist(), args.new, temperature=1.0, ignore_eos=True) for p in prompts]
    eng = HFEngine(pol, max_batch_size=args.batch, seed=0, fused=not args.unfused)
    for _ in range(2):  # the first call captures the graphs
        t = time.perf_counter()
        eng.generate(reqs)
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    print(f"{args.shape} B={args.batch}: {dt / args.new * 1e3:.2f} ms per step, {args.batch * args.new / dt:.0f} tok/s (prefill included)")
    dec = eng._decoder
    key = max(dec._graphs)  # the full batch at the longest cache length
    graph, logits = dec._graphs[key]
    temp = torch.ones(key[0], device=logits.device)
    replay = timed(graph.replay, 50) * 1e3
    sample = timed(lambda: sample_tokens(logits, temp, temp, eng.generator, truncate=False), 50) * 1e3
    print(f"graph {key}: replay {replay:.2f} ms, sampling {sample:.2f} ms, the rest {dt / args.new * 1e3 - replay - sample:.2f} ms per step")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        eng.generate(reqs)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
