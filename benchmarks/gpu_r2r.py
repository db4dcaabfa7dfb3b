"""R2R wall-time speedup against the large model alone, for Qwen2.5-0.5B / 1.5B shapes with random weights.

    .venv/bin/python benchmarks/gpu_r2r.py                 # on a GPU: 0.5B-shaped small, 1.5B-shaped large, bf16
    .venv/bin/python benchmarks/gpu_r2r.py --tiny          # CPU smoke run of the same code (< 1 min)
    .venv/bin/python benchmarks/gpu_r2r.py --large 7b      # a pair whose cost differs more (0.5B + 7B)
    .venv/bin/python benchmarks/gpu_r2r.py --rates 0.1 0.2 --batch-sizes 1 8 --new-tokens 512

Routing is fixed by rate (each token goes to the large model with probability `rate`), since accuracy is not
measured here, only cost. The "router only" row runs a random neural router (hidden 1536-wide, 3 blocks)
that never fires: the small model plus the router's own overhead. Generation ignores EOS so every run
writes exactly `--new-tokens` per row. At batch size B a large call happens whenever any row routes, so
large calls become more frequent than `rate` as B grows (they prefill the columns written since the last
call, for all rows). With eager transformers decoding at small batch sizes a step costs roughly one kernel
launch per layer, so a 24-layer 0.5B model is not much faster than a 28-layer 1.5B one; the gap (and R2R's
gain) grows with the large model's size, hence `--large 7b`.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from thinkgym.agents.rollout.hf.routed import RoutedEngine, n_params
from thinkgym.agents.methods.router import RateRouter, Router, RouterConfig
from thinkgym.agents.policy import Policy
from thinkgym.agents.rollout.engine import GenerationRequest
from thinkgym.agents.rollout.hf.engine import HFEngine
from thinkgym.envs.tokenizer import builtin_tokenizer

# Qwen2.5-0.5B, -1.5B and -7B shapes (their config.json), random weights
SHAPES = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4),
}
TINY = {
    "small": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1),
    "large": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1),
}


def build(shape: dict, vocab: int, device: torch.device, seed: int) -> Policy:
    tok = builtin_tokenizer()
    cfg = Qwen2Config(vocab_size=vocab, max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=True,
                      rms_norm_eps=1e-6, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id, **shape)
    torch.manual_seed(seed)
    with device:
        model = Qwen2ForCausalLM(cfg)
    return Policy(model.eval(), tok, device)


def timed(engine, reqs, device: torch.device, repeats: int) -> float:
    engine.generate(reqs)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        engine.generate(reqs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--tiny", action="store_true", help="tiny shapes, short runs: a CPU check of the script")
    ap.add_argument("--large", choices=["1.5b", "7b"], default="1.5b", help="the large model's shape (the small one is 0.5B)")
    ap.add_argument("--rates", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    ap.add_argument("--prompt-len", type=int, default=None)
    ap.add_argument("--new-tokens", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None, help="timed runs after a warm-up; the best counts (3, tiny 1)")
    args = ap.parse_args()
    if args.tiny:
        torch.set_num_threads(1)  # tiny shapes on a shared CPU: one thread is faster and steadier
    args.repeats = args.repeats or (1 if args.tiny else 3)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    shapes, vocab = (TINY, 320) if args.tiny else ({"small": SHAPES["0.5b"], "large": SHAPES[args.large]}, 151936)
    batches = args.batch_sizes or ([1, 4] if args.tiny else [1, 8])
    prompt_len = args.prompt_len or (16 if args.tiny else 256)
    new_tokens = args.new_tokens or (32 if args.tiny else 512)
    small, large = build(shapes["small"], vocab, device, 0), build(shapes["large"], vocab, device, 1)
    router = Router(RouterConfig(hidden_size=small.model.config.hidden_size, width=1536 if not args.tiny else 64), threshold=2.0)
    router = router.to(device=device, dtype=small.dtype).eval()
    print(f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, {small.dtype}; small {n_params(small.model) / 1e6:.0f}M, "
          f"large {n_params(large.model) / 1e6:.0f}M, router {n_params(router) / 1e6:.1f}M params; prompt {prompt_len}, {new_tokens} new tokens")
    head = f"{'batch':>5} | {'engine':>12} | {'routed':>6} | {'large calls':>11} | {'wall s':>7} | {'tok/s':>8} | {'speedup vs large':>16}"
    print(head + "\n" + "-" * len(head))
    g = torch.Generator().manual_seed(0)
    for B in batches:
        reqs = [GenerationRequest(torch.randint(10, 250, (prompt_len,), generator=g).tolist(), new_tokens, temperature=0.0, ignore_eos=True)
                for _ in range(B)]
        t_large = timed(HFEngine(large), reqs, device, args.repeats)
        rows = [("large", None, t_large), ("small", None, timed(HFEngine(small), reqs, device, args.repeats))]
        rows.append(("router only", (r := RoutedEngine(small, large, router)), timed(r, reqs, device, args.repeats)))
        for rate in args.rates:
            rows.append((f"routed {rate:.0%}", (r := RoutedEngine(small, large, RateRouter(rate))), timed(r, reqs, device, args.repeats)))
        for name, eng, wall in rows:
            rep = eng.report() if eng is not None else None
            routed = f"{rep['routed_frac']:.1%}" if rep else ("100%" if name == "large" else "0%")
            calls = f"{rep['large_calls'] / (args.repeats + 1):.0f}" if rep else ("-")
            print(f"{B:>5} | {name:>12} | {routed:>6} | {calls:>11} | {wall:>7.3f} | {B * new_tokens / wall:>8.0f} | {t_large / wall:>15.2f}x")


if __name__ == "__main__":
    main()
