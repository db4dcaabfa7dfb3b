"""Decode attention of one layer over a static cache, three ways, side by side:
`slot_attention` (two batched matmuls, K/V read once per KV head), PyTorch SDPA with `enable_gqa`
and an additive mask, and SDPA after repeating K/V per query head (what transformers' `sdpa` does
with a mask). Prints a table of time per call and effective K/V bandwidth.

    python benchmarks/gpu/attention_decode.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from thinkgym.agents.rollout.hf.static_cache import slot_attention


def timed(fn, reps: int = 50) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps / 1e3


def main() -> None:
    hq, hkv, d = 12, 2, 128  # DeepSeek-R1-Distill-Qwen-1.5B
    print(f"{'batch':>5} {'slots':>6} | {'slot_attention':>16} {'sdpa enable_gqa':>16} {'sdpa repeat_kv':>16}   (ms per layer; K/V TB/s)")
    for batch, slots in ((256, 1024), (256, 1536), (64, 4096), (8, 32768)):
        q = torch.randn(batch, hq, 1, d, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(batch, hkv, slots, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        mask = torch.zeros(batch, 1, 1, slots, device="cuda")
        mask[:, :, :, slots - 7:] = torch.finfo(torch.float).min
        kv_bytes = 2 * k.numel() * k.element_size()
        fns = {
            "slot": lambda: slot_attention(None, q, k, v, mask, scaling=d ** -0.5),
            "gqa": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype), enable_gqa=True),
            "repeat": lambda: F.scaled_dot_product_attention(q, k.repeat_interleave(hq // hkv, 1), v.repeat_interleave(hq // hkv, 1),
                                                             attn_mask=mask.to(q.dtype)),
        }
        ref = fns["slot"]()[0].transpose(1, 2).float()
        cells = []
        for name, fn in fns.items():
            out = fn()
            out = out[0].transpose(1, 2) if name == "slot" else out
            err = (out.float() - ref).abs().max().item()
            t = timed(fn)
            cells.append(f"{t * 1e3:7.3f} {kv_bytes / t / 1e12:4.2f}{'' if err < 2e-2 else ' (!)'}")
        print(f"{batch:>5} {slots:>6} | " + " ".join(f"{c:>16}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
