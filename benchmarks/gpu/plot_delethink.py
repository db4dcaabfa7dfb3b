"""Plot Delethink's cost per trace against LongCoT's from bench.py's `delethink` results.

    python benchmarks/gpu/plot_delethink.py benchmarks/gpu/results/delethink_450055c.jsonl benchmarks/delethink_cost.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src: str, dst: str) -> None:
    rows = [json.loads(line) for line in Path(src).read_text().splitlines() if line.strip()]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for method, style in (("longcot", "o-"), ("delethink", "s-")):
        rs = sorted((r for r in rows if r["method"] == method), key=lambda r: r["thinking"])
        k = [r["thinking"] / 1024 for r in rs]
        axes[0].plot(k, [r["gpu_s_per_trace"] for r in rs], style, label=method)
        measured = [(x, r["measured_gpu_s_per_trace"]) for x, r in zip(k, rs) if "measured_gpu_s_per_trace" in r]
        if measured:
            axes[0].plot(*zip(*measured), "kx", markersize=9, label=f"{method}: full trace measured")
        axes[1].plot(k, [r["kv_GB_per_trace"] for r in rs], style, label=method)
    r0 = rows[0]
    axes[0].set(xlabel="thinking tokens (K)", ylabel="GPU seconds per trace",
                title=f"{r0['model']}, batch {r0['batch']}, C=8K, m=4K")
    axes[1].set(xlabel="thinking tokens (K)", ylabel="KV cache per trace (GB)", title="KV memory per trace")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(dst, dpi=120)
    print(f"wrote {dst}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
