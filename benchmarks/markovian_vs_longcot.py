"""The Markovian Thinker's two headline claims in miniature: Delethink-RL against LongCoT-RL.

Per seed: the demo's warm start (`examples/demo.py`'s recipe, `DEMO_RECIPE`: the tiny policy, SFT on 2,000
mixed Markovian / table demonstrations, gated at 0.8 greedy), here on both formats: each demonstration
played through `DelethinkDemo-v0` (chunks) and through `LongCoT-v0` (one context of up to 192 tokens), and
the gate met in each (`sft_extra_envs`), so that neither arm starts from a format it never saw. It is saved
once; then two GRPO arms from exactly those weights, with equal steps, prompts, group size, learning rate and loss:
- Delethink-RL in `DelethinkDemo-v0` (C = 64, m = 32, I = 5: at most 192 thinking tokens);
- LongCoT-RL in `LongCoT-v0` with the same 192 thinking tokens in one context.

1. Held-out accuracy (greedy, and sampled at T = 1) of the warm start and of each arm, in its own
   environment and in the other's; the share of Markovian traces (those that restate the running
   state, `total|digits left`, on their first line: the format whose state survives a reset); and the
   training compute, measured from the sequences each arm ran (`learner/metrics.py`'s `compute_counts`): FLOPs
   per trained token, linear terms plus attention at the real context lengths, learner and rollouts,
   and the wall time.
2. Thinking past the trained budget: both final policies, greedy, on longer sums (`--scaling-terms`)
   with growing budgets, Delethink with I chunks and LongCoT with the equal total tokens
   (C + (I - 1)(C - m)) in one context. Plotted to `--plot` with the training budget marked.

Each seed's results land in OUT/s<seed>/ (train.json, scaling.json, the arms' checkpoints); a seed
whose files exist is read, not rerun, so a sweep resumes and `--report-only` re-tabulates. The table
over seeds goes to OUT/summary.json and OUT/summary.md.

    python benchmarks/markovian_vs_longcot.py --seeds 0-2 --jobs 3 --threads 1 --device cpu
    python benchmarks/markovian_vs_longcot.py --seeds 0 --rl-steps 2 --sft-steps 20 --sft-max-steps 20 \\
        --sft-seeds 50 --held-out 4 --scaling-problems 2 --scaling-terms 8,12 --scaling-chunks 5,8 --out /tmp/mvl  # a smoke run

What it does not show: anything beyond a tiny policy on a synthetic running-sum task.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from demo_seeds import parse_seeds, run_pool, seed_flags

from thinkgym.agents.evaluate import evaluate
from thinkgym.agents.learner.checkpoint import checkpoint_path
from thinkgym.agents.learner.config import DEMO_RECIPE, GRPOConfig
from thinkgym.agents.learner.trainer import GRPOTrainer
from thinkgym.agents.plot import read_scalars
from thinkgym.agents.policy import Policy
from thinkgym.agents.rollout.engine import Engine, make_engine
from thinkgym.envs.registration import DEMO_DELETHINK

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

C, M = DEMO_DELETHINK["chunk_size"], DEMO_DELETHINK["carryover"]
ARMS = {"delethink": "DelethinkDemo-v0", "longcot": "LongCoT-v0"}
COUNTS = ["train_tokens", "train_attention_pairs", "trained_tokens", "rollout_tokens", "rollout_attention_pairs"]


def budget(chunks: int) -> int:
    """Delethink's most thinking tokens with `chunks` chunks: C + (I - 1)(C - m)."""
    return C + (chunks - 1) * (C - M)


def env_kwargs(arm: str, n_terms: int, restate: float, chunks: int) -> dict[str, Any]:
    """`arm`'s environment on `n_terms`-term sums with a budget of `chunks` Delethink chunks (LongCoT: as many tokens)."""
    task = {**DEMO_DELETHINK["task_kwargs"], "n_terms": n_terms, "restate": restate}
    if arm == "delethink":
        return {"task_kwargs": task, "head": DEMO_DELETHINK["head"], "max_chunks": chunks}
    return {"task_kwargs": task, "max_thinking_tokens": budget(chunks)}


