"""Refill off vs on (`HFEngine(refill=...)`, `stream_rollouts`): decode steps, occupancy and tokens/s of
the static decoder on a Delethink-like workload of uneven chunks, with more traces than the decoder holds.

Each of `--traces` traces is 1-4 chunks, shaped as Delethink's with C = `--chunk` (160) and a carryover
of m = `--carry` (8): a chunk's prompt is the trace's prompt (8-40 tokens) plus the last chunk's final m
tokens, and it ends after a budget drawn from 16 to C (the first chunk) or C - m (the others), EOS
ignored, so the work is fixed. Trace 0's first chunk is the longest context, as a Delethink chunk that runs its full C is: the
refilling decoder is sized by the first chunks, and a chunk longer than that would wait. Off, the
chunks run in rounds of `generate` (today's path: round k holds every trace's chunk k, in batches of at
most `--batch` rows one after the other, a batch packing its live rows once half have finished). On, one
decoder run holds `--batch` rows and a finished chunk's place is prefilled at once with a pending chunk.
Both arms decode greedily; on the CPU in fp32 they must give the same tokens (checked), elsewhere the
share of chunks whose tokens agree is printed (bf16 rounds differently in batches of other shapes).

Occupancy is useful row-steps / (decode steps x batch): the fraction of the decoder's rows that made a
token the run kept; a useful row-step is one generated token past each chunk's first (which its
prefill makes). It does not depend on the machine; the seconds do.

    python benchmarks/stream_decode.py                                   # the tiny policy, CPU
    python benchmarks/stream_decode.py --shape r1-distill-1.5b --device cuda --chunk 2048 --carry 1024 \
        --traces 96 --batch 32                                            # a real shape, random weights, CUDA graphs
"""

from __future__ import annotations

import argparse
import random
import time
from contextlib import contextmanager
from typing import Iterator

import sys
from pathlib import Path

import torch

from thinkgym.agents.policy import Policy
from thinkgym.agents.rollout.engine import Completion, GenerationRequest, stream
from thinkgym.agents.rollout.hf.engine import HFEngine
from thinkgym.agents.rollout.hf.static_cache import StaticDecoder



@contextmanager
def counted_steps() -> Iterator[list[int]]:
    """The number of decode steps both kinds of static step run, while inside."""
    count = [0]
    originals = {name: getattr(StaticDecoder, name) for name in ("step", "step_rows")}

    def wrap(fn):
        def counted(self, *args):
            count[0] += 1
            return fn(self, *args)
        return counted

    for name, fn in originals.items():
        setattr(StaticDecoder, name, wrap(fn))
    try:
        yield count
    finally:
        for name, fn in originals.items():
            setattr(StaticDecoder, name, fn)


def workload(traces: int, seed: int, chunk: int, carry: int) -> tuple[dict[int, GenerationRequest], dict[int, list[int]]]:
    """First requests, and each trace's chunk budgets."""
    rng = random.Random(seed)
    first, budgets = {}, {}
    for k in range(traces):
        budgets[k] = [rng.randint(16, chunk)] + [rng.randint(16, chunk - carry) for _ in range(rng.randint(0, 3))]
        prompt = [rng.randrange(3, 250) for _ in range(rng.randint(8, 40))]
        if k == 0:
            budgets[k][0], prompt = chunk, prompt + [7] * (40 - len(prompt))
        first[k] = GenerationRequest(prompt, budgets[k][0], temperature=0.0, ignore_eos=True)
    return first, budgets


