"""The `thinkgym` command: `train`, `sft`, `eval` and `plot`.

`train` takes every `GRPOConfig` field as a flag (`--loss-type dapo`, `--env-kwargs '{"chunk_size": 96}'`)
or from `--config run.yaml`; flags override the file. On several GPUs, the same command runs under
`torchrun --nproc-per-node N -m thinkgym.agents.cli train ...` (README, "Several GPUs").
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import fields
from typing import TYPE_CHECKING

import yaml

from .types import SFT_SEED_BASE, TRAIN_SEED_BASE

if TYPE_CHECKING:
    from .learner.config import GRPOConfig


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per `GRPOConfig` field, its help the field's docstring and default."""
    from .learner.config import GRPOConfig, field_docs, parse_field_value

    docs, defaults = field_docs(), GRPOConfig.__dataclass_fields__
    for f in fields(GRPOConfig):
        if f.name != "resume":  # a plain switch, added by the train command
            default = defaults[f.name].default_factory() if callable(defaults[f.name].default_factory) else f.default
            parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None, type=lambda t, k=f.type: parse_field_value(k, t),
                                metavar=f.name.upper(), help=f"{docs[f.name]} (default: {default!r})".replace("%", "%%"))


def config_stages(args: argparse.Namespace) -> list[GRPOConfig]:
    """One config, or one per entry of a YAML file's `stages` list (each continues from the last).

    A stage's keys override the file's top-level keys; command-line flags override both, and each
    stage writes to `<output_dir>/stage<i>-<env>`."""
    from .learner.config import GRPOConfig

    data = {}
    if args.config:
        with open(args.config) as f:
            data = yaml.safe_load(f) or {}
    stages = data.pop("stages", None)
    overrides = {f.name: getattr(args, f.name) for f in fields(GRPOConfig) if getattr(args, f.name, None) is not None}
    if stages is None:
        return [GRPOConfig.from_dict({**data, **overrides})]
    if not isinstance(stages, list) or not all(isinstance(s, dict) for s in stages) or not stages:
        raise ValueError(f"{args.config}: `stages` must be a non-empty list of mappings of config keys")
    root = overrides.get("output_dir", data.get("output_dir", GRPOConfig.output_dir))
    return [GRPOConfig.from_dict({**data, **stage, **overrides, "output_dir": f"{root}/stage{i}-{stage.get('env', 'env')}"})
            for i, stage in enumerate(stages, 1)]


def cmd_train(args: argparse.Namespace) -> None:
    """Train every stage; under `torchrun` this runs on every rank (see `distributed.py`) and rank 0 reports."""
    from . import distributed
    from .learner.trainer import GRPOTrainer

    policy = trainer = None
    try:
        for cfg in config_stages(args):
            trainer = GRPOTrainer(cfg, policy=policy)
            last = trainer.train()
            policy = trainer.policy
            if distributed.is_main():
                print(json.dumps({"output_dir": cfg.output_dir,
                                  **{k: round(v, 4) for k, v in last.items() if k.startswith(("reward", "eval/", "accuracy"))}}))
        distributed.barrier()  # no rank tears gloo down while another still uses it (that aborts the process)
    finally:
        if trainer is not None:
            trainer.engine.close()  # vLLM tears the process groups down itself, and must do it first
        distributed.shutdown()


def cmd_sft(args: argparse.Namespace) -> None:
    from .methods.sft import demonstration_rows, jsonl_rows, train_sft
    from .policy import Policy

    policy = Policy.from_pretrained(args.model, device=args.device)
    rows = jsonl_rows(args.data, policy.tokenizer) if args.data else demonstration_rows(
        args.env, range(SFT_SEED_BASE, SFT_SEED_BASE + args.seeds), policy.tokenizer, json.loads(args.env_kwargs))
    train_sft(policy, rows, steps=args.steps, lr=args.learning_rate, batch_size=args.batch_size)
    policy.save_pretrained(args.output_dir)
    print(f"saved the fine-tuned policy to {args.output_dir}")


def cmd_eval(args: argparse.Namespace) -> None:
    from .evaluate import evaluate
    from .policy import Policy
    from .rollout.engine import make_engine

    if args.temperature == 0 and args.n != 1:
        raise ValueError(f"--n {args.n} at --temperature 0: greedy decoding gives one answer per problem; "
                         "give --n 1, or a --temperature above 0 for avg@n and pass@k")
    if args.temperature < 0 or args.n < 1 or args.seeds < 1:
        raise ValueError(f"--temperature must be >= 0, --n and --seeds >= 1; got {args.temperature}, {args.n}, {args.seeds}")
    policy = Policy.from_pretrained(args.model, device=args.device)
    res = evaluate(make_engine(args.engine, policy, args.seed), args.env, range(args.seeds), n=args.n, env_kwargs=json.loads(args.env_kwargs),
                   temperature=args.temperature, progress="eval", out=args.out, problem_seeds=args.problem_seeds)
    mode = {"mode": "greedy"} if args.temperature == 0 else {"mode": "sampling", "temperature": args.temperature, "n": args.n}
    print(json.dumps({**mode, "problems": args.seeds, "seed": args.seed, **res, **({"out": args.out} if args.out else {})}, indent=1))


