"""The paper's training shape end to end: `thinkgym train` on a random-weight R1-Distill-Qwen-1.5B
(bench.py's SHAPES) in `Delethink-v0` (C = 8K, m = 4K), this checkout and optionally a baseline
checkout, one after the other on the same card (issue 32).

    python benchmarks/gpu/real_shape.py --out DIR [--micro-batch-size 4] [--baseline /path/to/505741b-worktree]
    python benchmarks/gpu/real_shape.py --tiny --out DIR --baseline .   # the script itself, on a CPU

Each side runs `thinkgym train --env Delethink-v0 --loss-type delethink --num-generations 8
--prompts-per-step 4 --learning-rate 1e-6 --gradient-checkpointing true --eval-every 0 --save-every 0`
on the same saved weights, in its own process with its checkout first on the path; the script
wraps `GRPOTrainer.train_step` there (both checkouts have it) to record each step, and turns
checkpoints off (they are no part of a step; the final one would write 25 GB). Per step it prints
step, rollout and learner seconds, their tokens/s, the rollout's fraction of its bandwidth ceiling
(`rollout_ceiling_s`), the learner's MFU (6N per token plus causal
attention, against the measured bf16 matmul rate, as bench.py's `train`), peak GPU memory, and the
first iteration's |log ratio| of learner to engine where the checkout logs it. Then the ratio of the
steady steps (all but the first, which captures CUDA graphs), baseline over this checkout.

A side that runs out of memory is reported as such and the other still runs. Every step is printed
and appended to DIR/steps.jsonl as it ends, so a run cut short keeps what it measured. Both sides run
with `PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`, as the issue's baseline did.

The defaults are sized for one device call of under 10 minutes on an H100, both sides included:
2 steps each at `--max-chunks 2`. That is an estimate from the issue's baseline steps of 160 s at
I = 5, not a measurement. Rows are as long at any I (8K), so memory is that of the full shape. The
baseline runs at micro-batch 1, since 505741b runs out of memory at 2. The paper's full shape is
`--max-chunks 5 --steps 3`, about 3 minutes a step for the baseline: run each side in its own call
(`--baseline-only` for the second) and compare their DIR/results.json.

`--async-rollouts true` runs this checkout's side asynchronously in one process (issue 37): a rollout thread
samples up to `--max-staleness` steps ahead on its own CUDA stream while the learner trains. `--baseline .
--baseline-micro-batch-size 4` then runs the same checkout synchronously after it, and the printed speed-up is
the synchronous step over the asynchronous one. In a step's line, `rollout_s` is the sampler's own time for the
step's rows (for the asynchronous side: the rollout thread's, spent beside the learner's earlier steps, so
step_s need not cover it) and `learner_wait_s` is what the learner waited for those rows (the synchronous
side waits its whole rollout: there it equals `rollout_s`); `learner_s` is the learner's optimisation,
`weight_sync_s` the weight hand-over, `staleness_max` the oldest row's lag in versions.
`decode_step_ms_learning` / `decode_step_ms_alone` are the mean decode step while the learner optimised and
while it did not (`decode_split`): whether the thread's decode progresses beside the learner, and whether
alone it is as fast as the synchronous side's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parents[1]
DECODE_SPLIT = ("decode_step_ms_learning", "decode_step_ms_alone", "decode_steps_learning", "decode_steps_alone")
KEPT = ("time/step_s", "time/rollout_s", "time/train_s", "time/old_logprobs_s", "rollout_tokens_per_s", "train_tokens_per_s",
        "generated_tokens", "engine_log_ratio/abs_mean", "engine_log_ratio/abs_max", "delethink/chunks_mean",
        "delethink/thinking_tokens_mean", "time/weight_sync_s", "async/learner_wait_s", "async/staleness_max")


def worker(spec_file: str) -> None:
    """In a side's process (its checkout first on the path): `thinkgym train`, each step recorded."""
    import torch

    from thinkgym.agents import cli
    from thinkgym.agents.learner.trainer import GRPOTrainer
    from thinkgym.agents.policy import Policy
    try:
        from thinkgym.agents.rollout.hf.engine import HFEngine
    except ImportError:  # a checkout of another layout: its decode steps are not timed
        HFEngine = None

    spec = json.loads(Path(spec_file).read_text())
    cuda = torch.cuda.is_available()
    rows: list[list[list[int]]] = []
    marks: list[float] = []  # when the host read each decode step's tokens (it waits for that step alone)
    busy: list[tuple[float, float]] = []  # the learner's optimisations
    engine_record = getattr(HFEngine, "_record", None)  # the decode loops' once-a-step read (absent in other checkouts: no split)
    if engine_record is not None:
        def timed_record(self, *a, **kw):
            marks.append(time.perf_counter())
            return engine_record(self, *a, **kw)
        HFEngine._record = timed_record
    # the asynchronous learner adds its metrics (the wait for rows) around GRPOTrainer's step: record its step
    stepper = GRPOTrainer
    if spec.get("async"):
        from thinkgym.agents.learner.async_grpo import AsyncGRPOTrainer as stepper
    optimize, train_step = GRPOTrainer.optimize, stepper.train_step

    def recording_optimize(self, step_rows, adv):
        rows.append([[r.episode, r.prompt_len, len(r.input_ids)] for r in step_rows])
        t = time.perf_counter()
        try:
            return optimize(self, step_rows, adv)
        finally:
            busy.append((t, time.perf_counter()))

    def recording_step(self):
        rows.clear()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        metrics = train_step(self)
        split = decode_split(marks, busy) if engine_record is not None else {}
        marks.clear()
        busy.clear()
        rec = {"side": spec["side"], "step": self.step + 1, **{k: metrics[k] for k in KEPT if k in metrics}, **split,
               "rows": [r for step_rows in rows for r in step_rows],  # [episode, prompt tokens, row tokens], in rollout order
               "peak_allocated_GB": torch.cuda.max_memory_allocated() / 1e9 if cuda else None,
               "peak_reserved_GB": torch.cuda.max_memory_reserved() / 1e9 if cuda else None}
        with open(spec["steps_file"], "a") as f:
            f.write(json.dumps(rec) + "\n")
        wait = f", learner waited {rec['async/learner_wait_s']:.1f}" if "async/learner_wait_s" in rec else ""
        print(f"{spec['side']} step {rec['step']}: {rec['time/step_s']:.1f} s (rollout {rec['time/rollout_s']:.1f}{wait}, learner "
              f"{rec['time/train_s']:.1f}), peak {rec['peak_allocated_GB'] or float('nan'):.1f} GB", flush=True)
        return metrics

    GRPOTrainer.optimize, stepper.train_step = recording_optimize, recording_step
    GRPOTrainer.save = lambda self: None
    # transformers loads a tokenizer saved beside a Qwen2 config as Qwen2's: the word tokenizer comes from its own folder
    load = Policy.from_pretrained.__func__
    Policy.from_pretrained = classmethod(lambda cls, name, **kw: load(cls, name, **{**kw, "tokenizer": spec["tokenizer"]}))
    cli.main(spec["argv"])


