"""GPU benchmarks in one invocation, each section side by side on one machine:

- rollout: thinkgym's hf engine vs plain `model.generate`, against the memory-bandwidth ceiling;
- train: the GRPO learner's fwd+bwd throughput, MFU and peak memory;
- delethink: Delethink vs LongCoT traces with the same engine (time, KV memory, FLOPs);
- step: an end-to-end GRPO step, and TRL's GRPOTrainer on equal settings;
- grpo: a short learning run of a ~30M model from the SFT warm start.

Prints a table, writes JSON (and PNGs).

    python benchmarks/gpu/bench.py --out DIR [--sections rollout,train,delethink,step,grpo] [--tiny]

Models have the real shapes (Qwen2.5-0.5B, DeepSeek-R1-Distill-Qwen-1.5B; SHAPES also holds Qwen2.5-1.5B
and -7B, for scaling.py and large.py) with random weights built from the config: nothing is downloaded. Lengths are fixed (EOS ignored) so every side does equal work.
`--tiny` shrinks everything so the script itself can be checked on a CPU.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import time
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from thinkgym.agents.learner.logprobs import completion_logprobs, pad_rows
from thinkgym.agents.policy import Policy
from thinkgym.agents.rollout.engine import GenerationRequest
from thinkgym.agents.rollout.hf.engine import HFEngine
from thinkgym.agents.rollout.hf.static_cache import SlotCache
from thinkgym.agents.types import Row
from thinkgym.envs.compute import attention_cost

SHAPES = {
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, max_position_embeddings=32768, tie_word_embeddings=True, rope_theta=1e6),
    "r1-distill-1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                            num_key_value_heads=2, max_position_embeddings=131072, tie_word_embeddings=False, rope_theta=1e4),
    "qwen2.5-1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, max_position_embeddings=32768, tie_word_embeddings=True, rope_theta=1e6),
    "qwen2.5-7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, max_position_embeddings=32768, tie_word_embeddings=False, rope_theta=1e6),
}
TINY = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            max_position_embeddings=4096)


JSONL: Path | None = None  # every result is appended here as soon as it is measured


def emit(rec: dict) -> None:
    print(json.dumps(rec), flush=True)
    if JSONL is not None:
        with JSONL.open("a") as f:
            f.write(json.dumps(rec) + "\n")


def free() -> None:
    """Return the memory of the models and trainers just dropped (trainers hold reference cycles)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeat: int = 1) -> float:
    fn()  # warm-up
    sync()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync()
    return (time.perf_counter() - t) / repeat