def markovian(tokenizer: Any):
    """Whether an episode's trace restates the running state (`total|digits left`) on its first line."""
    return lambda ep: float("|" in tokenizer.decode(ep.steps[0].action_ids).split("\n")[0])


def trained_kwargs(arm: str, args: argparse.Namespace) -> dict[str, Any]:
    """`arm`'s environment as trained and held out: the demo's sums and budget (I = 5 chunks, or 192 tokens)."""
    return env_kwargs(arm, DEMO_DELETHINK["task_kwargs"]["n_terms"], args.restate, DEMO_DELETHINK["max_chunks"])


def arm_config(args: argparse.Namespace, seed: int, arm: str, model: str, out: Path) -> GRPOConfig:
    """The demo's recipe (`DEMO_RECIPE`), in `arm`'s environment; only the environment differs."""
    return GRPOConfig(**{
        **DEMO_RECIPE, "env": ARMS[arm], "env_kwargs": trained_kwargs(arm, args), "model": model, "output_dir": str(out),
        "seed": seed, "device": args.device, "dtype": args.dtype, "sft_steps": args.sft_steps, "sft_learning_rate": args.sft_lr,
        "sft_seeds": args.sft_seeds, "sft_gate": args.sft_gate, "sft_max_steps": max(args.sft_max_steps, args.sft_steps),
        "steps": args.rl_steps, "learning_rate": args.learning_rate})


def held_out(engine: Engine, args: argparse.Namespace, seed: int, who: str) -> dict[str, dict[str, float]]:
    """`engine`'s policy in both environments at the trained budget, greedy and sampled (the same seeds each time)."""
    out = {}
    fmt = {"markovian": markovian(engine.policy.tokenizer)}
    for arm, env_id in ARMS.items():
        kw = trained_kwargs(arm, args)
        engine.seed(10_000 + seed)
        for mode, n, temp in (("greedy", 1, 0.0), ("sampled", args.samples, 1.0)):
            out[f"{arm}_env_{mode}"] = evaluate(engine, env_id, range(args.held_out), n=n, temperature=temp, env_kwargs=kw,
                                                per_episode=fmt, progress=f"s{seed} {who} in {arm}: {mode}")
    return out


def flops(policy: Policy, tokens: float, pairs: float) -> float:
    """Forward FLOPs of `tokens` tokens and `pairs` attention query-key pairs: 2 per weight of every matrix
    (the tied embedding counted once, as the output layer) per token, and 4 · layers · attention width per
    pair (QKᵀ and AV)."""
    c = policy.model.config
    matmul_weights = sum(p.numel() for p in policy.model.parameters() if p.dim() == 2)
    width = c.num_attention_heads * (getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads)
    return 2 * matmul_weights * tokens + 4 * c.num_hidden_layers * width * pairs


def measured_compute(run_dir: Path, policy: Policy) -> dict[str, float]:
    """The run's compute from its per-step counts and times (TensorBoard), summed over its steps."""
    scalars = read_scalars(run_dir)
    total = {k: sum(v for _, v in scalars[f"compute/{k}"]) for k in COUNTS}
    learner = 3 * flops(policy, total["train_tokens"], total["train_attention_pairs"])  # the backward costs twice the forward
    learner_attention = 3 * flops(policy, 0, total["train_attention_pairs"])
    rollout = flops(policy, total["rollout_tokens"], total["rollout_attention_pairs"])
    per = max(total["trained_tokens"], 1.0)
    return {**total, "learner_flops_per_trained_token": learner / per, "rollout_flops_per_trained_token": rollout / per,
            "flops_per_trained_token": (learner + rollout) / per, "learner_attention_share": learner_attention / max(learner, 1.0),
            "rows_tokens_per_trained_token": total["train_tokens"] / per,
            **{f"seconds_{k}": sum(v for _, v in scalars[f"time/{k}_s"]) for k in ("step", "rollout", "train")}}