def run_side(side: str, checkout: Path, micro_batch: int, args: argparse.Namespace, out: Path) -> dict:
    """One checkout's run in its own process; its steps (as the worker wrote them) and how it ended."""
    env_kwargs = {"max_chunks": args.max_chunks, **({"chunk_size": 64, "carryover": 32, "head": 8} if args.tiny else {})}
    argv = ["train", "--model", str(out / "model"), "--env", "Delethink-v0", "--env-kwargs", json.dumps(env_kwargs),
            "--loss-type", "delethink", "--num-generations", str(args.num_generations), "--prompts-per-step", str(args.prompts_per_step),
            "--micro-batch-size", str(micro_batch), "--gradient-checkpointing", args.gradient_checkpointing, "--steps", str(args.steps),
            "--eval-every", "0", "--save-every", "0", "--learning-rate", "1e-6", "--seed", "0", "--output-dir", str(out / side)]
    if side == "current" and args.stream_rollouts == "true":  # the baseline has no such flag
        argv += ["--stream-rollouts", "true"]
    asynchronous = side == "current" and args.async_rollouts == "true"
    if asynchronous:
        argv += ["--async-rollouts", "true", "--max-staleness", str(args.max_staleness)]
    steps_file = out / "steps.jsonl"
    before = steps_file.read_text().count("\n") if steps_file.exists() else 0
    spec = out / f"{side}_spec.json"
    spec.write_text(json.dumps({"side": side, "argv": argv, "steps_file": str(steps_file), "tokenizer": str(out / "tokenizer"),
                                "async": asynchronous}))
    path = Path(tempfile.mkdtemp(prefix=f"thinkgym-{side}-"))
    (path / "thinkgym").symlink_to(checkout.resolve())  # `import thinkgym` is this checkout in the side's process
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")]),
           "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    # its stdout (a line per step) goes straight through; stderr (progress bars, a traceback) is kept
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec)], env=env, stderr=subprocess.PIPE, text=True)
    steps = [json.loads(line) for line in steps_file.read_text().splitlines()[before:]] if steps_file.exists() else []
    tail = (proc.stderr or "")[-3000:]
    result = {"side": side, "checkout": str(checkout), "micro_batch_size": micro_batch, "returncode": proc.returncode,
              "oom": "OutOfMemoryError" in tail or "out of memory" in tail, "steps": steps}
    if proc.returncode:
        result["stderr_tail"] = tail
    return result


