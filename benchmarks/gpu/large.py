"""GRPO steps of a 7B-class model at fixed lengths: LoRA on one GPU, and FSDP2 full fine-tuning on two.

    python benchmarks/gpu/large.py --mode lora --out lora.json
    NCCL_NVLS_ENABLE=0 torchrun --standalone --nproc-per-node 2 benchmarks/gpu/large.py --mode fsdp --out fsdp.json
    python benchmarks/gpu/large.py --mode lora --tiny                                  # the script itself, on a CPU
    torchrun --standalone --nproc-per-node 2 benchmarks/gpu/large.py --mode fsdp --tiny

The model has the Qwen2.5-7B shape (bench.py's SHAPES) with random weights, in bf16; nothing is downloaded.
DDP cannot train it on an H200: its fp32 master weights and Adam state alone take 16 bytes per parameter,
122 GB. A step is `thinkgym train`'s at fixed lengths (EOS ignored): each rank rolls out its share of
`--prompts` × `--generations` with the hf engine, `GRPOTrainer.optimize` updates (dapo), and
`GRPOTrainer.sync_weights` brings the engine up to date: under FSDP each rank gathers the shards into its
whole bf16 copy; with LoRA and `--lora-rollout merge` the engine re-merges its copy.

`--mode lora` times each `--lora-rollout` with one trainer: `apply` decodes the peft model itself (the
learner's own log-probabilities; transformers' layers, as the fused kernels do not take adapters), `merge`
decodes a merged copy with the fused kernels (the learner then recomputes the old log-probabilities).

Reported per setting (medians over the steps after the first, which captures graphs and compiles): the
step's seconds and its rollout, learner and weight-sync parts; each GPU's peak memory during the steps
and during set-up; the learner's MFU. MFU counts the useful FLOPs of each trained token, 6N for full
fine-tuning and 4N for LoRA (the frozen weights get no weight gradient; the adapter's own FLOPs, under 1%,
are left out), N being the parameters a token multiplies through, plus causal attention's; gradient
checkpointing's recomputation and `merge`'s extra forward count as overhead. It divides by the GPUs'
measured bf16 matmul rate (bench.py's `ceilings`).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
from pathlib import Path

import torch

from bench import SHAPES, TINY, attention_flops_per_token, build, ceilings, matmul_params  # beside this script
from scaling import timed_steps
from thinkgym.agents import distributed
from thinkgym.agents.learner.config import GRPOConfig
from thinkgym.agents.learner.trainer import GRPOTrainer
from thinkgym.agents.rollout.hf.engine import HFEngine


def peak_gb() -> float | None:
    return torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else None


def gb_list(values: list[float | None]) -> str:
    return ", ".join("-" if x is None else f"{x:.1f}" for x in values)


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--mode", required=True, choices=["lora", "fsdp"], help="lora (one GPU) or fsdp (under torchrun, 2+ GPUs)")
    ap.add_argument("--shape", default="qwen2.5-7b", choices=sorted(SHAPES))
    ap.add_argument("--lora-rollout", default="apply,merge", help="lora: the hf engine's ways to sample, each timed (apply, merge)")
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lora-targets", default="all-linear", help="lora: the modules to adapt (peft's target_modules)")
    ap.add_argument("--steps", type=int, default=3, help="steps per setting; the first is not timed")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step, over all processes")
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    ap.add_argument("--tiny", action="store_true", help="a tiny model and batch, to check the script on a CPU")
    ap.add_argument("--out", help="write the settings' steps and summaries here (JSON)")
    args = ap.parse_args()
    rollouts = args.lora_rollout.split(",") if args.mode == "lora" else ["fsdp"]
    if not set(rollouts) <= {"apply", "merge", "fsdp"}:
        ap.error(f"--lora-rollout takes apply, merge or both; got {args.lora_rollout!r}")
    world = distributed.world()
    if args.mode == "fsdp" and world.size < 2:
        ap.error("--mode fsdp shards over the processes of torchrun: run it with --nproc-per-node 2 (or more)")
    if args.tiny:
        args.prompts, args.generations, args.prompt_len, args.new_tokens, args.micro_batch, args.steps = 2, 2, 16, 8, 2, 2
        torch.set_num_threads(1)
    device = distributed.setup(None) or ("cuda" if torch.cuda.is_available() else "cpu")
    measure(args, device, rollouts)
    # the trainer, its FSDP modules and their process-group references are freed before gloo is torn down.
    # With them alive, both ranks twice aborted at exit, after writing their results ("terminate called
    # without an active exception", about 2 runs in 10 on a loaded 2-core machine); the cause is not pinned
    gc.collect()
    distributed.barrier()
    distributed.shutdown()


def measure(args: argparse.Namespace, device: str, rollouts: list[str]) -> None:
    """Each setting's timed steps on one trainer; the summary printed and written by rank 0."""
    world = distributed.world()
    ceil = ceilings(device.split(":")[0], args.tiny)
    shape = TINY if args.tiny else SHAPES[args.shape]
    policy = build(shape, device, torch.bfloat16 if device.startswith("cuda") else torch.float32)
    n_params, total_params = matmul_params(policy.model), sum(p.numel() for p in policy.model.parameters())
    cfg = GRPOConfig(prompts_per_step=max(args.prompts, world.size), num_generations=args.generations, micro_batch_size=args.micro_batch,
                     loss_type="dapo", learning_rate=1e-6, eval_every=0, save_every=0, gradient_checkpointing=args.gradient_checkpointing,
                     output_dir=tempfile.mkdtemp(prefix="thinkgym-large-"), parallelism="fsdp" if args.mode == "fsdp" else "ddp",
                     use_peft=args.mode == "lora", lora_r=args.lora_r, lora_alpha=2 * args.lora_r, lora_target_modules=[args.lora_targets])
    trainer = GRPOTrainer(cfg, policy=policy)
    setup_peak = distributed.gather(peak_gb())
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)  # a DTensor's numel is the whole tensor's
    L = args.prompt_len + args.new_tokens
    tokens = args.prompts * args.generations * L
    flops = tokens * ((4 if args.mode == "lora" else 6) * n_params + attention_flops_per_token(policy.model.config, L))
    results = []
    for rollout in rollouts:
        if rollout == "merge":  # what lora_rollout="merge" builds, on the same trainer
            trainer.engine.close()
            trainer.engine = trainer.collector.engine = HFEngine(policy, seed=distributed.rank_seed(cfg.seed), lora_merge=True)
        reset_peak()
        steps = [{"step": s["step"], "rollout_s": s["rollout_s"], "learner_s": s["train_s"], "sync_s": s["sync_s"], "step_s": s["step_s"]}
                 for s in timed_steps(trainer, shape["vocab_size"], args.prompts, args)]  # scaling.py's loop; its train_s is the learner's part
        timed = steps[1:] or steps
        med = {f"median_{k}": statistics.median(s[k] for s in timed) for k in ("step_s", "rollout_s", "learner_s", "sync_s")}
        results.append({"setting": f"lora {rollout}" if args.mode == "lora" else "fsdp full fine-tune", "gpus": world.size, **med,
                        "peak_mem_GB_per_gpu": distributed.gather(peak_gb()), "setup_peak_mem_GB_per_gpu": setup_peak,
                        "learner_mfu": flops / (med["median_learner_s"] * world.size * ceil["matmul_flops"]),
                        "learner_tokens_per_s": tokens / med["median_learner_s"], "steps": steps})
    summary = {"shape": "tiny" if args.tiny else args.shape, "params": total_params,
               "trainable_params": trainable, "matmul_params": n_params, "prompts": args.prompts, "generations": args.generations,
               "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "micro_batch": args.micro_batch,
               "gradient_checkpointing": args.gradient_checkpointing, "lora_r": args.lora_r if args.mode == "lora" else None,
               "lora_targets": args.lora_targets if args.mode == "lora" else None, "matmul_flops": ceil["matmul_flops"],
               "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu", "torch": torch.__version__}
    if world.is_main:
        print(json.dumps(summary))
        print(f"\n{'setting':<20} GPUs   step s  rollout s  learner s  sync s  learner MFU  peak GB per GPU (set-up)")
        for r in results:
            print(f"{r['setting']:<20} {r['gpus']:<5} {r['median_step_s']:7.2f}  {r['median_rollout_s']:9.2f}  {r['median_learner_s']:9.2f}  "
                  f"{r['median_sync_s']:6.3f}  {100 * r['learner_mfu']:10.1f}%  {gb_list(r['peak_mem_GB_per_gpu'])} ({gb_list(r['setup_peak_mem_GB_per_gpu'])})")
        if args.out:
            Path(args.out).write_text(json.dumps({"summary": summary, "settings": results}, indent=1))
    trainer.engine.close()


if __name__ == "__main__":
    main()
