"""REDI end to end on the CPU: a teacher's right *and* wrong traces train a student.

1. Teacher: the tiny policy after SFT on the task's demonstrations.
2. `sample_traces`: the teacher answers training prompts several times -> jsonl.
3. Student (a fresh tiny policy), stage 1: SFT on the teacher's correct traces only.
4. From that one stage-1 student, continuations of the same number of steps:
   - more SFT on the same positives (the fair baseline: same extra steps, 32 sequences a step);
   - REDI with α = 0: the pairs' positives alone, same steps and batches (the negative term's ablation);
   - REDI, α = 0.8, on (correct, incorrect) pairs of the same prompt (16 pairs = 32 sequences a step);
   - REDI with each negative cut after its first wrong token (located against the task's own
     worked solution), so the correct steps it took before and after the error are not pushed down.
Accuracy on held-out seeds (greedy, or the paper's T = 0.6 averaged over samples), with its standard
error, each arm's paired differences from the SFT baseline and from REDI with α = 0 on the same
seeds, and the same on the held-out seeds whose prompt is not a training prompt.

Where REDI beats SFT (benchmarks/RESULTS.md): 10-bit parity, with half of the teacher's
demonstrations answering unworked. Its unworked answers are guesses, right half the time, so the
positives still teach the student to guess; the negatives are all guesses.

    .venv/bin/python examples/redi_distill.py --out /tmp/redi_parity --threads 2 --task parity --no-think 0.5 \
        --teacher-demos 1000 --teacher-steps 1200 --student-steps 2000 --prompts 1024 --temperature 0.6 \
        --pairs-per-prompt 1 --stage2-steps 0 --stage2-lr 1e-5 --eval-temperature 0.6 --eval-samples 4

On 4-term running sums (the defaults), where the one worked solution pins the answer down, it did not:
- `--labels exact`: a trace is correct only if it is the worked solution token for token, not just
  a right boxed total; `--pairs-per-prompt 1 --stage2-steps 0`: one pair per prompt, one pass.
- `--negatives student`: the negatives are the stage-1 student's own wrong traces on the training
  prompts (sampled at `--student-temperature`, 0 = greedy), paired with a correct teacher or student
  trace of the same prompt.

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

from thinkgym.agents.types import SFT_SEED_BASE, TRAIN_SEED_BASE
from thinkgym.agents.methods.redi import (Trace, build_redi_data, cut_after_first_error, first_error, label_by_reference, load_traces,
                                  train_redi)
from thinkgym.agents.methods.sample import sample_traces
from thinkgym.agents.learner.sft import demonstration_rows, train_sft
from thinkgym.agents.policy import Policy
from thinkgym.agents.rollout.collector import Collector
from thinkgym.agents.rollout.hf.engine import HFEngine
from thinkgym.envs import make_task
from thinkgym.envs.tokenizer import encode
from thinkgym.rewards import NO_THINK, detect_think_mode

ENV = "LongCoT-v0"


def env_kwargs(task: str, no_think: float = 0.0) -> dict:
    """4-term running sums, or 10-bit parity whose demonstrations answer unworked `no_think` of the time."""
    if task == "running_sum":
        if no_think:
            raise ValueError("--no-think applies to --task parity only")
        return {"task": task, "task_kwargs": {"n_terms": 4}, "max_thinking_tokens": 200}
    return {"task": "parity", "task_kwargs": {"n_bits": 10, "no_think": no_think}, "max_thinking_tokens": 200}


def correct_per_seed(policy: Policy, seeds: range, kwargs: dict, temperature: float = 0.0,
                     samples: int = 1) -> tuple[np.ndarray, float]:
    """Each held-out seed's accuracy (mean over `samples` at `temperature`, with the same engine seed
    for every arm, so arms can be compared seed by seed), and the share of answers given unworked."""
    batch = Collector(ENV, HFEngine(policy, seed=0), kwargs, group_size=samples, temperature=temperature).collect(list(seeds))
    correct = np.array([float(ep.info.get("correct", False)) for ep in batch.episodes]).reshape(len(seeds), samples)
    modes = [detect_think_mode(policy.tokenizer.decode(ep.steps[0].action_ids)) for ep in batch.episodes]
    return correct.mean(1), modes.count(NO_THINK) / len(modes)


def reference_ids(traces_path: Path, tokenizer, task: str) -> dict[str, list[int]]:
    """Each prompt's worked solution (+ EOS) as token ids: the env's own demonstration for that seed,
    never an unworked one."""
    env = gym.make(ENV, disable_env_checker=True, tokenizer=tokenizer, **env_kwargs(task)).unwrapped
    refs: dict[str, list[int]] = {}
    for line in open(traces_path):
        rec = json.loads(line)
        if rec["prompt"] not in refs:
            env.reset(seed=rec["seed"])
            refs[rec["prompt"]] = encode(tokenizer, env.task.demonstration(env.problem.seed)) + [tokenizer.eos_token_id]
    return refs


def labelled_traces(path: Path, tokenizer, labels: str, task: str) -> tuple[list[Trace], dict[str, list[int]]]:
    """The traces in `path` with the verifier's labels, or ('exact') only worked-solution matches correct."""
    traces, refs = load_traces(path, tokenizer), reference_ids(path, tokenizer, task)
    return (label_by_reference(traces, refs) if labels == "exact" else traces), refs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--out", default="/tmp/redi_distill")
    ap.add_argument("--task", choices=("running_sum", "parity"), default="running_sum")
    ap.add_argument("--no-think", type=float, default=0.0,
                    help="parity: share of the teacher's demonstrations that box the answer unworked (a guess)")
    ap.add_argument("--teacher-demos", type=int, default=300, help="demonstrations the teacher is trained on")
    ap.add_argument("--teacher-steps", type=int, default=300)
    ap.add_argument("--prompts", type=int, default=512, help="training prompts the teacher answers")
    ap.add_argument("--samples", type=int, default=4, help="teacher samples per prompt")
    ap.add_argument("--temperature", type=float, default=1.0, help="teacher sampling temperature")
    ap.add_argument("--student-steps", type=int, default=600, help="stage 1 (SFT on positives)")
    ap.add_argument("--stage2-steps", type=int, default=200,
                    help="REDI steps, and the extra SFT steps of the baseline; 0: one pass over the pairs")
    ap.add_argument("--stage2-lr", type=float, default=3e-6, help="for REDI and the extra SFT alike")
    ap.add_argument("--alpha", type=float, default=0.8)
    ap.add_argument("--labels", choices=("verifier", "exact"), default="verifier",
                    help="correct = right boxed answer, or (exact) the worked solution token for token")
    ap.add_argument("--pairs-per-prompt", type=int, default=0, help="0: as many pairs as a prompt allows")
    ap.add_argument("--negatives", choices=("teacher", "student"), default="teacher",
                    help="stage 2's negatives: the teacher's wrong traces, or the stage-1 student's own")
    ap.add_argument("--student-temperature", type=float, default=0.6, help="with --negatives student (0: greedy)")
    ap.add_argument("--student-samples", type=int, default=4, help="with --negatives student")
    ap.add_argument("--eval", type=int, default=1000, help="held-out seeds eval-base..eval-base+eval-1")
    ap.add_argument("--eval-temperature", type=float, default=0.0, help="0: greedy; the paper samples at 0.6")
    ap.add_argument("--eval-samples", type=int, default=1, help="samples per held-out seed (accuracy = their mean)")
    ap.add_argument("--eval-base", type=int, default=0, help="first evaluation seed (tune on others, e.g. 30000000)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.pairs_per_prompt < 0:
        raise ValueError(f"--pairs-per-prompt must be >= 0 (0: all); got {args.pairs_per_prompt}")
    if args.eval_samples < 1 or (args.eval_temperature == 0 and args.eval_samples != 1):
        raise ValueError(f"--eval-samples must be >= 1, and 1 when greedy (--eval-temperature 0); got {args.eval_samples}")
    out, t0 = Path(args.out), time.time()
    kwargs = env_kwargs(args.task, args.no_think)
    eval_seeds = range(args.eval_base, args.eval_base + args.eval)
    how = "greedy" if args.eval_temperature == 0 else f"T={args.eval_temperature} x{args.eval_samples}"
    acc: dict[str, np.ndarray] = {}
    unworked: dict[str, float] = {}

    def say(msg: str) -> None:
        print(f"[{time.time() - t0:.0f}s] {msg}", flush=True)

    def score(name: str, policy: Policy) -> None:
        acc[name], unworked[name] = correct_per_seed(policy, eval_seeds, kwargs, args.eval_temperature, args.eval_samples)
        say(f"{name}: {how} accuracy {acc[name].mean():.3f}, unworked answers {unworked[name]:.3f}")

    teacher = Policy.tiny(seed=0)
    demos = range(SFT_SEED_BASE, SFT_SEED_BASE + args.teacher_demos)
    train_sft(teacher, demonstration_rows(ENV, demos, teacher.tokenizer, kwargs), steps=args.teacher_steps, lr=3e-3)
    score("teacher", teacher)
    traces = out / "teacher_traces.jsonl"
    train_prompts = range(TRAIN_SEED_BASE, TRAIN_SEED_BASE + args.prompts)
    sample_traces(HFEngine(teacher, seed=0), ENV, train_prompts, traces, n=args.samples, env_kwargs=kwargs,
                  temperature=args.temperature, seeds_per_batch=64)
    teacher_traces, refs = labelled_traces(traces, teacher.tokenizer, args.labels, args.task)
    per_prompt = args.pairs_per_prompt or None
    data = build_redi_data(teacher_traces, pairs_per_prompt=per_prompt)
    say(f"teacher data ({args.labels} labels): {json.dumps(data.counts)}")

    student = Policy.tiny(seed=1)
    positives = [r for t in data.positives for r in t.rows]
    train_sft(student, positives, steps=args.student_steps, lr=3e-3, writer=SummaryWriter(str(out / "tb_sft_stage1")))
    score("stage 1 (SFT)", student)

    pairs = data.pairs
    if args.negatives == "student":  # its own mistakes, each paired with a correct teacher/student trace of the prompt
        own = out / "student_traces.jsonl"
        sample_traces(HFEngine(student, seed=0), ENV, train_prompts, own, n=args.student_samples, env_kwargs=kwargs,
                      temperature=args.student_temperature, seeds_per_batch=64)
        student_traces, _ = labelled_traces(own, teacher.tokenizer, args.labels, args.task)
        mixed = build_redi_data(data.positives + student_traces, pairs_per_prompt=per_prompt)
        pairs = mixed.pairs
        say(f"student's own traces at T={args.student_temperature}: {sum(not t.correct for t in student_traces)} wrong of "
            f"{len(student_traces)}; with the teacher's positives: {json.dumps(mixed.counts)}")
    cut = [(w, cut_after_first_error(l, refs[l.prompt])) for w, l in pairs if first_error(l, refs[l.prompt]) is not None]
    faithful = sum(first_error(t, refs[t.prompt]) is None for t in data.positives)
    steps = args.stage2_steps or math.ceil(len(pairs) / 16)
    say(f"{faithful}/{len(data.positives)} positives follow the worked solution token for token; "
        f"{len(cut)}/{len(pairs)} negatives have a located first error; stage 2: {steps} steps")

    baseline = copy.deepcopy(student)
    train_sft(baseline, positives, steps=steps, lr=args.stage2_lr, seed=1)
    score("+ SFT", baseline)
    arms = (("+ REDI a=0 (pair positives only)", pairs, 0.0), (f"+ REDI a={args.alpha}", pairs, args.alpha),
            (f"+ REDI a={args.alpha}, cut negatives", cut, args.alpha))
    for name, arm_pairs, alpha in arms:
        redi = copy.deepcopy(student)
        tag = name.split("+ ")[1].split(" (")[0].replace(" ", "").replace(",", "_")
        train_redi(redi, arm_pairs, steps=steps, batch_size=16, lr=args.stage2_lr, alpha=alpha, seed=1,
                   writer=SummaryWriter(str(out / f"tb_{tag}")))
        score(name, redi)

    a0 = acc[arms[0][0]]
    task = make_task(args.task, **kwargs["task_kwargs"])
    seen = {task.sample(s).prompt for s in train_prompts}
    unseen = np.array([task.sample(s).prompt not in seen for s in eval_seeds])
    (out / "accuracy.json").write_text(json.dumps({"seeds": list(eval_seeds), "unseen": unseen.tolist(),
                                                   **{k: v.tolist() for k, v in acc.items()}}))

    def mean_se(c: np.ndarray) -> str:
        return f"{c.mean():.3f} ± {c.std(ddof=1) / math.sqrt(len(c)):.3f}"

    def paired(c: np.ndarray, ref: np.ndarray) -> str:
        diff = c - ref
        return f"{diff.mean():+.3f} ± {diff.std(ddof=1) / math.sqrt(len(diff)):.3f}"

    print(f"\n{how} accuracy, seeds {args.eval_base}..{eval_seeds[-1]} (± standard error); "
          f"stage 2: {steps} steps at lr {args.stage2_lr}")
    print(f"| {'arm':<34} | accuracy      | unworked | minus '+ SFT' (paired) | minus 'a=0' (paired) |\n"
          f"|{'-' * 36}|---------------|----------|------------------------|----------------------|")
    for k, (name, c) in enumerate(acc.items()):
        vs_sft = paired(c, acc["+ SFT"]) if k > 2 else ""
        vs_a0 = paired(c, a0) if k > 3 else ""
        print(f"| {name:<34} | {mean_se(c)} | {unworked[name]:8.3f} | {vs_sft:<22} | {vs_a0:<20} |")
    print(f"\nthe {unseen.sum()} held-out seeds whose prompt is not a training prompt: "
          + "; ".join(f"{name} {mean_se(c[unseen])}" + (f" ({paired(c[unseen], acc['+ SFT'][unseen])} vs '+ SFT')" if k > 2 else "")
                      for k, (name, c) in enumerate(acc.items())))
    print(f"minutes: {(time.time() - t0) / 60:.1f}")


if __name__ == "__main__":
    main()
