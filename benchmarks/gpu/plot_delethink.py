"""Plot Delethink's cost per trace against LongCoT's from bench.py's `delethink` results: one
line per method and results file (a fixed batch, or each method's largest batch that fits).

    python benchmarks/gpu/plot_delethink.py benchmarks/gpu/results/delethink_450055c.jsonl \
        benchmarks/gpu/results/delethink_fit_33ade12.jsonl benchmarks/delethink_cost.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(*paths: str) -> None:
    *srcs, dst = paths
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for src, dash in zip(srcs, ("-", "--", ":")):
        rows = [json.loads(line) for line in Path(src).read_text().splitlines() if line.strip()]
        fixed = len({r["batch"] for r in rows}) == 1
        setting = f"batch {rows[0]['batch']}" if fixed else "largest batch in 60 GB K/V"
        for method, marker in (("longcot", "o"), ("delethink", "s")):
            rs = sorted((r for r in rows if r["method"] == method), key=lambda r: r["thinking"])
            k = [r["thinking"] / 1024 for r in rs]
            axes[0].plot(k, [r["gpu_s_per_trace"] for r in rs], marker + dash, label=f"{method}, {setting}")
            measured = [(x, r["measured_gpu_s_per_trace"]) for x, r in zip(k, rs) if "measured_gpu_s_per_trace" in r]
            if measured:
                axes[0].plot(*zip(*measured), "kx", markersize=9)
            if dash == "-":
                axes[1].plot(k, [r["kv_GB_per_trace"] for r in rs], marker + "-", label=method)
    axes[0].set(xlabel="thinking tokens (K)", ylabel="GPU seconds per trace (x: full trace measured)",
                title=f"{rows[0]['model']}, C=8K, m=4K")
    axes[0].set_yscale("log")
    axes[1].set(xlabel="thinking tokens (K)", ylabel="KV cache per trace (GB)", title="KV memory per trace")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(dst, dpi=120)
    print(f"wrote {dst}")


if __name__ == "__main__":
    main(*sys.argv[1:])
