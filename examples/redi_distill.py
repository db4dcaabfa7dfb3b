"""REDI end to end on the CPU: a teacher's right *and* wrong traces train a student.

1. Teacher: the tiny policy after SFT on the task's demonstrations.
2. `sample_traces`: the teacher answers training prompts several times -> jsonl.
3. Student (a fresh tiny policy), stage 1: SFT on the teacher's correct traces only.
4. From that one stage-1 student, continuations of the same number of steps:
   - more SFT on the same positives (the fair baseline: same extra steps, 32 sequences a step);
   - REDI, α = 0.8, on (correct, incorrect) pairs of the same prompt (16 pairs = 32 sequences a step);
   - REDI with each negative cut after its first wrong token (located against the task's own
     worked solution), so the correct steps it took before and after the error are not pushed down.
Greedy accuracy on held-out seeds 0..eval-1 (the settings were tuned on other seeds), with its
standard error, and each arm's paired difference from the SFT baseline on the same seeds.

    .venv/bin/python examples/redi_distill.py --out /tmp/redi_run --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from thinkgym.agents.collector import Collector
from thinkgym.agents.grpo import SFT_SEED_BASE, TRAIN_SEED_BASE
from thinkgym.agents.hf_engine import HFEngine
from thinkgym.agents.policy import Policy
from thinkgym.agents.redi import build_redi_data, cut_after_first_error, first_error, load_traces, train_redi
from thinkgym.agents.sample import sample_traces
from thinkgym.agents.sft import demonstration_rows, train_sft
from thinkgym.envs.tokenizer import encode

ENV = "LongCoT-v0"
ENV_KWARGS = {"task_kwargs": {"n_terms": 4}, "max_thinking_tokens": 200}


def correct_per_seed(policy: Policy, seeds: int) -> np.ndarray:
    """1/0 per held-out seed under greedy decoding, so arms can be compared seed by seed."""
    batch = Collector(ENV, HFEngine(policy, seed=0), ENV_KWARGS, group_size=1, temperature=0.0).collect(list(range(seeds)))
    return np.array([float(ep.info.get("correct", False)) for ep in batch.episodes])


def reference_ids(traces_path: Path, tokenizer) -> dict[str, list[int]]:
    """Each prompt's worked solution (+ EOS) as token ids: the env's own demonstration for that seed."""
    env = gym.make(ENV, disable_env_checker=True, tokenizer=tokenizer, **ENV_KWARGS).unwrapped
    refs: dict[str, list[int]] = {}
    for line in open(traces_path):
        rec = json.loads(line)
        if rec["prompt"] not in refs:
            env.reset(seed=rec["seed"])
            refs[rec["prompt"]] = encode(tokenizer, env.task.demonstration(env.problem.seed)) + [tokenizer.eos_token_id]
    return refs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/redi_distill")
    ap.add_argument("--teacher-steps", type=int, default=300)
    ap.add_argument("--prompts", type=int, default=512, help="training prompts the teacher answers")
    ap.add_argument("--samples", type=int, default=4, help="teacher samples per prompt")
    ap.add_argument("--temperature", type=float, default=1.0, help="teacher sampling temperature")
    ap.add_argument("--student-steps", type=int, default=600, help="stage 1 (SFT on positives)")
    ap.add_argument("--stage2-steps", type=int, default=200, help="REDI steps, and the extra SFT steps of the baseline")
    ap.add_argument("--stage2-lr", type=float, default=3e-6, help="for REDI and the extra SFT alike")
    ap.add_argument("--alpha", type=float, default=0.8)
    ap.add_argument("--eval", type=int, default=1000, help="held-out seeds 0..eval-1")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out, t0 = Path(args.out), time.time()

    def say(msg: str) -> None:
        print(f"[{time.time() - t0:.0f}s] {msg}", flush=True)

    teacher = Policy.tiny(seed=0)
    train_sft(teacher, demonstration_rows(ENV, range(SFT_SEED_BASE, SFT_SEED_BASE + 300), teacher.tokenizer, ENV_KWARGS),
              steps=args.teacher_steps, lr=3e-3, log_every=100)
    acc = {"teacher": correct_per_seed(teacher, args.eval)}
    say(f"teacher greedy accuracy {acc['teacher'].mean():.3f}")
    traces = out / "teacher_traces.jsonl"
    sample_traces(HFEngine(teacher, seed=0), ENV, range(TRAIN_SEED_BASE, TRAIN_SEED_BASE + args.prompts), traces,
                  n=args.samples, env_kwargs=ENV_KWARGS, temperature=args.temperature, seeds_per_batch=64)
    data = build_redi_data(load_traces(traces, teacher.tokenizer), pairs_per_prompt=None)
    refs = reference_ids(traces, teacher.tokenizer)
    cut = [(w, cut_after_first_error(l, refs[l.prompt])) for w, l in data.pairs if first_error(l, refs[l.prompt]) is not None]
    faithful = sum(first_error(t, refs[t.prompt]) is None for t in data.positives)
    say(f"data: {json.dumps(data.counts)}; {faithful}/{len(data.positives)} positives follow the worked solution "
        f"token for token; {len(cut)}/{len(data.pairs)} negatives have a located first error")

    student = Policy.tiny(seed=1)
    positives = [r for t in data.positives for r in t.rows]
    train_sft(student, positives, steps=args.student_steps, lr=3e-3, log_every=100, writer=SummaryWriter(str(out / "tb_sft_stage1")))
    acc["stage 1 (SFT)"] = correct_per_seed(student, args.eval)
    say(f"stage-1 student greedy accuracy {acc['stage 1 (SFT)'].mean():.3f}")

    baseline = copy.deepcopy(student)
    train_sft(baseline, positives, steps=args.stage2_steps, lr=args.stage2_lr, log_every=0, seed=1)
    acc["+ SFT"] = correct_per_seed(baseline, args.eval)
    say(f"+ SFT greedy accuracy {acc['+ SFT'].mean():.3f}")
    for name, pairs in ((f"+ REDI a={args.alpha}", data.pairs), (f"+ REDI a={args.alpha}, cut negatives", cut)):
        redi = copy.deepcopy(student)
        tag = name.split("+ ")[1].replace(" ", "").replace(",", "_")
        train_redi(redi, pairs, steps=args.stage2_steps, batch_size=16, lr=args.stage2_lr, alpha=args.alpha, seed=1,
                   writer=SummaryWriter(str(out / f"tb_{tag}")), log_every=50)
        acc[name] = correct_per_seed(redi, args.eval)
        say(f"{name} greedy accuracy {acc[name].mean():.3f}")

    n, base = args.eval, acc["+ SFT"]
    print(f"\nheld-out greedy accuracy, seeds 0..{n - 1} (± standard error); stage 2: {args.stage2_steps} steps at lr {args.stage2_lr}")
    print(f"| {'arm':<32} | accuracy      | minus '+ SFT' (paired) |\n|{'-' * 34}|---------------|------------------------|")
    for name, c in acc.items():
        diff = c - base
        vs = "" if name in ("teacher", "stage 1 (SFT)", "+ SFT") else f"{diff.mean():+.3f} ± {diff.std(ddof=1) / math.sqrt(n):.3f}"
        print(f"| {name:<32} | {c.mean():.3f} ± {c.std(ddof=1) / math.sqrt(n):.3f} | {vs:<22} |")
    print(f"minutes: {(time.time() - t0) / 60:.1f}")


if __name__ == "__main__":
    main()
