"""Generator–discriminator planning on Text2SQL-v0 with tiny policies, against random selection.

Two settings, each scored with the paper's metrics (PWS accuracy, F1 at 0.5, Hit@1, MRR,
execution accuracy) beside random selection over the very same candidates:

1. generated: a tiny untrained generator samples N candidates, a tiny untrained discriminator
   judges them. Untrained models write no parsable SQL, so this shows the plumbing, not skill.
2. perturbed: the candidates are the gold SQL plus perturbed variants (flipped comparisons and
   sort orders, changed constants, swapped values and aggregates, misspelled columns), labelled by
   execution. Selectors: execution feedback alone, the untrained discriminator, and the same tiny
   model after a short SFT on held-out questions to answer `{"correct": true|false}` directly.

    .venv/bin/python examples/discriminator_planning.py --questions 40 --gen-questions 8 --train-steps 200
"""

from __future__ import annotations

import argparse
import math
import re
import time

import numpy as np
import torch

from thinkgym.agents.methods.discriminator import Discriminator
from thinkgym.agents.methods.planner import Planner
from thinkgym.agents.policy import Policy
from thinkgym.agents.rollout.engine import Completion
from thinkgym.agents.rollout.hf.engine import HFEngine
from thinkgym.envs.tasks.text2sql import CITIES, PRODUCTS, finish_sql
from thinkgym.envs.text2sql import Text2SQLEnv
from thinkgym.envs.tokenizer import encode

METRICS = ("pws_acc", "f1_pos", "f1_neg", "macro_f1", "hit@1", "mrr", "exec_acc")
_SWAPS = [(" > ", " < "), (" > ", " >= "), (" DESC", " ASC"), (" ASC", " DESC"), ("AVG(", "MAX("), ("MAX(", "MIN("),
          ("MIN(", "AVG("), ("SUM(", "COUNT("), ("COUNT(*)", "COUNT(*) + 1"), ("DISTINCT ", ""), ("SELECT name", "SELECT city"),
          (" name", " nmae"), ("c.name", "c.city"), ("p.category", "p.name")]


def perturbations(sql: str, rng: np.random.Generator, k: int) -> list[str]:
    """Up to k distinct variants of a gold query (some may still be right: they are labelled by execution)."""
    out = {sql.replace(a, b, 1) for a, b in _SWAPS if a in sql}
    for num in set(re.findall(r"(?<![\w.])\d+(?![\w.])", sql)):
        out.add(re.sub(rf"(?<![\w.]){num}(?![\w.])", str(int(num) + int(rng.integers(1, 4))), sql, count=1))
    for value in CITIES + tuple(PRODUCTS):
        if f"'{value}'" in sql:
            other = [v for v in CITIES + tuple(PRODUCTS) if v != value and (v in CITIES) == (value in CITIES)]
            out.add(sql.replace(f"'{value}'", f"'{other[int(rng.integers(len(other)))]}'"))
    if " WHERE " in sql:
        out.add(re.sub(r" WHERE [^)]*?(?= GROUP BY|$)", "", sql))
    variants = sorted(out - {sql})
    return [variants[i] for i in rng.permutation(len(variants))[:k]]


class PoolEngine:
    """A 'generator' that offers the gold SQL plus perturbations for the env's current problem."""

    def __init__(self, env: Text2SQLEnv, tokenizer, n: int):
        self.env, self.tok, self.n = env, tokenizer, n

    def generate(self, requests):
        problem = self.env.problem
        rng = np.random.default_rng(problem.seed)
        sqls = [problem.answer] + perturbations(problem.answer, rng, self.n - 1)
        texts = [finish_sql("", sqls[i]) for i in rng.permutation(len(sqls))]
        return [[Completion(encode(self.tok, t), t, [0.0] * len(encode(self.tok, t)), "eos", 0.0) for t in texts] for _ in requests]

    def sync_weights(self):
        pass


