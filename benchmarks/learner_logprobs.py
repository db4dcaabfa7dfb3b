"""Peak memory and time of the learner's log-probs (forward + backward) at a real vocabulary, on the CPU:
all logits at once (the path before issue 32, which `completion_logprobs` still takes when they fit one
chunk) against chunks of `LOGITS_PER_CHUNK` logits.

    python benchmarks/learner_logprobs.py [--vocab 151936 --rows 1 --prompt 256 --completion 2048]

The model is a small Qwen2 (hidden 256, 2 layers) with R1-Distill-Qwen's 151,936-token vocabulary, so the
logits dominate memory as they do at 1.5B. Each path runs in its own process; its peak is the growth of
the process's maximum resident set over the forward and backward (after a warm-up call on 8 tokens, which allocates the gradients).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(args: argparse.Namespace) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from thinkgym.agents.learner.logprobs import LOGITS_PER_CHUNK, completion_logprobs, pad_rows
    from thinkgym.agents.types import Row

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=args.vocab, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192))
    g = torch.Generator().manual_seed(0)
    L = args.prompt + args.completion
    rows = [Row(torch.randint(0, args.vocab, (L,), generator=g).tolist(), args.prompt, [1] * args.completion, [0.0] * args.completion, i)
            for i in range(args.rows)]
    batch = pad_rows(rows, 0, torch.device("cpu"))
    chunk = args.rows * L * args.vocab if args.path == "full" else LOGITS_PER_CHUNK

    def step(b) -> None:
        model.zero_grad(set_to_none=True)
        logp, ent = completion_logprobs(model, b, with_entropy=True, entropy_grad=False, logits_per_chunk=chunk)
        (logp * b.loss_mask).sum().backward()

    step(pad_rows([Row(rows[0].input_ids[:8], 4, [1] * 4, [0.0] * 4, 0)], 0, torch.device("cpu")))  # gradients allocated
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    step(batch)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"path": args.path, "rows": args.rows, "row_tokens": L, "completion": args.completion, "vocab": args.vocab,
            "logits_per_chunk": chunk, "peak_growth_GB": (peak - before) / 1e6, "fwd_bwd_s": seconds,
            "full_logits_fp32_GB": args.rows * L * args.vocab * 4 / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--vocab", type=int, default=151936, help="vocabulary size (R1-Distill-Qwen's by default)")
    ap.add_argument("--rows", type=int, default=1, help="rows in the micro-batch")
    ap.add_argument("--prompt", type=int, default=256, help="prompt tokens per row")
    ap.add_argument("--completion", type=int, default=2048, help="completion tokens per row")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--path", choices=["full", "chunked"], help="measure one path in this process (what the script runs per path)")
    args = ap.parse_args()
    if args.path:
        print(json.dumps(measure(args)))
        return
    for path in ("full", "chunked"):
        proc = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--path", path], capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"the {path} path failed:\n{proc.stderr[-2000:]}")
        print(proc.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
