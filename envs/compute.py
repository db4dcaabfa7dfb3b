"""Attention cost of a trace, from token counts alone.

A trace is a list of segments (prompt tokens, generated tokens), each run with a fresh KV cache:
one segment for LongCoT, one per chunk for Delethink. Per segment, the prefill computes
P(P+1)/2 query-key pairs; decoding token i (0-based) attends to P+i cached keys plus itself, so
decoding g tokens reads g·P + g(g-1)/2 cached key/value tokens and computes that plus g pairs.
FLOPs are pairs × `flops_per_pair` (4·layers·hidden for QKᵀ and AV; the default is
DeepSeek-R1-Distill-Qwen-1.5B: 4·28·1536).
"""

from __future__ import annotations

from typing import Iterable

R1_DISTILL_1P5B_FLOPS_PER_PAIR = 4 * 28 * 1536


def attention_cost(segments: Iterable[tuple[int, int]], flops_per_pair: int = R1_DISTILL_1P5B_FLOPS_PER_PAIR) -> dict[str, float]:
    pairs = kv_reads = peak_context = 0
    for p, g in segments:
        reads = g * p + g * (g - 1) // 2
        pairs += p * (p + 1) // 2 + reads + g
        kv_reads += reads
        peak_context = max(peak_context, p + g)
    return {
        "attention_pairs": float(pairs),
        "attention_flops": float(pairs * flops_per_pair),
        "kv_token_reads": float(kv_reads),
        "peak_context_tokens": float(peak_context),
    }


def compare_with_longcot(segments: list[tuple[int, int]], query_len: int, flops_per_pair: int = R1_DISTILL_1P5B_FLOPS_PER_PAIR) -> dict[str, dict[str, float]]:
    """This trace's cost next to the same thinking done in one unbroken context."""
    total = sum(g for _, g in segments)
    return {
        "this": attention_cost(segments, flops_per_pair),
        "longcot": attention_cost([(query_len, total)], flops_per_pair),
    }