def run(engine: HFEngine, traces: int, seed: int, chunk: int, carry: int) -> tuple[dict[int, list[list[int]]], float, int]:
    """Each trace's chunks' tokens, the seconds and the decode steps of one streamed collection."""
    first, budgets = workload(traces, seed, chunk, carry)
    got: dict[int, list[list[int]]] = {k: [] for k in first}

    def follow_up(key: int, c: Completion) -> GenerationRequest | None:
        got[key].append(c.token_ids)
        n = len(got[key])
        if n == len(budgets[key]):
            return None
        return GenerationRequest(first[key].prompt_ids + c.token_ids[-carry:], budgets[key][n], temperature=0.0, ignore_eos=True)

    with counted_steps() as steps:
        t0 = time.perf_counter()
        stream(engine, first, follow_up)
        if engine.policy.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    return got, seconds, steps[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--traces", type=int, default=48, help="traces (keys of the stream)")
    ap.add_argument("--batch", type=int, default=8, help="rows the decoder holds at once (the engine's max_batch_size)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the workload's prompts and budgets")
    ap.add_argument("--chunk", type=int, default=160, help="Delethink's C: the most tokens of a first chunk")
    ap.add_argument("--carry", type=int, default=8, help="Delethink's m: tokens of a chunk carried into the next prompt")
    ap.add_argument("--shape", default="tiny", help="'tiny' (the embedded policy, fp32) or a shape of benchmarks/gpu/bench.py's "
                                                   "SHAPES (random weights, bf16 on CUDA), e.g. r1-distill-1.5b")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to decode (CUDA graphs on cuda)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()
    if args.carry < 1 or args.chunk - args.carry <= 16:
        ap.error(f"need --carry >= 1 and --chunk > --carry + 16 (a later chunk draws 16 to C - m tokens); got {args.chunk}, {args.carry}")
    torch.set_num_threads(args.threads)
    if args.shape == "tiny":
        policy = Policy.tiny(seed=0, dtype=torch.float32, device=args.device)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent / "gpu"))
        from bench import SHAPES, build  # beside this script's folder

        if args.shape not in SHAPES:
            ap.error(f"--shape must be 'tiny' or one of {sorted(SHAPES)}; got {args.shape!r}")
        policy = build(SHAPES[args.shape], args.device, torch.bfloat16 if args.device == "cuda" else torch.float32)
    work = (args.chunk, args.carry)
    _, budgets = workload(args.traces, args.seed, *work)
    tokens = sum(sum(b) for b in budgets.values())
    useful = tokens - sum(len(b) for b in budgets.values())
    run(HFEngine(policy, static_cache=True, max_batch_size=args.batch), 4, args.seed, *work)  # warm-up
    results = {}
    for name, refill in (("off", False), ("on", True)):
        got, seconds, steps = run(HFEngine(policy, static_cache=True, max_batch_size=args.batch, refill=refill),
                                  args.traces, args.seed, *work)
        results[name] = (got, seconds, steps)
    exact = args.device == "cpu" and policy.dtype == torch.float32
    if exact:
        assert results["off"][0] == results["on"][0], "refill changed the greedy tokens"
    pairs = [(a, b) for k in results["off"][0] for a, b in zip(results["off"][0][k], results["on"][0][k])]
    print(f"{args.shape} on {args.device}, {args.traces} traces, {sum(len(b) for b in budgets.values())} chunks, {tokens} tokens, "
          f"C={args.chunk} m={args.carry}, batch {args.batch}, {torch.get_num_threads()} thread(s); greedy chunks equal in both arms: "
          f"{sum(a == b for a, b in pairs)}/{len(pairs)}" + (" (checked)" if exact else ""))
    print(f"{'refill':<8}{'decode steps':>14}{'live rows/step':>16}{'occupancy':>11}{'seconds':>9}{'tokens/s':>10}")
    row = {}
    for name, (_, seconds, steps) in results.items():
        row[name] = (steps, useful / steps, useful / (steps * args.batch), seconds, tokens / seconds)
        s, live, occ, sec, tps = row[name]
        print(f"{name:<8}{s:>14}{live:>16.2f}{occ:>11.1%}{sec:>9.2f}{tps:>10.0f}")
    off, on = row["off"], row["on"]
    print(f"{'on/off':<8}{on[0] / off[0]:>14.3f}{on[1] / off[1]:>16.3f}{on[2] / off[2]:>11.3f}{on[3] / off[3]:>9.3f}"
          f"{on[4] / off[4]:>10.3f}")


if __name__ == "__main__":
    main()