def cmd_plot(args: argparse.Namespace) -> None:
    from .plot import plot_run

    print(plot_run(args.run_dir, args.out, smooth=args.smooth, tags=[t for t in args.tags.split(",") if t]))


def cmd_sample(args: argparse.Namespace) -> None:
    from .methods.redi import build_redi_data, load_traces
    from .methods.sample import sample_traces
    from .policy import Policy
    from .rollout.engine import make_engine

    policy = Policy.from_pretrained(args.model, device=args.device)
    res = sample_traces(make_engine(args.engine, policy, args.seed), args.env, range(args.seed_start, args.seed_start + args.seeds),
                        args.out, n=args.n, env_kwargs=json.loads(args.env_kwargs), temperature=args.temperature,
                        top_p=args.top_p, seeds_per_batch=args.seeds_per_batch, format=args.format, text=args.text)
    if args.format == "episodes":  # what `thinkgym redi` would make of the file
        res["file"] = build_redi_data(load_traces(args.out, policy.tokenizer), None).counts
    print(json.dumps(res))


def cmd_redi(args: argparse.Namespace) -> None:
    from torch.utils.tensorboard import SummaryWriter

    from .evaluate import evaluate
    from .methods.redi import build_redi_data, check_alpha, load_traces, train_redi
    from .methods.sft import train_sft
    from .policy import Policy
    from .rollout.engine import make_engine

    check_alpha(args.alpha)
    policy = Policy.from_pretrained(args.model, device=args.device)
    data = build_redi_data(load_traces(args.data, policy.tokenizer), args.pairs_per_prompt or None)
    print(json.dumps(data.counts))
    writer = SummaryWriter(args.output_dir)
    if args.sft_steps:  # stage 1: SFT on the positives
        train_sft(policy, [r for t in data.positives for r in t.rows], steps=args.sft_steps, lr=args.sft_learning_rate,
                  batch_size=args.batch_size, seed=args.seed, writer=writer)
    engine, kw = make_engine(args.engine, policy, args.seed), json.loads(args.env_kwargs)
    hist = train_redi(policy, data.pairs, steps=args.steps, batch_size=args.batch_size, lr=args.learning_rate, alpha=args.alpha,
                      seed=args.seed, writer=writer, eval_every=args.eval_every, output_dir=args.output_dir, save_every=args.save_every,
                      eval_fn=lambda: evaluate(engine, args.env, range(args.eval_prompts), env_kwargs=kw, temperature=0.0))
    print(json.dumps({k: round(v, 4) for k, v in hist[-1].items()}))