def decode_split(marks: list[float], busy: list[tuple[float, float]], max_gap_s: float = 1.0) -> dict:
    """The mean decode step (ms) while the learner optimises and while it does not, from the times the host
    read each step's tokens (`marks`, in order) and the learner's optimisations (`busy`). The time between two
    reads is a step's, counted where its middle falls; a gap over `max_gap_s` is no step (a prefill, the
    environments, a wait for weights) and is left out. Whether the thread's decode progresses beside the
    learner, and how fast it is alone against the synchronous side's, is what this shows."""
    spent = {"learning": [0.0, 0], "alone": [0.0, 0]}
    for a, b in zip(marks, marks[1:]):
        if b - a <= max_gap_s:
            mid = (a + b) / 2
            side = spent["learning" if any(s <= mid < e for s, e in busy) else "alone"]
            side[0] += b - a
            side[1] += 1
    return {f"decode_step_ms_{k}": 1e3 * t / n if n else None for k, (t, n) in spent.items()} | \
        {f"decode_steps_{k}": n for k, (_, n) in spent.items()}


def rollout_ceiling_s(rows: list[list[int]], n_params: int, cfg, bandwidth: float, streamed: bool = False) -> float:
    """The least time the step's decoding can take at the measured bandwidth: each decode step reads the
    weights once (bf16) and every live row's K/V up to its own context.

    Rows are Delethink chunks, [episode, prompt tokens, row tokens] in rollout order. In rounds (the
    collector's default) the k-th chunks of all traces decode together, so a round costs as many weight
    reads as its longest completion. Streamed (`--stream-rollouts`), a trace's next chunk starts when its
    last one ends, so the decode steps are at least the longest trace's completion tokens (every trace
    decoding at once: a lower bound, so a tighter ceiling than the rounds'). The K/V read is summed per
    row over its own context lengths. Prefill (compute-bound), sampling and the environments are not in
    it: it bounds the rollout's speed from above."""
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_bytes = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 2
    rounds: dict[int, list[tuple[int, int]]] = {}
    seen: dict[int, int] = {}
    for episode, prompt, total in rows:
        k = seen[episode] = seen.get(episode, -1) + 1
        rounds.setdefault(k, []).append((prompt, total - prompt))
    if streamed:
        per_trace: dict[int, int] = {}
        for episode, prompt, total in rows:
            per_trace[episode] = per_trace.get(episode, 0) + total - prompt
        weight_reads = max(per_trace.values())
    else:
        weight_reads = sum(max(c for _, c in r) for r in rounds.values())
    kv_reads = sum(c * p + c * (c - 1) // 2 for r in rounds.values() for p, c in r)  # contexts p .. p + c - 1
    return (weight_reads * 2 * n_params + kv_reads * kv_bytes) / bandwidth


def per_step(rec: dict, n_params: int, cfg, matmul_flops: float, bandwidth: float, streamed: bool = False) -> dict:
    """One step's line: times, throughputs, the rollout against its bandwidth ceiling, the learner's MFU and memory."""
    from bench import attention_flops_per_token  # beside this script

    flops = sum(6 * n_params * T + attention_flops_per_token(cfg, T) * T for _, _, T in rec["rows"])
    ceiling = rollout_ceiling_s(rec["rows"], n_params, cfg, bandwidth, streamed)
    return {"side": rec["side"], "step": rec["step"], "step_s": rec["time/step_s"], "rollout_s": rec["time/rollout_s"],
            "learner_wait_s": rec.get("async/learner_wait_s", rec["time/rollout_s"]), "learner_s": rec["time/train_s"],
            "weight_sync_s": rec.get("time/weight_sync_s"), "staleness_max": rec.get("async/staleness_max"),
            "old_logprobs_s": rec.get("time/old_logprobs_s", 0.0),
            "rollout_tok_s": rec["rollout_tokens_per_s"], "learner_tok_s": rec["train_tokens_per_s"],
            "rollout_ceiling_s": ceiling, "rollout_frac_of_ceiling": ceiling / rec["time/rollout_s"],
            "learner_mfu": flops / rec["time/train_s"] / matmul_flops, "peak_allocated_GB": rec["peak_allocated_GB"],
            "log_ratio_mean": rec.get("engine_log_ratio/abs_mean"), "log_ratio_max": rec.get("engine_log_ratio/abs_max"),
            "chunks_mean": rec.get("delethink/chunks_mean"), "thinking_tokens_mean": rec.get("delethink/thinking_tokens_mean"),
            **{k: rec.get(k) for k in DECODE_SPLIT}}


def steady(lines: list[dict], key: str) -> float | None:
    """The median over the steps after the first (the first alone if there is one); None where not measured
    (peak GPU memory on the CPU)."""
    values = [r[key] for r in (lines[1:] or lines) if r[key] is not None]
    return statistics.median(values) if values else None


def decode_line(s: dict) -> str:
    """The summary's mean decode step beside the learner and alone, where measured."""
    parts = [f"{s[f'decode_step_ms_{k}']:.2f} ms {label}" for k, label in (("learning", "beside the learner"), ("alone", "alone"))
             if s.get(f"decode_step_ms_{k}") is not None]
    return f"; decode step {', '.join(parts)}" if parts else ""


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:  # a side's process, started by `run_side`
        return worker(sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--out", required=True, help="folder for the saved model, each side's run and steps.jsonl / results.json")
    ap.add_argument("--micro-batch-size", type=int, default=4, help="this checkout's learner micro-batch (rows)")
    ap.add_argument("--baseline", help="a checkout to run the same way after this one (a worktree of 505741b); the ratio is printed")
    ap.add_argument("--baseline-only", action="store_true", help="run the baseline alone (its own device call at the full shape)")
    ap.add_argument("--baseline-micro-batch-size", type=int, default=1, help="the baseline's micro-batch (505741b runs out of memory at 2)")
    ap.add_argument("--steps", type=int, default=2, help="GRPO steps per side; the first is not in the steady figures")
    ap.add_argument("--max-chunks", type=int, default=2, help="Delethink's I (the paper's is 5); rows are as long at any I, steps shorter")
    ap.add_argument("--num-generations", type=int, default=8, help="traces per prompt")
    ap.add_argument("--prompts-per-step", type=int, default=4, help="prompts per step")
    ap.add_argument("--gradient-checkpointing", choices=("true", "false"), default="true",
                    help="recompute activations in the backward (both sides); false trades memory for a third less learner work")
    ap.add_argument("--stream-rollouts", choices=("true", "false"), default="false",
                    help="this checkout's rollouts refill finished rows' places and stream Delethink's chunks (GRPOConfig.stream_rollouts)")
    ap.add_argument("--async-rollouts", choices=("true", "false"), default="false",
                    help="this checkout's side trains asynchronously in one process, a rollout thread beside the learner "
                         "(GRPOConfig.async_rollouts); with `--baseline .` the baseline is its synchronous run")
    ap.add_argument("--max-staleness", type=int, default=1, help="with --async-rollouts true: steps the rollout thread may sample ahead")
    ap.add_argument("--tiny", action="store_true", help="bench.py's tiny model, 64-token chunks, on the CPU: to check the script")
    args = ap.parse_args()
    for name in ("micro_batch_size", "baseline_micro_batch_size", "steps", "max_chunks", "num_generations", "prompts_per_step"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if args.max_staleness < 0:
        ap.error(f"--max-staleness must be >= 0; got {args.max_staleness}")
    if args.baseline_only and not args.baseline:
        ap.error("--baseline-only needs --baseline PATH")
    if args.baseline and not (Path(args.baseline) / "agents" / "cli.py").exists():
        ap.error(f"--baseline {args.baseline} is not a thinkgym checkout (no agents/cli.py in it)")

    import torch

    from bench import SHAPES, TINY, build, ceilings, free, matmul_params

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    if args.tiny:
        torch.set_num_threads(1)
        args.num_generations, args.prompts_per_step = 2, 2
    policy = build(TINY if args.tiny else SHAPES["r1-distill-1.5b"], device, torch.bfloat16 if device == "cuda" else torch.float32)
    policy.save_pretrained(out / "model")
    policy.tokenizer.save_pretrained(out / "tokenizer")
    cfg, n_params = policy.model.config, matmul_params(policy.model)
    del policy
    free()
    ceil = ceilings(device, args.tiny)
    matmul_flops, bandwidth = ceil["matmul_flops"], ceil["bandwidth_Bps"]
    free()
    sides = ([] if args.baseline_only else [("current", CHECKOUT, args.micro_batch_size)]) + \
        ([("baseline", Path(args.baseline), args.baseline_micro_batch_size)] if args.baseline else [])
    results = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "matmul_flops": matmul_flops, "bandwidth_Bps": bandwidth,
               "settings": vars(args), "sides": []}
    for side, checkout, mb in sides:
        run = run_side(side, checkout, mb, args, out)
        streamed = side == "current" and args.stream_rollouts == "true"
        run["streamed"], run["async"] = streamed, side == "current" and args.async_rollouts == "true"
        run["lines"] = [per_step(r, n_params, cfg, matmul_flops, bandwidth, streamed) for r in run.pop("steps")]
        for line in run["lines"]:
            print(json.dumps(line), flush=True)
        if run["returncode"]:
            print(f"{side} (micro-batch {mb}) failed{' (out of memory)' if run['oom'] else ''} after {len(run['lines'])} steps:\n"
                  f"{run['stderr_tail'][-1500:]}", flush=True)
        run["steady"] = {k: steady(run["lines"], k) for k in ("step_s", "rollout_s", "learner_wait_s", "learner_s", "rollout_tok_s", "learner_tok_s",
                                                             "rollout_frac_of_ceiling", "learner_mfu", "peak_allocated_GB",
                                                             "decode_step_ms_learning", "decode_step_ms_alone")}
        results["sides"].append(run)
    if len(results["sides"]) == 2 and all(r["steady"]["step_s"] for r in results["sides"]):
        cur, base = (r["steady"] for r in results["sides"])
        results["speedup"] = {k: base[k] / cur[k] for k in ("step_s", "rollout_s", "learner_s")}
        if results["sides"][0]["async"] and cur["learner_wait_s"]:  # how much less the learner waits for rows
            results["speedup"]["learner_wait_s"] = base["learner_wait_s"] / cur["learner_wait_s"]
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\n{results['device']}, {args.prompts_per_step} prompts x {args.num_generations} traces, C=8K m=4K I={args.max_chunks}"
          if not args.tiny else "\ntiny, on the CPU")
    for r in results["sides"]:
        s = r["steady"]
        mode = (" streamed" if r.get("streamed") else "") + (f" async (max staleness {args.max_staleness})" if r.get("async") else "")
        print(f"{r['side']:>8}{mode} mb {r['micro_batch_size']}: " + ("no step finished" if s["step_s"] is None else
              f"step {s['step_s']:.1f} s (rollout {s['rollout_s']:.1f}, learner waited {s['learner_wait_s']:.1f}, learner {s['learner_s']:.1f}), "
              f"rollout {s['rollout_tok_s']:.0f} tok/s ({100 * s['rollout_frac_of_ceiling']:.0f}% of its ceiling), learner {s['learner_tok_s']:.0f} tok/s, MFU {100 * s['learner_mfu']:.1f}%, "
              f"peak {s['peak_allocated_GB'] or float('nan'):.1f} GB") + decode_line(s) + (" [failed]" if r["returncode"] else ""))
    if "speedup" in results:
        print("speed-up, baseline / current (steady): " + ", ".join(f"{k} {v:.2f}x" for k, v in results["speedup"].items()))


if __name__ == "__main__":
    main()