def train_seed(args: argparse.Namespace, seed: int, root: Path) -> dict[str, Any]:
    """The shared warm start on both formats, then both RL arms from it; everything scored on the held-out problems."""
    warm = root / "warm_start"
    cfg = dataclasses.replace(arm_config(args, seed, "delethink", "tiny", warm),
                              sft_extra_envs={ARMS["longcot"]: trained_kwargs("longcot", args)})  # LongCoT's rows and gate too
    trainer = GRPOTrainer(cfg)
    trainer.warm_start()
    trainer.policy.save_pretrained(warm / "policy")
    res: dict[str, Any] = {"warm_start": held_out(trainer.engine, args, seed, "warm start"), "warm_start_gate": trainer.warm_start_report}
    for arm in ARMS:
        cfg = arm_config(args, seed, arm, str(warm / "policy"), root / arm)
        cfg.sft_steps = 0  # RL starts from the shared warm start as it is
        trainer = GRPOTrainer(cfg)
        trainer.train()
        res[arm] = {"held_out": held_out(trainer.engine, args, seed, f"{arm}-RL"),
                    "compute": measured_compute(root / arm, trainer.policy)}
    return res


def scaling_seed(args: argparse.Namespace, seed: int, root: Path) -> dict[str, Any]:
    """Each arm's final policy in its own environment, greedy, on longer sums with growing budgets."""
    out: dict[str, Any] = {}
    for arm, env_id in ARMS.items():
        policy = Policy.from_pretrained(str(checkpoint_path(root / arm, args.rl_steps) / "policy"), device=args.device, dtype=args.dtype)
        engine = make_engine("hf", policy, seed)
        for terms in args.scaling_terms:
            for chunks in args.scaling_chunks:
                r = evaluate(engine, env_id, range(args.scaling_problems), n=1, temperature=0.0,
                             env_kwargs=env_kwargs(arm, terms, args.restate, chunks), progress=f"s{seed} {arm}: {terms} terms, I={chunks}")
                out[f"{arm}/{terms}/{chunks}"] = {"budget": budget(chunks), **r}
    return out


