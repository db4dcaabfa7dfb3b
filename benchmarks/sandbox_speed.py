"""Sandbox speed: a trivial call, a numpy import, throughput with 2 workers, worker start cost.

    .venv/bin/python benchmarks/sandbox_speed.py [--calls 500]

Prints one markdown table (times in ms). Target: a trivial call's median < 20 ms, sandbox on.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import threading
import time

from thinkgym.envs import sandbox as sbx
from thinkgym.envs.sandbox import Sandbox, SandboxConfig


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def row(name: str, xs: list[float]) -> str:
    return f"| {name} | {len(xs)} | {statistics.median(xs):.2f} | {pct(xs, 0.9):.2f} | {pct(xs, 0.99):.2f} |"


def check(result) -> None:
    if not result.ok:
        raise RuntimeError(f"benchmark call failed: {result}")


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--calls", type=int, default=500)
    args = ap.parse_args()
    ok, why = sbx.namespaces_available()
    if not ok:
        raise SystemExit(f"no sandbox: {why}")
    rows = []
    with Sandbox() as sb:
        check(sb.run("pass"))
        rows.append(row("trivial call `x = 1 + 1`, warm worker", timed(lambda: check(sb.run("x = 1 + 1")), args.calls)))
        rows.append(row("call printing `print(sum(range(10**5)))`", timed(lambda: check(sb.run("print(sum(range(10**5)))")), 100)))

    def fresh_numpy() -> None:
        with Sandbox(SandboxConfig(pool_size=0)) as s:
            check(s.run("pass"))
            t0 = time.perf_counter()
            check(s.run("import numpy"))
            numpy_times.append((time.perf_counter() - t0) * 1e3)

    numpy_times: list[float] = []
    timed(fresh_numpy, 10)
    rows.append(row("first `import numpy` in a worker", numpy_times))
    pre = SandboxConfig(preload=("numpy",), pool_size=1)
    with Sandbox(pre) as sb:
        check(sb.run("pass"))
        rows.append(row("`import numpy` with preload=('numpy',)", timed(lambda: check(sb.run("import numpy as np; np.ones(3).sum()")), 100)))

    cfg0 = SandboxConfig(pool_size=0)
    sbx.get_pool(cfg0)

    starts = []
    for _ in range(20):
        t0 = time.perf_counter()
        w = sbx._Worker(cfg0, True)
        w.wait_ready()
        starts.append((time.perf_counter() - t0) * 1e3)
        w.kill()
    rows.append(row("worker start (bwrap + interpreter, to ready)", starts))
    starts = []
    for _ in range(20):
        t0 = time.perf_counter()
        w = sbx._Worker(cfg0, False)
        w.wait_ready()
        starts.append((time.perf_counter() - t0) * 1e3)
        w.kill()
    rows.append(row("worker start without bwrap (reference only)", starts))
    starts = []
    for _ in range(10):
        t0 = time.perf_counter()
        w = sbx._Worker(pre, True)
        w.wait_ready()
        starts.append((time.perf_counter() - t0) * 1e3)
        w.kill()
    rows.append(row("worker start with numpy preloaded", starts))

    def episode() -> None:
        with Sandbox() as s:
            check(s.run("x = 1"))

    time.sleep(0.5)  # let the pool refill
    firsts = []
    for _ in range(20):
        firsts.append(timed(episode, 1)[0])
        time.sleep(0.15)  # an episode's generation time, during which the pool refills
    rows.append(row("episode's first call, pooled worker (+ close)", firsts))

    counts = [0, 0]
    stop = time.perf_counter() + 3.0

    def hammer(i: int) -> None:
        with Sandbox() as s:
            while time.perf_counter() < stop:
                check(s.run("x = 1 + 1"))
                counts[i] += 1

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(2)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rate = sum(counts) / (time.perf_counter() - t0)
    sbx.shutdown_pools()

    print(f"Sandbox speed ({platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores, "
          f"bwrap, Python {platform.python_version()}); times in ms\n")
    print("| measurement | n | median | p90 | p99 |\n|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nthroughput, 2 workers in 2 threads, trivial calls: {rate:,.0f} calls/s")


if __name__ == "__main__":
    main()
