"""Load test of `thinkgym serve` on 127.0.0.1: many concurrent OpenEnv sessions, bounded in time.

    PYTHONPATH=... python benchmarks/serve_load.py [--seconds 60] [--delethink 64] [--code 16]

For each env (DelethinkDemo-v0 with `--delethink` sessions, CodeInterpreter-v0 with `--code`), one
`thinkgym serve` process; the sessions run at once on openenv-core's async client (`ThinkgymClient`), each
playing the task's demonstration of its own seeds as TokenActions, reconnecting every few episodes (so
sessions are opened and freed all run long). Every reply is checked against the same episode played in
process beforehand: a reply that differs is a crossed session, a request that fails a lost one. The
server's RSS is sampled every second. Prints one markdown table row per env, and the run as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import thinkgym  # noqa: F401
from thinkgym.agents.learner.sft import demonstration_episode
from thinkgym.envs import TokenAction
from thinkgym.envs.registration import make_env
from thinkgym.envs.remote import ThinkgymClient
from thinkgym.envs.server import ThinkgymAction

ROOT = Path(__file__).resolve().parents[1]
MEASURED = {"code_time_s"}  # wall-clock times inside the env: different on every run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env_id: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "thinkgym.agents.cli", "serve", "--env", env_id, "--port", str(port)],
                            cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 180
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"http://127.0.0.1:{port}"
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"thinkgym serve --env {env_id} did not start")
        time.sleep(0.2)


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0) / 1024
    except OSError:  # it exited meanwhile
        return 0.0


def tree_rss_mb(pid: int) -> float:
    """RSS of `pid` and every process under it (CodeInterpreter's sandbox workers run as its children)."""
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    tree, frontier = {pid}, [pid]
    while frontier:
        kids = [c for c, p in parent.items() if p in frontier and c not in tree]
        tree.update(kids)
        frontier = kids
    return sum(rss_mb(p) for p in tree)


def expected_episode(env_id: str, seed: int) -> tuple[list[ThinkgymAction], list[tuple]]:
    """The demonstration's actions for `seed` and, played in process, what each reply must carry: the prompt
    ids after the reset, then (prompt ids, reward, done) after each step."""
    env = make_env(env_id)
    tok = env.unwrapped.tokenizer
    steps = demonstration_episode(env, seed).steps
    actions = [TokenAction.from_ids(tok, s.action_ids, s.finish_reason == "eos") for s in steps]
    replies = [env.reset(seed=seed)[1]["prompt_token_ids"]]
    for a in actions:
        _, reward, term, trunc, info = env.step(a)
        replies.append((info["prompt_token_ids"], float(reward), bool(term or trunc)))
    env.close()
    return [ThinkgymAction(text=str(a), token_ids=list(a.token_ids), eos=a.eos) for a in actions], replies


async def session(url: str, seeds: list[int], expected: dict, deadline: float, per_connection: int, stats: dict) -> None:
    """One client: episodes of its own seeds until the deadline, a new connection every `per_connection` episodes.
    An episode whose replies differ from the in-process ones counts as crossed; a failed request, as lost."""
    k = 0
    while time.monotonic() < deadline:
        client = ThinkgymClient(url, message_timeout_s=120)
        try:
            for _ in range(per_connection):
                if time.monotonic() >= deadline:
                    break
                seed = seeds[k % len(seeds)]
                k += 1
                actions, want = expected[seed]
                t0 = time.perf_counter()
                got = [(await client.reset(seed=seed)).observation.info["prompt_token_ids"]]
                stats["latency"].append(time.perf_counter() - t0)
                for action in actions:
                    t0 = time.perf_counter()
                    r = await client.step(action)
                    stats["latency"].append(time.perf_counter() - t0)
                    stats["steps"] += 1
                    got.append((r.observation.info["prompt_token_ids"], r.reward, r.done))
                stats["episodes"] += 1
                stats["crossed"] += got != want
        except Exception as exc:  # a lost session: counted, and the client goes on with a new one
            stats["lost"] += 1
            stats["errors"].append(f"{type(exc).__name__}: {exc}")
        finally:
            try:
                await client.close()
            except Exception:
                pass


async def load(url: str, n: int, expected: dict, seconds: float, per_connection: int, pid: int) -> dict:
    stats = {"latency": [], "steps": 0, "episodes": 0, "crossed": 0, "lost": 0, "errors": [], "rss": [], "tree_rss": []}
    seeds = sorted(expected)
    deadline = time.monotonic() + seconds

    async def sample_rss():
        while time.monotonic() < deadline:
            stats["rss"].append(rss_mb(pid))
            stats["tree_rss"].append(tree_rss_mb(pid))
            await asyncio.sleep(1.0)

    t0 = time.perf_counter()
    await asyncio.gather(sample_rss(), *(session(url, seeds[i::n] or seeds, expected, deadline, per_connection, stats)
                                         for i in range(n)))
    stats["wall_s"] = time.perf_counter() - t0
    return stats


def run_env(env_id: str, sessions: int, seconds: float, per_connection: int) -> dict:
    expected = {seed: expected_episode(env_id, seed) for seed in range(1000, 1000 + max(sessions, 1) * 2)}
    proc, url = start_server(env_id)
    try:
        s = asyncio.run(load(url, sessions, expected, seconds, per_connection, proc.pid))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    lat = np.array(s["latency"]) * 1e3
    rss, tree = s["rss"], s["tree_rss"]
    third = max(1, len(rss) // 3)
    return {"env": env_id, "sessions": sessions, "seconds": round(s["wall_s"], 1), "episodes": s["episodes"], "steps": s["steps"],
            "requests": len(lat), "steps_per_s": round(s["steps"] / s["wall_s"], 1), "requests_per_s": round(len(lat) / s["wall_s"], 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "crossed": s["crossed"], "lost": s["lost"], "errors": s["errors"][:3],
            "rss_mb_first_third": round(float(np.mean(rss[:third])), 1), "rss_mb_last_third": round(float(np.mean(rss[-third:])), 1),
            "rss_mb_max": round(max(rss), 1), "rss_mb_every_10s": [round(x, 1) for x in rss[::10]],
            "tree_rss_mb_first_third": round(float(np.mean(tree[:third])), 1), "tree_rss_mb_last_third": round(float(np.mean(tree[-third:])), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--seconds", type=float, default=60.0, help="how long each env's load runs")
    p.add_argument("--delethink", type=int, default=64, help="concurrent DelethinkDemo-v0 sessions (0: skip)")
    p.add_argument("--code", type=int, default=16, help="concurrent CodeInterpreter-v0 sessions (0: skip)")
    p.add_argument("--per-connection", type=int, default=4, help="episodes per WebSocket connection before a new one")
    args = p.parse_args()
    runs = [run_env(env_id, n, args.seconds, args.per_connection)
            for env_id, n in (("DelethinkDemo-v0", args.delethink), ("CodeInterpreter-v0", args.code)) if n > 0]
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs")
    print("| env | sessions | s | episodes | steps/s | requests/s | p50 ms | p99 ms | crossed | lost | server RSS MB (first third / last third / max) | with sandbox workers (first / last third) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['env']} | {r['sessions']} | {r['seconds']} | {r['episodes']} | {r['steps_per_s']} | {r['requests_per_s']} | "
              f"{r['p50_ms']} | {r['p99_ms']} | {r['crossed']} | {r['lost']} | "
              f"{r['rss_mb_first_third']} / {r['rss_mb_last_third']} / {r['rss_mb_max']} | "
              f"{r['tree_rss_mb_first_third']} / {r['tree_rss_mb_last_third']} |")
    print(json.dumps(runs))


if __name__ == "__main__":
    main()
