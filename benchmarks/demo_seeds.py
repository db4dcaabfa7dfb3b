"""The main job over several seeds and settings, side by side: does RL's gain hold beyond one seed?

Runs `examples/demo.py` once per (arm, seed), several processes at a time, and prints each run's
before → after numbers and, per arm, the mean ± sd of the gains over seeds and how many seeds met
the bar (its warm start passed its gate, sampled accuracy +0.15 or more, greedy falling by at most
0.02). "Before" is each run's checkpoint-0, the exact weights its GRPO started from.

An arm is `name:ARGS`, ARGS being extra flags of `examples/demo.py` (empty: the demo's defaults).
A run whose `demo_result.json` exists is read, not rerun, so an interrupted sweep resumes (a run cut
short is started again from nothing, with the demo's `--overwrite`; its log is `sSEED.log` beside it).

    python benchmarks/demo_seeds.py --seeds 0,1,2                       # the demo as shipped, 3 seeds
    python benchmarks/demo_seeds.py --seeds 0-7 --jobs 8 --threads 1 \\
        --arms "demo:;warm-up 5:--set warmup_steps=5" --common "--set device=cuda --set dtype=float32"

What it does not show: anything beyond the demo's task and the tiny policy.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TypeVar

import numpy as np
from tqdm import tqdm

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo.py"
K, R = TypeVar("K"), TypeVar("R")
BAR, GREEDY_FALL = 0.15, 0.02  # the bar: the sampled gain at least BAR, greedy falling by at most GREEDY_FALL


def parse_seeds(text: str) -> list[int]:
    """`0,1,2` or `0-7` (or a mix, `0-3,9`)."""
    out: list[int] = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    if not out:
        raise SystemExit(f"--seeds {text!r} names no seed; use e.g. 0,1,2 or 0-7")
    return out


def seed_flags(ap: argparse.ArgumentParser) -> None:
    """The flags of a benchmark that runs one function per seed in spawned processes (`run_pool`)."""
    ap.add_argument("--seeds", default="0,1,2", help="seeds, e.g. 0,1,2 or 0-7")
    ap.add_argument("--jobs", type=int, default=1, help="seeds at a time (spawned processes)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads per seed")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where each seed's policy runs")
    ap.add_argument("--dtype", default="float32", help="the policy's dtype")


def run_pool(fn: Callable[..., R], jobs: Mapping[K, tuple], workers: int, what: str = "seed", processes: bool = True) -> dict[K, R]:
    """`fn(*jobs[key])` for every key, `workers` at a time, with a progress bar; the results by key. Workers are
    spawned processes, each starting its own torch (threads, CUDA context) rather than a fork of this one, or
    threads (`processes=False`) for jobs that start their own subprocess. A job that raises is reported by its
    key and left out, and the others go on."""
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if processes else ThreadPoolExecutor(workers)
    results: dict[K, R] = {}
    with pool:
        futures = {pool.submit(fn, *job): key for key, job in jobs.items()}
        for fut in tqdm(as_completed(futures), total=len(futures), desc=f"{what}s", dynamic_ncols=True):
            try:
                results[futures[fut]] = fut.result()
            except Exception as exc:  # report the job and go on with the others
                print(f"{what} {futures[fut]} failed: {exc!r}", file=sys.stderr)
    return results


def run_one(arm_dir: Path, seed: int, args: list[str], threads: int, run: bool = True) -> dict | None:
    out = arm_dir / f"s{seed}"
    result = out / "demo_result.json"
    if run and not result.exists():
        arm_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(DEMO), "--seed", str(seed), "--out", str(out), "--threads", str(threads), "--overwrite", *args]
        with open(arm_dir / f"s{seed}.log", "w") as log:
            subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
    return json.loads(result.read_text()) if result.exists() else None


def summarise(runs: dict[int, dict]) -> dict[str, float]:
    gain = np.array([r["after_rl"]["sampled_accuracy"] - r["before_rl"]["sampled_accuracy"] for r in runs.values()])
    greedy = np.array([r["after_rl"]["greedy_accuracy"] - r["before_rl"]["greedy_accuracy"] for r in runs.values()])
    gated = [(r.get("warm_start") or {}).get("passed") is not False for r in runs.values()]
    met = sum(g >= BAR and d >= -GREEDY_FALL and ok for g, d, ok in zip(gain, greedy, gated))
    return {"seeds": len(gain), "gate_passed": sum(gated), "sampled_gain": gain.mean(), "sampled_gain_sd": gain.std(ddof=1) if len(gain) > 1 else 0.0,
            "min_gain": gain.min(), "min_greedy": greedy.min(), "greedy_gain": greedy.mean(), "greedy_gain_sd": greedy.std(ddof=1) if len(greedy) > 1 else 0.0,
            "met": met}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--seeds", default="0,1,2", help="seeds, e.g. 0,1,2 or 0-7")
    ap.add_argument("--arms", default="demo:", help="';'-separated arms, each 'name:extra demo.py flags'")
    ap.add_argument("--common", default="", help="demo.py flags added to every arm (e.g. the device)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads per run")
    ap.add_argument("--report-only", action="store_true", help="print the table from the results on disk, running nothing")
    ap.add_argument("--out", default="runs/demo_seeds", help="one folder per arm and seed; the table goes to summary.json")
    args = ap.parse_args()
    seeds = parse_seeds(args.seeds)
    arms = []
    for spec in filter(None, (a.strip() for a in args.arms.split(";"))):
        name, sep, flags = spec.partition(":")
        if not sep:
            raise SystemExit(f"arm {spec!r} is not 'name:flags' (an empty flags part runs the demo's defaults)")
        arms.append((name, re.sub(r"\W+", "_", name).strip("_") or "arm", shlex.split(flags) + shlex.split(args.common)))
    root = Path(args.out)
    # seed-major: a sweep cut short still has every arm on its first seeds
    jobs = {(name, s): (root / slug, s, flags) for s in seeds for name, slug, flags in arms}
    results: dict[str, dict[int, dict]] = {name: {} for name, _, _ in arms}
    done = run_pool(run_one, {key: (*job, args.threads, not args.report_only) for key, job in jobs.items()}, args.jobs,
                    "demo run", processes=False)
    for (name, s), res in done.items():
        if res is None and not args.report_only:
            print(f"arm {name!r} seed {s}: no result; see {jobs[(name, s)][0] / f's{s}.log'}", file=sys.stderr)
        elif res is not None:
            results[name][s] = res

    print(f"\n{'arm':24s} {'seed':>4s} | {'warm start gate':>21s} | {'greedy':>13s} | {'sampled':>13s} | {'carried, sampled':>16s} | seconds")
    for name, runs in results.items():
        for s, r in sorted(runs.items()):
            b, a, ws = r["before_rl"], r["after_rl"], r.get("warm_start") or {}
            gate = (f"{ws['gate_accuracy']:.3f} {'pass' if ws['passed'] else 'FAIL'} @{ws['sft_steps']:>4d}"
                    if ws.get("passed") is not None else "none")
            print(f"{name:24s} {s:>4d} | {gate:>21s} | {b['greedy_accuracy']:.3f} → {a['greedy_accuracy']:.3f} | "
                  f"{b['sampled_accuracy']:.3f} → {a['sampled_accuracy']:.3f} | "
                  f"{b['carried_state_sampled']:.3f} → {a['carried_state_sampled']:.3f} | {r['seconds']}")
    print(f"\n{'arm':24s} | seeds | gate passed | sampled gain, mean ± sd | min | greedy gain, mean ± sd | min | "
          f"seeds meeting the bar (gate, +{BAR} sampled, greedy down at most {GREEDY_FALL})")
    summary = {}
    for name, runs in results.items():
        if runs:
            m = summary[name] = summarise(runs)
            print(f"{name:24s} | {m['seeds']:5d} | {m['gate_passed']:>11d} | {m['sampled_gain']:+.3f} ± {m['sampled_gain_sd']:.3f}          | "
                  f"{m['min_gain']:+.3f} | {m['greedy_gain']:+.3f} ± {m['greedy_gain_sd']:.3f}         | {m['min_greedy']:+.3f} | "
                  f"{m['met']}/{m['seeds']}")
    root.mkdir(parents=True, exist_ok=True)
    (root / "summary.json").write_text(json.dumps({k: {kk: float(vv) for kk, vv in v.items()} for k, v in summary.items()}, indent=1))


if __name__ == "__main__":
    main()