def sft_verdicts(policy: Policy, disc: Discriminator, env: Text2SQLEnv, steps: int, batch: int, seed: int) -> float:
    """Teach the discriminator to answer ` {"correct": true|false}` right after its prompt; returns the last loss."""
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(policy.model.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    tok, eos, task = policy.tokenizer, policy.eos_token_id, env.task
    policy.model.train()
    loss_value = float("nan")
    for _ in range(steps):
        rows = []
        for _ in range(batch):
            problem = task.sample(int(rng.integers(10**6, 2 * 10**6)))  # disjoint from the evaluation seeds' range
            wrong = perturbations(problem.answer, rng, 1)
            sql = problem.answer if rng.random() < 0.5 or not wrong else wrong[0]
            label = task.verify(problem, finish_sql("", sql)).correct
            prompt = encode(tok, disc.prompt(problem.meta["question"], sql))
            target = encode(tok, ' {"correct": %s}' % ("true" if label else "false")) + [eos]
            rows.append((prompt + target, len(prompt)))
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), width), eos, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, (seq, start) in enumerate(rows):
            ids[i, : len(seq)] = torch.tensor(seq)
            labels[i, start: len(seq)] = torch.tensor(seq[start:])
        loss = policy.model(input_ids=ids.to(policy.device), labels=labels.to(policy.device)).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_value = float(loss.detach())
    policy.model.eval()
    return loss_value


def row(name: str, m: dict) -> str:
    return f"| {name:<34} | " + " | ".join(f"{m[k]:.3f}" if not math.isnan(m[k]) else "  n/a" for k in METRICS) + " |"


def header() -> str:
    return f"| {'selector':<34} | " + " | ".join(f"{k:>5}" for k in METRICS) + " |\n|" + "---|" * (len(METRICS) + 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    ap.add_argument("--questions", type=int, default=40, help="questions in the perturbed setting")
    ap.add_argument("--gen-questions", type=int, default=8, help="questions in the generated setting (slow on a CPU)")
    ap.add_argument("--n", type=int, default=5, help="candidates per question")
    ap.add_argument("--train-steps", type=int, default=200, help="SFT steps for the trained discriminator (0: skip)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--gen-tokens", type=int, default=64, help="generator budget in the 'generated' setting")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    seeds = list(range(args.questions))
    env = Text2SQLEnv()
    generator, judge = Policy.tiny(seed=args.seed), Policy.tiny(seed=args.seed + 1, dtype=torch.float32)
    disc = Discriminator(HFEngine(judge, seed=args.seed), judge.tokenizer, max_new_tokens=24)

    t0 = time.time()
    planner = Planner(HFEngine(generator, seed=args.seed), disc, n=args.n, max_new_tokens=args.gen_tokens, include_schema=False)
    gen_metrics, gen_random = planner.evaluate(env, seeds[: args.gen_questions])
    print(f"\n## 1. generated candidates ({args.gen_questions} questions x {args.n}, tiny untrained generator; {time.time() - t0:.0f} s)")
    print(f"oracle (some candidate right): {gen_metrics['oracle']:.3f}")
    print(header())
    print(row("tiny discriminator (untrained)", gen_metrics))
    print(row("random selection", gen_random))

    pool = PoolEngine(env, generator.tokenizer, args.n)
    print(f"\n## 2. gold + perturbed candidates ({args.questions} questions x {args.n}, labelled by execution)")
    print(header())
    results = {}
    exec_only, rand = Planner(pool, None, n=args.n, check_exec=True).evaluate(env, seeds)
    results["execution feedback only"] = exec_only
    results["tiny discriminator (untrained)"] = Planner(pool, disc, n=args.n, include_schema=False).evaluate(env, seeds)[0]
    if args.train_steps:
        t0 = time.time()
        loss = sft_verdicts(judge, disc, env, args.train_steps, args.batch, args.seed)
        name = f"tiny discriminator (SFT {args.train_steps} steps)"
        results[name] = Planner(pool, disc, n=args.n, include_schema=False).evaluate(env, seeds)[0]
        results[name + " + exec"] = Planner(pool, disc, n=args.n, include_schema=False, check_exec=True).evaluate(env, seeds)[0]
        print(f"(SFT: {time.time() - t0:.0f} s, final loss {loss:.3f})")
    for name, m in results.items():
        print(row(name, m))
    print(row("random selection", rand))
    print(f"oracle (gold among candidates): {rand['oracle']:.3f}; pairs with different labels: {exec_only['pairs']}")


if __name__ == "__main__":
    main()