def ceilings(device: str, tiny: bool) -> dict[str, float]:
    """Measured device-to-device bandwidth (bytes read + written) and bf16 matmul rate."""
    n = (1 << 24) if tiny else (1 << 30)
    x = torch.empty(n, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    bw = 2 * n / timed(lambda: y.copy_(x), 10)
    k = 512 if tiny else 8192
    dt = torch.bfloat16 if device == "cuda" else torch.float32
    a, b = torch.randn(k, k, device=device, dtype=dt), torch.randn(k, k, device=device, dtype=dt)
    flops = 2 * k ** 3 / timed(lambda: a @ b, 10)
    return {"bandwidth_Bps": bw, "matmul_flops": flops}


def word_tokenizer(vocab_size: int):
    """A tokenizer with one word per id ("<i>"), so that a random-weight model of a real vocabulary
    decodes to text, for thinkgym and TRL alike. Built locally; nothing is downloaded."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({f"<{i}>": i for i in range(vocab_size)}, unk_token="<0>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<1>", pad_token="<0>")


def build(shape: dict, device: str, dtype: torch.dtype) -> Policy:
    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU takes a second, on the CPU a minute
        model = Qwen2ForCausalLM(Qwen2Config(**shape, attn_implementation="sdpa"))
    return Policy(model, word_tokenizer(shape["vocab_size"]), device, dtype)


def matmul_params(model) -> int:
    """Parameters that each token multiplies through: all but the input embedding (a lookup), which
    a tied model shares with its lm_head."""
    cfg = model.config
    return sum(p.numel() for p in model.parameters()) - cfg.vocab_size * cfg.hidden_size * (0 if cfg.tie_word_embeddings else 1)


def model_bytes(cfg) -> tuple[int, int]:
    """Bytes of weights read per decode step and of K/V per token, in bf16. The lm_head is read in
    full; the embedding only in the rows looked up, which is left out."""
    params = cfg.vocab_size * cfg.hidden_size
    layer = 4 * cfg.hidden_size ** 2 * (1 + cfg.num_key_value_heads / cfg.num_attention_heads) / 2 + 3 * cfg.hidden_size * cfg.intermediate_size
    params += cfg.num_hidden_layers * layer
    return int(2 * params), 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 2


def correctness_guard(pol: Policy, eng: HFEngine, prompt_len: int, g: torch.Generator, n: int = 8, new: int = 32) -> dict:
    """Before timing: in fp32 (where near-ties of a random model do not flip), the graph path's greedy
    tokens against plain generate's and the dynamic-cache path's; in the benchmark's dtype, its
    log-probabilities of sampled tokens against a full forward over the same sequences."""
    vocab, dev = pol.model.config.vocab_size, pol.device
    ids = torch.randint(300, vocab, (n, prompt_len), generator=g)
    greedy = [GenerationRequest(r.tolist(), new, temperature=0.0, ignore_eos=True) for r in ids]
    p32 = Policy(copy.deepcopy(pol.model), pol.tokenizer, str(dev), torch.float32)
    ref = p32.model.generate(ids.to(dev), attention_mask=torch.ones_like(ids).to(dev), max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, pad_token_id=0)[:, prompt_len:].tolist()
    graphs = [c[0].token_ids for c in HFEngine(p32).generate(greedy)]
    dynamic = [c[0].token_ids for c in HFEngine(p32, static_cache=False).generate(greedy)]
    del p32
    same = lambda a, b: sum(int(x == y) for r, o in zip(a, b) for x, y in zip(r, o)) / (n * new)  # noqa: E731
    sampled = eng.generate([GenerationRequest(r.tolist(), new, temperature=1.0, ignore_eos=True) for r in ids])
    rows = [Row(r.tolist() + c[0].token_ids, prompt_len, [1] * new, c[0].logprobs, i) for i, (r, c) in enumerate(zip(ids, sampled))]
    rb = pad_rows(rows, 0, dev)
    with torch.no_grad():
        full, _ = completion_logprobs(pol.model, rb)
    gap = (full - rb.old_logprobs).abs()
    return {"greedy_match_fp32_vs_generate": same(graphs, ref), "greedy_match_fp32_vs_dynamic": same(graphs, dynamic),
            "logprob_gap_vs_forward_max": float(gap.max()), "logprob_gap_vs_forward_mean": float(gap.mean())}


def rollout(name: str, shape: dict, device: str, dtype, batches, prompt_len: int, new: int, ceil: dict) -> list[dict]:
    pol = build(shape, device, dtype)
    cfg = pol.model.config
    g = torch.Generator().manual_seed(0)
    weight_bytes, kv_per_token = model_bytes(cfg)
    eng = HFEngine(pol, max_batch_size=max(batches), seed=0)
    unfused = HFEngine(pol, max_batch_size=max(batches), seed=0, fused=False)
    guard = correctness_guard(pol, eng, prompt_len, g)
    emit({"model": name, **guard})
    out = []
    for B in batches:
        prompts = torch.randint(300, cfg.vocab_size, (B, prompt_len), generator=g)
        reqs = [GenerationRequest(p.tolist(), new, temperature=1.0, ignore_eos=True) for p in prompts]
        t_eng = timed(lambda: eng.generate(reqs))  # the untimed first call captures the graphs (and compiles)
        eng.release()
        t_hf = timed(lambda: unfused.generate(reqs))  # the same engine running transformers' layers
        unfused.release()
        ids = prompts.to(device)
        gen = dict(attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_k=0, pad_token_id=0)
        pol.model.generate(ids, max_new_tokens=8, **gen)  # a short warm-up: the full length takes minutes
        sync()
        t0 = time.perf_counter()
        pol.model.generate(ids, max_new_tokens=new, min_new_tokens=new, **gen)
        sync()
        t_gen = time.perf_counter() - t0
        mean_ctx = prompt_len + new / 2
        ceiling = B / ((weight_bytes + B * mean_ctx * kv_per_token) / ceil["bandwidth_Bps"])
        out.append({"model": name, "batch": B, "prompt": prompt_len, "new_tokens": new, "engine_tok_s": B * new / t_eng,
                    "engine_unfused_tok_s": B * new / t_hf, "fused_speedup": t_hf / t_eng,
                    "generate_tok_s": B * new / t_gen, "speedup": t_gen / t_eng, "bw_ceiling_tok_s": ceiling,
                    "engine_frac_of_ceiling": B * new / t_eng / ceiling, **guard})
        emit(out[-1])
    del pol, eng, unfused
    free()
    return out


def attention_flops_per_token(cfg, row_tokens: int) -> float:
    """fwd+bwd FLOPs of causal attention per token: QK^T and AV over (T+1)/2 keys on average, x3."""
    return 3 * 2 * 2 * cfg.num_hidden_layers * cfg.hidden_size * (row_tokens + 1) / 2


def train(name: str, shape: dict, device: str, lengths, ceil: dict, tiny: bool) -> list[dict]:
    """The GRPO learner's own optimize() on rows of fixed length, with and without gradient
    checkpointing, 32K tokens per optimizer step in micro-batches of 8K: tokens/s, MFU and peak memory. MFU counts 6N per token (N without the input
    embedding) plus causal attention's FLOPs; recomputation is not counted as useful work."""
    from thinkgym.agents.learner.config import GRPOConfig
    from thinkgym.agents.learner.trainer import GRPOTrainer

    out = []
    for checkpointing in (False, True):
        for L in lengths:
            pol = build(shape, device, torch.bfloat16 if device == "cuda" else torch.float32)
            cfg = pol.model.config
            n_params = matmul_params(pol.model)
            tokens_per_step = 32768 if not tiny else 1024  # 4 micro-batches of 8K tokens per optimizer step
            n_rows = max(1, tokens_per_step // L)
            trainer = GRPOTrainer(GRPOConfig(env="DelethinkDemo-v0", micro_batch_size=max(1, n_rows // 4), output_dir="/tmp/bench_train", eval_every=0,
                                             gradient_checkpointing=checkpointing), policy=pol)
            g = torch.Generator().manual_seed(0)
            rows = [Row(torch.randint(300, cfg.vocab_size, (L,), generator=g).tolist(), 256, [1] * (L - 256), [-1.0] * (L - 256), i)
                    for i in range(n_rows)]
            adv = torch.randn(n_rows, generator=g).numpy()
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            res = {"model": name, "row_tokens": L, "rows": n_rows, "gradient_checkpointing": checkpointing, "n_params": n_params}
            try:
                t = timed(lambda: trainer.optimize(rows, adv), 3)
            except torch.OutOfMemoryError:
                res["oom"] = True
            else:
                tok_s = n_rows * L / t
                res.update(step_s=t, train_tok_s=tok_s, mfu_6N=6 * n_params * tok_s / ceil["matmul_flops"],
                           mfu=(6 * n_params + attention_flops_per_token(cfg, L)) * tok_s / ceil["matmul_flops"],
                           peak_mem_GB=torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else float("nan"))
            emit(res)
            out.append(res)
            del trainer, pol, rows
            free()
    return out


def grpo_step(shape: dict, device: str, prompts: int, group: int, prompt_len: int, new: int, steps: int, checkpointing: bool) -> dict:
    """thinkgym's GRPO step, end to end: the hf engine's rollout of prompts x group completions of a
    fixed length, then the learner's optimize(). Advantages are random (a random-weight model has
    no task to solve); rewards and env stepping cost < 1 ms (benchmarks/env_speed.py)."""
    from thinkgym.agents.learner.config import GRPOConfig
    from thinkgym.agents.learner.trainer import GRPOTrainer

    pol = build(shape, device, torch.bfloat16 if device == "cuda" else torch.float32)
    trainer = GRPOTrainer(GRPOConfig(env="DelethinkDemo-v0", micro_batch_size=8, output_dir="/tmp/bench_step", eval_every=0,
                                     gradient_checkpointing=checkpointing, learning_rate=1e-6), policy=pol)
    g = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps):
        ids = torch.randint(300, pol.model.config.vocab_size, (prompts, prompt_len), generator=g).tolist()
        sync()
        t0 = time.perf_counter()
        comps = trainer.engine.generate([GenerationRequest(p, new, temperature=1.0, n=group, ignore_eos=True) for p in ids])
        sync()
        t1 = time.perf_counter()
        rows = [Row(p + c.token_ids, prompt_len, [1] * len(c.token_ids), c.logprobs, i * group + j)
                for i, (p, cs) in enumerate(zip(ids, comps)) for j, c in enumerate(cs)]
        trainer.optimize(rows, torch.randn(len(rows), generator=g).numpy())
        sync()
        times.append((t1 - t0, time.perf_counter() - t1))
    rollout_s, learner_s = sorted(times[1:] or times, key=sum)[len(times[1:] or times) // 2]
    res = {"system": "thinkgym", "step_s": rollout_s + learner_s, "rollout_s": rollout_s, "learner_s": learner_s,
           "steps_timed": len(times[1:] or times), "peak_mem_GB": torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else None}
    emit(res)
    del trainer, pol
    free()
    return res


def prompt_dataset(texts: list[str]):
    """A `datasets.Dataset` of prompts, with a fixed fingerprint (hashing it can fail across pyarrow versions)."""
    from datasets import Dataset
    from datasets.table import InMemoryTable

    return Dataset(InMemoryTable.from_pydict({"prompt": texts}), fingerprint="thinkgym-bench-prompts")


def trl_step(shape: dict, device: str, prompts: int, group: int, prompt_len: int, new: int, steps: int, checkpointing: bool) -> dict:
    """TRL's GRPOTrainer on the same shape, batch, group, lengths and micro-batch, without vLLM:
    8 prompts x 8 generations per optimizer step (per_device_train_batch_size 8 x 8 accumulation
    steps), min_new_tokens = max_completion_length so every completion has the same length, beta 0,
    one iteration, random rewards."""
    import random
    from dataclasses import fields

    from transformers import TrainerCallback
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer as TRLTrainer

    pol = build(shape, device, torch.bfloat16 if device == "cuda" else torch.float32)
    g = torch.Generator().manual_seed(0)
    texts = [" ".join(f"<{i}>" for i in torch.randint(300, pol.model.config.vocab_size, (prompt_len,), generator=g).tolist())
             for _ in range(prompts * steps)]
    wanted = dict(output_dir="/tmp/bench_trl", per_device_train_batch_size=8, gradient_accumulation_steps=prompts * group // 8,
                  num_generations=group, max_completion_length=new, max_prompt_length=prompt_len, learning_rate=1e-6, beta=0.0,
                  num_iterations=1, temperature=1.0, top_k=0, bf16=device == "cuda", gradient_checkpointing=checkpointing,
                  generation_kwargs={"min_new_tokens": new}, use_vllm=False, max_steps=steps, logging_steps=1, report_to=[],
                  save_strategy="no", shuffle_dataset=False, seed=0)
    known = {f.name for f in fields(TRLConfig)}
    args = TRLConfig(**{k: v for k, v in wanted.items() if k in known})
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            sync()
            stamps.append(time.perf_counter())

    trainer = TRLTrainer(model=pol.model, reward_funcs=lambda completions, **kw: [random.random() for _ in completions], args=args,
                         train_dataset=prompt_dataset(texts), processing_class=pol.tokenizer, callbacks=[Clock()])
    sync()
    t0 = time.perf_counter()
    trainer.train()
    steps_s = [b - a for a, b in zip([t0] + stamps[:-1], stamps)]
    import trl

    res = {"system": "trl", "version": trl.__version__, "step_s": sorted(steps_s[1:] or steps_s)[len(steps_s[1:] or steps_s) // 2],
           "all_steps_s": steps_s, "ignored_settings": sorted(set(wanted) - known),
           "completion_mean_length": [h.get("completions/mean_length") for h in trainer.state.log_history if "completions/mean_length" in h]}
    emit(res)
    del trainer, pol
    free()
    return res


def step_time(eng: HFEngine, batch: int, context: int, reps: int = 8) -> float:
    """Seconds of one decode step of `batch` rows at `context` cached tokens, doing what the engine's
    loop does per step: sample, read the tokens back, write them, replay the graph."""
    from thinkgym.agents.rollout.sampling import sample_tokens

    dec = eng.static_decoder(batch, context + 1)
    dec.bias[:batch].fill_(0.0)
    temp, top_p = torch.ones(batch, device=dec.ids.device), torch.ones(batch, device=dec.ids.device)
    logits = dec.step(batch, context)  # captures this bucket's graph if it is new

    def run():
        nonlocal logits
        for _ in range(reps):
            tokens, _ = sample_tokens(logits, temp, top_p, eng.generator, truncate=False)
            tokens.tolist()
            dec.ids[:batch, 0] = tokens
            logits = dec.step(batch, context)

    return timed(run) / reps


def fit_batch(slots: int, per_slot: int, kv_budget_gb: float, cap: int = 256) -> int:
    """The largest power-of-two batch whose K/V for `slots` tokens per row fits the budget."""
    rows = max(1, min(cap, int(kv_budget_gb * 1e9) // int(slots * per_slot)))
    return 1 << (rows.bit_length() - 1)


def delethink_vs_longcot(name: str, shape: dict, device: str, thinking, batch: int | None, query: int, C: int, m: int, validate,
                         kv_budget_gb: float = 60.0) -> list[dict]:
    """Cost per trace of thinking T tokens, LongCoT (one context) vs Delethink (chunks of C with an
    m-token carryover), with the same engine. `batch` is the same for both; None gives each method the
    largest batch whose K/V fits `kv_budget_gb`, as a rollout would (Delethink's K/V per trace stays
    at C + query tokens, LongCoT's grows with T). Full traces of 96K tokens would take hours of device
    time, so a trace's time is integrated from measured step times: each decode step's time at its
    context (one measurement per cache-length bucket, i.e. per CUDA graph) plus each chunk's measured
    prefill. Full traces at the `validate` lengths check the integral against generate()."""
    pol = build(shape, device, torch.bfloat16)
    cfg = pol.model.config
    per_slot = SlotCache.bytes_per_slot(pol.model)
    n_lin = matmul_params(pol.model)
    g = torch.Generator().manual_seed(0)
    buckets: dict[tuple[int, int], float] = {}
    prefills: dict[tuple[int, int], float] = {}

    def decode_cost(eng: HFEngine, rows: int, start: int, n: int) -> float:
        """Time to decode n tokens after `start` cached tokens: steps grouped by the bucket they read."""
        total, c = 0.0, start
        while c < start + n:
            b = eng.static_decoder(rows, start + n).bucket_slots(c + 1)
            steps = min(start + n, b) - c
            if (rows, b) not in buckets:
                buckets[rows, b] = step_time(eng, rows, b - 1)
            total += steps * buckets[rows, b]
            c += steps
        return total

    def prefill_cost(eng: HFEngine, rows: int, width: int) -> float:
        if (rows, width) not in prefills:
            ids = torch.randint(300, cfg.vocab_size, (rows, width), generator=g).to(device)
            dec = eng.static_decoder(rows, width + 1)
            prefills[rows, width] = timed(lambda: dec.prefill(ids, torch.ones_like(ids)))
        return prefills[rows, width]

    out = []
    for T in thinking:
        chunks = 1 + -(-(T - C) // (C - m)) if T > C else 1
        plans = {"longcot": [(query, T)], "delethink": [(query, min(T, C))] + [(query + m, C - m)] * (chunks - 1)}
        for method, segments in plans.items():
            cost = attention_cost(segments, 4 * cfg.num_hidden_layers * cfg.hidden_size)
            rows = batch or fit_batch(cost["peak_context_tokens"] + 1, per_slot, kv_budget_gb)
            eng = HFEngine(pol, max_batch_size=rows, seed=0, kv_cache_gb=kv_budget_gb + 10)
            with eng.static_attention():
                t = sum(prefill_cost(eng, rows, p) + decode_cost(eng, rows, p, gen) for p, gen in segments)
            flops = 2 * n_lin * sum(p + gen for p, gen in segments) + cost["attention_flops"]
            res = {"model": name, "thinking": T, "method": method, "chunks": len(segments), "batch": rows,
                   "gpu_s_per_trace": t / rows, "kv_GB_per_trace": (cost["peak_context_tokens"] + 1) * per_slot / 1e9,
                   "tflops_per_trace": flops / 1e12}
            if T in validate:  # the same trace for real: generate() chunk by chunk, carrying the last m tokens
                eng.release()
                queries = torch.randint(300, cfg.vocab_size, (rows, query), generator=g).tolist()
                sync()
                t0 = time.perf_counter()
                prompts = queries
                for i, (p, gen) in enumerate(segments):
                    comps = eng.generate([GenerationRequest(q, gen, temperature=1.0, ignore_eos=True) for q in prompts])
                    prompts = [q + c[0].token_ids[-m:] for q, c in zip(queries, comps)]
                sync()
                res["measured_gpu_s_per_trace"] = (time.perf_counter() - t0) / rows
                if torch.cuda.is_available():
                    res["peak_mem_GB"] = torch.cuda.max_memory_allocated() / 1e9
            emit(res)
            out.append(res)
            eng.release()
            del eng
    del pol
    free()
    return out


def grpo(out_dir: Path, device: str, tiny: bool) -> dict:
    """A short GRPO run of a ~30M model from the SFT warm start on DelethinkDemo-v0."""
    from thinkgym.agents.learner.config import GRPOConfig
    from thinkgym.agents.learner.trainer import GRPOTrainer
    from thinkgym.agents.plot import plot_run, read_scalars

    size = {} if tiny else dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2)
    pol = Policy.tiny(seed=0, device=device, **size)
    cfg = GRPOConfig(env="DelethinkDemo-v0", output_dir=str(out_dir / "grpo"), sft_steps=10 if tiny else 600, sft_learning_rate=1e-3,
                     sft_seeds=400, steps=2 if tiny else 30, prompts_per_step=16, num_generations=8, learning_rate=3e-5,
                     loss_type="delethink", micro_batch_size=128, eval_every=1 if tiny else 10, eval_prompts=128, eval_samples=4,
                     eval_temperature=1.0, save_every=0)
    t = time.perf_counter()
    GRPOTrainer(cfg, policy=pol).train()
    sc = read_scalars(cfg.output_dir)
    png = plot_run(cfg.output_dir, out_dir / "grpo_curves.png")
    steps = [v for _, v in sc.get("time/step_s", [])]
    return {"params_M": sum(p.numel() for p in pol.model.parameters()) / 1e6, "wall_s": time.perf_counter() - t,
            "median_step_s": sorted(steps)[len(steps) // 2] if steps else None, "reward": sc.get("reward"),
            "eval_accuracy": sc.get("eval/accuracy"), "png": str(png)}


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--sections", default="rollout,train,grpo")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--new-tokens", type=int, default=1024)
    ap.add_argument("--shapes", default="qwen2.5-0.5b,r1-distill-1.5b", help=f"rollout: which model shapes, of {sorted(SHAPES)}")
    ap.add_argument("--batches", default="1,64,256", help="rollout: batch sizes")
    ap.add_argument("--delethink-batch", default="8", help="delethink: traces per batch for both methods, or 'fit': "
                    "each method's largest power-of-two batch whose K/V fits 60 GB")
    ap.add_argument("--delethink-thinking", default="8192,24576,98304", help="delethink: thinking lengths")
    ap.add_argument("--delethink-validate", default="24576", help="delethink: lengths also run as full traces ('' for none)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    global JSONL
    JSONL = out / "results.jsonl"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    res: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__}
    res["ceilings"] = ceil = ceilings(device, args.tiny)
    shapes = {"tiny": TINY} if args.tiny else SHAPES
    sections = args.sections.split(",")
    if "rollout" in sections:
        names = ["tiny"] if args.tiny else args.shapes.split(",")
        batches = (1, 8) if args.tiny else tuple(int(b) for b in args.batches.split(","))
        res["rollout"] = [r for n in names for r in rollout(n, shapes[n], device, dtype, batches, 32 if args.tiny else 512,
                                                            16 if args.tiny else args.new_tokens, ceil)]
    if "train" in sections:
        name = "tiny" if args.tiny else "r1-distill-1.5b"
        res["train"] = train(name, shapes[name], device, (512,) if args.tiny else (2048, 8192), ceil, args.tiny)
    if "delethink" in sections:
        name = "tiny" if args.tiny else "r1-distill-1.5b"
        batch = None if args.delethink_batch == "fit" else int(args.delethink_batch)
        dims = dict(thinking=(64, 192, 768), query=8, C=64, m=32, validate=(192,), kv_budget_gb=0.01) if args.tiny else \
            dict(thinking=tuple(int(t) for t in args.delethink_thinking.split(",")), query=128, C=8192, m=4096,
                 validate=tuple(int(t) for t in args.delethink_validate.split(",") if t))
        res["delethink"] = delethink_vs_longcot(name, shapes[name], device, batch=batch, **dims)
    if "step" in sections:
        name = "tiny" if args.tiny else "r1-distill-1.5b"
        dims = (2, 4, 16, 8) if args.tiny else (8, 8, 512, 1024)
        res["step"] = [grpo_step(shapes[name], device, *dims, steps=3, checkpointing=True),
                       trl_step(shapes[name], device, *dims, steps=2, checkpointing=True)]
    if "grpo" in sections:
        res["grpo"] = grpo(out, device, args.tiny)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    print(f"\ndevice: {res['device']}  bandwidth {ceil['bandwidth_Bps'] / 1e12:.2f} TB/s  matmul {ceil['matmul_flops'] / 1e12:.0f} TFLOP/s")
    for r in res.get("rollout", []):
        print(f"rollout {r['model']:>16} B={r['batch']:<4} engine {r['engine_tok_s']:9.0f} tok/s  "
              f"(transformers layers {r['engine_unfused_tok_s']:9.0f}, fused x{r['fused_speedup']:.2f})  generate {r['generate_tok_s']:9.0f}  "
              f"x{r['speedup']:.1f}  ceiling {r['bw_ceiling_tok_s']:9.0f} ({100 * r['engine_frac_of_ceiling']:.1f}%)  "
              f"fp32 greedy match: generate {r['greedy_match_fp32_vs_generate']:.2f}, dynamic {r['greedy_match_fp32_vs_dynamic']:.2f}  "
              f"logprob gap vs forward: max {r['logprob_gap_vs_forward_max']:.3f} mean {r['logprob_gap_vs_forward_mean']:.4f}")
    for r in res.get("train", []):
        head = f"train   {r['model']:>16} rows of {r['row_tokens']:<5} checkpointing {'on ' if r['gradient_checkpointing'] else 'off'}"
        print(head + ("  out of memory" if r.get("oom") else f" {r['train_tok_s']:9.0f} tok/s  MFU {100 * r['mfu']:.1f}% "
                      f"(6N only {100 * r['mfu_6N']:.1f}%)  peak {r['peak_mem_GB']:.1f} GB"))
    for r in res.get("delethink", []):
        check = f"  (full trace measured: {r['measured_gpu_s_per_trace']:.2f} s)" if "measured_gpu_s_per_trace" in r else ""
        print(f"trace   {r['method']:>16} T={r['thinking']:<6} {r['chunks']:>2} chunks  batch {r['batch']:<4} {r['gpu_s_per_trace']:8.2f} GPU s/trace  "
              f"KV {r['kv_GB_per_trace']:.2f} GB/trace  {r['tflops_per_trace']:.0f} TFLOP/trace{check}")
    for r in res.get("step", []):
        extra = f"rollout {r['rollout_s']:.2f} s + learner {r['learner_s']:.2f} s" if r["system"] == "thinkgym" else f"TRL {r['version']}"
        print(f"step    {r['system']:>16} {r['step_s']:.2f} s per GRPO step ({extra})")
    if len(res.get("step", [])) == 2:
        print(f"step    thinkgym is {res['step'][1]['step_s'] / res['step'][0]['step_s']:.2f}x faster than TRL per step")
    if "grpo" in res:
        g = res["grpo"]
        print(f"grpo    {g['params_M']:.1f}M params  median step {g['median_step_s']}s  eval/accuracy {g['eval_accuracy']}  wall {g['wall_s']:.0f}s")


if __name__ == "__main__":
    main()