def build_parser(train_flags: bool = True) -> argparse.ArgumentParser:
    """Every command and flag. `train_flags=False` leaves out train's GRPOConfig flags, so that the other
    commands (their `--help` too) never load the learner's config."""
    p = argparse.ArgumentParser(prog="thinkgym", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = argparse.ArgumentDefaultsHelpFormatter
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="GRPO training (flags = GRPOConfig fields)", description="GRPO training; each flag is a GRPOConfig field")
    t.add_argument("--config", help="YAML file of GRPOConfig fields")
    t.add_argument("--resume", dest="resume", action="store_const", const=True, default=None, help="continue from output_dir's latest checkpoint")
    if train_flags:
        add_config_flags(t)
    t.set_defaults(func=cmd_train)
    helps = {"sft": "SFT on an env's demonstrations or a jsonl of pairs", "eval": "held-out accuracy, or avg@n and pass@k, of a policy",
             "sample": "write a jsonl of sampled traces", "redi": "REDI on a jsonl of (prompt, response, correct)"}
    for name, func in (("sft", cmd_sft), ("eval", cmd_eval), ("sample", cmd_sample), ("redi", cmd_redi)):
        s = sub.add_parser(name, help=helps[name], description=helps[name], formatter_class=d)
        s.add_argument("--model", default="tiny", help="a local folder, a hub id, or `tiny` (the embedded default)")
        s.add_argument("--env", default="DelethinkDemo-v0", help="registered environment id")
        s.add_argument("--env-kwargs", default="{}", help="JSON keyword arguments for the environment")
        s.add_argument("--device", default=None, help="cuda or cpu; unset picks cuda where there is one")
        s.set_defaults(func=func)
    for name in ("eval", "sample", "redi"):
        sub.choices[name].add_argument("--engine", default="hf", help="rollout engine: hf or vllm")
    for name in ("sample", "redi"):
        sub.choices[name].add_argument("--seed", type=int, default=0, help="seeds the sampler (and REDI's batches)")
    s = sub.choices["sft"]
    s.add_argument("--data", help="jsonl of prompt/response pairs; unset trains on the env's demonstrations")
    s.add_argument("--seeds", type=int, default=400, help="demonstrations (env seeds) to train on")
    s.add_argument("--steps", type=int, default=300, help="optimizer steps")
    s.add_argument("--batch-size", type=int, default=32, help="rows per step")
    s.add_argument("--learning-rate", type=float, default=1e-3, help="AdamW learning rate (warm-up, then linear decay)")
    s.add_argument("--output-dir", required=True, help="where the fine-tuned policy is saved (from_pretrained loads it)")
    e = sub.choices["eval"]
    e.add_argument("--seeds", type=int, default=64, help="held-out env seeds 0..N-1, one problem each")
    e.add_argument("--n", type=int, default=1, help="samples per problem when sampling (avg@n, and pass@k for every k <= n); greedy takes 1")
    e.add_argument("--temperature", type=float, default=0.0, help="0: greedy, one answer per problem (accuracy); above 0: sampling")
    e.add_argument("--seed", type=int, default=0, help="seeds the sampler")
    e.add_argument("--out", help="JSONL to (over)write, one line per problem: prompt, gold answer, and each sample's "
                                 "completion, answer, reward, reward components, correctness, tokens and chunks")
    e.add_argument("--problem-seeds", action="store_true",
                   help="seed i poses the task's problem i (reset option problem_seed): on a dataset task, --seeds N of "
                        "a dataset of N records poses each record exactly once; unset, a seed draws its problem, as in training")
    pl = sub.add_parser("plot", help="PNG curves from a run's TensorBoard logs", formatter_class=d,
                        description="PNG of a run's loss, entropy, grad norm, KL, clip fraction, reward and its components, "
                                    "accuracy, learning rate and length, smoothed, and of any --tags")
    pl.add_argument("run_dir", help="a run's output_dir")
    pl.add_argument("--out", help="PNG path (default: RUN_DIR/curves.png)")
    pl.add_argument("--smooth", type=float, default=0.6, help="EMA smoothing weight in [0, 1), as TensorBoard's; 0 draws raw values")
    pl.add_argument("--tags", default="", metavar="TAG,TAG",
                    help="more scalar tags to draw, one panel each, comma-separated: names or shell patterns ('time/*,reward_std')")
    pl.set_defaults(func=cmd_plot)
    s = sub.choices["sample"]
    s.add_argument("--out", required=True, help="jsonl to write; seeds already in it are skipped (resume)")
    s.add_argument("--seeds", type=int, default=256, help="prompts (env seeds) to sample")
    s.add_argument("--seed-start", type=int, default=TRAIN_SEED_BASE, help="the first env seed (default: the training range)")
    s.add_argument("--n", type=int, default=4, help="samples per prompt")
    s.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    s.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold")
    s.add_argument("--seeds-per-batch", type=int, default=32, help="prompts per engine call (the file is appended after each)")
    s.add_argument("--format", choices=["episodes", "steps"], default="episodes",
                   help="one line per episode (for redi/sft), or one per step: trajectory_id, step, is_last, prompt_ids, "
                        "response_ids, logprobs, env_mask, and reward and info on the last step (README, the contract)")
    s.add_argument("--text", action="store_true", help="with --format steps: add prompt_text and response_text, the ids decoded")
    r = sub.choices["redi"]
    r.add_argument("--data", required=True, help="jsonl with prompt, response, correct per line")
    r.add_argument("--output-dir", required=True, help="TensorBoard logs, checkpoints and the final policy")
    r.add_argument("--alpha", type=float, default=0.8, help="weight of the negatives' term (0: SFT on positives, 1: symmetric)")
    r.add_argument("--steps", type=int, default=100, help="stage-2 optimizer steps")
    r.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    r.add_argument("--learning-rate", type=float, default=1e-6, help="stage-2 learning rate")
    r.add_argument("--pairs-per-prompt", type=int, default=1, help="0: every (correct, incorrect) match")
    r.add_argument("--sft-steps", type=int, default=0, help="stage 1 on the positives first")
    r.add_argument("--sft-learning-rate", type=float, default=5e-5, help="stage-1 learning rate")
    r.add_argument("--eval-prompts", type=int, default=64, help="held-out prompts per evaluation")
    r.add_argument("--eval-every", type=int, default=50, help="evaluate every N steps")
    r.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (0: only at the end)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(train_flags=not argv or argv[0] == "train").parse_args(argv)
    try:
        args.func(args)
    except ValueError as exc:
        sys.exit(f"thinkgym {args.command}: error: {exc}")


if __name__ == "__main__":
    main()