def one_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Train (unless OUT/s<seed>/train.json exists), then the scaling evaluation (unless scaling.json does)."""
    torch.set_num_threads(args.threads)
    root = Path(args.out) / f"s{seed}"
    res = {}
    for name, run in (("train", train_seed), ("scaling", scaling_seed)):
        path = root / f"{name}.json"
        if not path.exists() and not args.report_only and (name == "train" or args.scaling_problems):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(run(args, seed, root), indent=1))
        if path.exists():
            res[name] = json.loads(path.read_text())
    return res


def mean_sd(values: list[float]) -> str:
    v = np.array(values, dtype=float)
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}"


def summarise(results: dict[int, dict], args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Means and sds over seeds, as JSON and as a markdown table."""
    runs = [r["train"] for r in results.values() if "train" in r]
    if not runs:
        return {}, "no finished seed\n"
    summary: dict[str, Any] = {"seeds": sorted(s for s, r in results.items() if "train" in r), "args": vars(args)}
    lines = [f"Held-out {args.held_out} problems ({DEMO_DELETHINK['task_kwargs']['n_terms']} terms), {len(runs)} seeds, mean ± sd; "
             f"sampled: T = 1, {args.samples} each; Markovian: share of sampled traces that restate the state.", "",
             "| policy | evaluated in | greedy | sampled | Markovian (sampled) | carryover held the state (sampled) |",
             "|---|---|---|---|---|---|"]
    for who in ("warm_start", *ARMS):
        for arm in ARMS:
            scores = [(r[who] if who == "warm_start" else r[who]["held_out"]) for r in runs]
            cells = {f"{m}_{k}": [s[f"{arm}_env_{m}"].get(k, float("nan")) for s in scores]
                     for m in ("greedy", "sampled") for k in ("accuracy", "markovian", "carried_state")}
            summary[f"{who}/{arm}_env"] = cells
            name = "warm start (RL's start)" if who == "warm_start" else f"{who}-RL"
            carried = mean_sd(cells["sampled_carried_state"]) if arm == "delethink" else "-"
            lines.append(f"| {name} | {ARMS[arm]} | {mean_sd(cells['greedy_accuracy'])} | {mean_sd(cells['sampled_accuracy'])} | "
                         f"{mean_sd(cells['sampled_markovian'])} | {carried} |")
    gates = {s: r["train"].get("warm_start_gate") for s, r in sorted(results.items()) if "train" in r}
    summary["warm_start_gate"] = gates
    lines += ["", f"Warm start, per seed: greedy accuracy in each format on the gate's validation problems (gate {args.sft_gate}):", ""]
    lines += [f"- s{s}: " + (", ".join(f"{k} {v:.3f}" for k, v in (g.get("gate_accuracies") or {}).items()) or "no gate")
              + f"; {g['sft_steps']} SFT steps" + ("" if g["passed"] is None else f", {'passed' if g['passed'] else 'NOT passed'}")
              for s, g in gates.items() if g]
    lines += ["", f"Training compute over {args.rl_steps} GRPO steps (measured from the sequences run; tiny policy, {args.device}):", "",
              "| arm | FLOPs / trained token (learner) | (rollouts) | (total) | attention share of learner FLOPs | "
              "learner tokens / trained token | trained tokens | wall s (RL) | of it rollouts | learner |", "|---|---|---|---|---|---|---|---|---|---|"]
    for arm in ARMS:
        c = {k: [r[arm]["compute"][k] for r in runs] for k in runs[0][arm]["compute"]}
        summary[f"{arm}/compute"] = c
        lines.append(f"| {arm}-RL | {np.mean(c['learner_flops_per_trained_token']):.3g} | {np.mean(c['rollout_flops_per_trained_token']):.3g} | "
                     f"{np.mean(c['flops_per_trained_token']):.3g} | {mean_sd(c['learner_attention_share'])} | "
                     f"{mean_sd(c['rows_tokens_per_trained_token'])} | {np.mean(c['trained_tokens']):.0f} | "
                     f"{mean_sd(c['seconds_step'])} | {mean_sd(c['seconds_rollout'])} | {mean_sd(c['seconds_train'])} |")
    scaling = [r["scaling"] for r in results.values() if "scaling" in r]
    if scaling:
        summary["scaling"] = {k: [s[k]["accuracy"] for s in scaling] for k in scaling[0]}
        lines += ["", f"Thinking past the trained budget ({budget(DEMO_DELETHINK['max_chunks'])} tokens): greedy accuracy on "
                  f"{args.scaling_problems} problems, {len(scaling)} seeds, each policy in its own environment.", "",
                  "| terms | arm | " + " | ".join(f"I={i} ({budget(i)} tok)" for i in args.scaling_chunks) + " |",
                  "|---|---|" + "---|" * len(args.scaling_chunks)]
        for terms in args.scaling_terms:
            for arm in ARMS:
                lines.append(f"| {terms} | {arm}-RL | " + " | ".join(mean_sd(summary["scaling"][f"{arm}/{terms}/{i}"])
                                                                    for i in args.scaling_chunks) + " |")
    return summary, "\n".join(lines) + "\n"


