"""REDI end to end on the CPU: a teacher's right *and* wrong traces train a student.

1. Teacher: the tiny policy after SFT on the task's demonstrations.
2. `sample_traces`: the teacher answers training prompts several times at temperature 1 -> jsonl.
3. Student (a fresh tiny policy), stage 1: SFT on the teacher's correct traces only.
4. From the same stage-1 student, continuations of the same number of steps and batch size:
   more SFT on the positives (the baseline), and REDI on (correct, incorrect) pairs for each --alpha
   (α = 0 is REDI without its negative term: length-normalised SFT on the paired positives).
Greedy accuracy on held-out seeds (0..eval-1) is printed for each.

    .venv/bin/python examples/redi_distill.py --out /tmp/redi_run --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

from thinkgym.agents.evaluate import evaluate
from thinkgym.agents.grpo import SFT_SEED_BASE, TRAIN_SEED_BASE
from thinkgym.agents.hf_engine import HFEngine
from thinkgym.agents.policy import Policy
from thinkgym.agents.redi import build_redi_data, load_traces, train_redi
from thinkgym.agents.sample import sample_traces
from thinkgym.agents.sft import demonstration_rows, train_sft

ENV = "LongCoT-v0"
ENV_KWARGS = {"task_kwargs": {"n_terms": 4}, "max_thinking_tokens": 200}


def accuracy(policy: Policy, seeds: int) -> float:
    return evaluate(HFEngine(policy, seed=0), ENV, range(seeds), n=1, env_kwargs=ENV_KWARGS, temperature=0.0)["accuracy"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/redi_distill")
    ap.add_argument("--teacher-steps", type=int, default=300)
    ap.add_argument("--prompts", type=int, default=512, help="training prompts the teacher answers")
    ap.add_argument("--samples", type=int, default=4, help="teacher samples per prompt")
    ap.add_argument("--student-steps", type=int, default=600, help="stage 1 (SFT on positives)")
    ap.add_argument("--stage2-steps", type=int, default=200, help="REDI steps, and the extra SFT steps of the baseline")
    ap.add_argument("--stage2-lr", type=float, default=3e-5, help="for REDI and the extra SFT alike")
    ap.add_argument("--alpha", type=float, nargs="+", default=[0.8, 0.0], help="one REDI run per value, each from stage 1")
    ap.add_argument("--eval", type=int, default=500, help="held-out seeds 0..eval-1")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out, t0 = Path(args.out), time.time()
    res: dict[str, float] = {}

    teacher = Policy.tiny(seed=0)
    train_sft(teacher, demonstration_rows(ENV, range(SFT_SEED_BASE, SFT_SEED_BASE + 300), teacher.tokenizer, ENV_KWARGS),
              steps=args.teacher_steps, lr=3e-3, log_every=100)
    res["teacher"] = accuracy(teacher, args.eval)
    print(f"[{time.time() - t0:.0f}s] teacher greedy accuracy {res['teacher']:.3f}", flush=True)
    traces = out / "teacher_traces.jsonl"
    sample_traces(HFEngine(teacher, seed=0), ENV, range(TRAIN_SEED_BASE, TRAIN_SEED_BASE + args.prompts), traces,
                  n=args.samples, env_kwargs=ENV_KWARGS, temperature=1.0, seeds_per_batch=64)
    data = build_redi_data(load_traces(traces, teacher.tokenizer), pairs_per_prompt=None)
    print(f"[{time.time() - t0:.0f}s] data:", json.dumps(data.counts), flush=True)

    student = Policy.tiny(seed=1)
    positives = [r for t in data.positives for r in t.rows]
    writer = SummaryWriter(str(out / "tb_sft_stage1"))
    train_sft(student, positives, steps=args.student_steps, lr=3e-3, log_every=100, writer=writer)
    res["student_stage1_sft"] = accuracy(student, args.eval)
    print(f"[{time.time() - t0:.0f}s] stage-1 student greedy accuracy {res['student_stage1_sft']:.3f}", flush=True)

    baseline = copy.deepcopy(student)
    train_sft(baseline, positives, steps=args.stage2_steps, lr=args.stage2_lr, log_every=0, seed=1)
    res["student_sft_more"] = accuracy(baseline, args.eval)
    print(f"[{time.time() - t0:.0f}s] SFT-only student greedy accuracy {res['student_sft_more']:.3f}", flush=True)

    for alpha in args.alpha:
        redi = copy.deepcopy(student)
        train_redi(redi, data.pairs, steps=args.stage2_steps, batch_size=16, lr=args.stage2_lr, alpha=alpha, seed=1,
                   writer=SummaryWriter(str(out / f"tb_redi_alpha{alpha}")), output_dir=out / f"redi_alpha{alpha}", log_every=25)
        res[f"student_sft_then_redi_alpha{alpha}"] = accuracy(redi, args.eval)
        print(f"[{time.time() - t0:.0f}s] REDI alpha={alpha} student greedy accuracy {res[f'student_sft_then_redi_alpha{alpha}']:.3f}", flush=True)
    print(json.dumps({"held_out_greedy_accuracy": res, "data": data.counts, "minutes": round((time.time() - t0) / 60, 1)}, indent=1))


if __name__ == "__main__":
    main()