def plot_scaling(summary: dict[str, Any], args: argparse.Namespace, path: Path) -> None:
    """Accuracy against thinking tokens, one panel per sum length, mean ± sd over seeds."""
    fig, axes = plt.subplots(1, len(args.scaling_terms), figsize=(3.6 * len(args.scaling_terms), 3.2), squeeze=False, sharey=True)
    x = [budget(i) for i in args.scaling_chunks]
    for ax, terms in zip(axes[0], args.scaling_terms):
        for arm, style in (("delethink", "o-"), ("longcot", "s--")):
            acc = np.array([summary["scaling"][f"{arm}/{terms}/{i}"] for i in args.scaling_chunks])
            ax.errorbar(x, acc.mean(1), yerr=acc.std(1, ddof=1) if acc.shape[1] > 1 else None, fmt=style, capsize=3, label=f"{arm}-RL")
        ax.axvline(budget(DEMO_DELETHINK["max_chunks"]), color="grey", ls=":", label="training budget")
        ax.set_title(f"{terms}-term sums")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("thinking tokens")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"greedy accuracy ({len(next(iter(summary['scaling'].values())))} seeds)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers, e.g. 8,12,16") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers, e.g. 8,12,16")
    return values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    seed_flags(ap)
    ap.add_argument("--restate", type=float, default=0.35, help="share of warm-start demonstrations that restate the state (the demo's)")
    ap.add_argument("--sft-steps", type=int, default=DEMO_RECIPE["sft_steps"], help="warm-start SFT steps of the first round (the demo's)")
    ap.add_argument("--sft-lr", type=float, default=DEMO_RECIPE["sft_learning_rate"], help="warm-start SFT peak learning rate (the demo's)")
    ap.add_argument("--sft-seeds", type=int, default=DEMO_RECIPE["sft_seeds"],
                    help="warm-start demonstrations, each played in both formats (the demo's)")
    ap.add_argument("--sft-gate", type=float, default=DEMO_RECIPE["sft_gate"],
                    help="greedy accuracy on 64 validation problems the warm start must reach in each format (the demo's; 0: no gate)")
    ap.add_argument("--sft-max-steps", type=int, default=DEMO_RECIPE["sft_max_steps"],
                    help="most warm-start SFT steps in all while below the gate (the demo's; at most --sft-steps: one round and a verdict)")
    ap.add_argument("--rl-steps", type=int, default=DEMO_RECIPE["steps"], help="GRPO steps of 8 prompts x 8 samples, each arm (the demo's)")
    ap.add_argument("--learning-rate", type=float, default=DEMO_RECIPE["learning_rate"], help="GRPO learning rate, both arms (the demo's)")
    ap.add_argument("--held-out", type=int, default=128, help="held-out problems (seeds 0..N-1) for the table")
    ap.add_argument("--samples", type=int, default=4, help="sampled answers per held-out problem (T = 1)")
    ap.add_argument("--scaling-terms", type=int_list, default=[8, 12, 16, 24], help="sum lengths of the scaling evaluation")
    ap.add_argument("--scaling-chunks", type=int_list, default=[5, 8, 12, 16, 24],
                    help="Delethink chunk budgets I of the scaling evaluation (LongCoT: C + (I-1)(C-m) tokens)")
    ap.add_argument("--scaling-problems", type=int, default=64, help="problems per scaling point, greedy (0: no scaling evaluation)")
    ap.add_argument("--report-only", action="store_true", help="tabulate and plot the results on disk, running nothing")
    ap.add_argument("--out", default="runs/markovian_vs_longcot", help="one folder per seed, and summary.json / summary.md")
    ap.add_argument("--plot", default="benchmarks/markovian_scaling.png", help="the scaling plot (PNG)")
    args = ap.parse_args()
    results = run_pool(one_seed, {s: (args, s) for s in parse_seeds(args.seeds)}, args.jobs)
    summary, table = summarise(results, args)
    print("\n" + table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "summary.md").write_text(table)
    if "scaling" in summary:
        plot_scaling(summary, args, Path(args.plot))
        print(f"plot: {args.plot}")
    print(f"tables: {out / 'summary.md'}, {out / 'summary.json'}")


if __name__ == "__main__":
    main()
