"""The `thinkgym` command: `train`, `sft`, `eval`, `plot` and `serve`.

`train` takes every `GRPOConfig` field as a flag (`--loss-type dapo`, `--env-kwargs '{"chunk_size": 96}'`)
or from `--config run.yaml`; flags override the file. On several GPUs, the same command runs under
`torchrun --nproc-per-node N -m thinkgym.agents.cli train ...` (README, "Several GPUs").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
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


def read_yaml(path: str) -> dict:
    """A YAML config file's mapping, or a one-line error for a missing file or a syntax error."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ValueError(f"--config {path}: no such file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ValueError(f"--config {path} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if data is not None and not isinstance(data, dict):
        raise ValueError(f"--config {path} must be a mapping of GRPOConfig keys (key: value lines); got a {type(data).__name__}")
    return data or {}


def config_stages(args: argparse.Namespace, root: str | None = None) -> tuple[str, list[GRPOConfig]]:
    """The output folder (empty where none is set) and one config, or one per entry of a YAML file's
    `stages` list (each continues from the last).

    A stage's keys override the file's top-level keys; command-line flags override both, and each
    stage writes to `<output folder>/stage<i>-<env>`. `root`, where given, is the output folder."""
    from .learner.config import GRPOConfig

    data = read_yaml(args.config) if args.config else {}
    stages = data.pop("stages", None)
    overrides = {f.name: getattr(args, f.name) for f in fields(GRPOConfig) if getattr(args, f.name, None) is not None}
    if root is not None:
        overrides["output_dir"] = root
    root = overrides.get("output_dir", data.get("output_dir", GRPOConfig.output_dir))
    if stages is None:
        return root, [GRPOConfig.from_dict({**data, **overrides})]
    if not isinstance(stages, list) or not all(isinstance(s, dict) for s in stages) or not stages:
        raise ValueError(f"{args.config}: `stages` must be a non-empty list of mappings of config keys")
    return root, [GRPOConfig.from_dict({**data, **stage, **overrides,
                                        "output_dir": f"{root}/stage{i}-{stage.get('env', 'env')}" if root else ""})
                  for i, stage in enumerate(stages, 1)]


def cmd_train(args: argparse.Namespace) -> None:
    """Train every stage; under `torchrun` this runs on every rank (see `distributed.py`) and rank 0 reports.

    The output folder is checked before anything is written (`run_dir.prepare_output_dir`); without one,
    the run gets a new time-stamped folder, linked from runs/latest once the first stage has started."""
    from . import distributed, interrupt, run_dir
    from .learner.trainer import GRPOTrainer

    policy = trainer = None
    try:
        root, stages = config_stages(args)  # every setting checked before the output folder is touched
        distributed.setup(stages[0].device)  # the ranks agree on a new folder's name
        fresh = not root and not args.resume
        if not root:
            root, stages = config_stages(args, str(run_dir.latest_run() if args.resume else run_dir.fresh_run_dir()))
        run_dir.prepare_output_dir(root, resume=bool(args.resume), overwrite=args.overwrite)
        for cfg in stages:
            if cfg.async_rollouts:  # rank 0 learns, the others roll out (`learner/async_grpo.py`)
                from .learner.async_grpo import train_async

                if fresh:
                    run_dir.link_latest(root)
                trainer, last = train_async(cfg, policy)
            else:
                trainer = GRPOTrainer(cfg, policy=policy)
                if fresh:
                    run_dir.link_latest(root)
                last = trainer.train()
            if getattr(trainer, "writer", None) is not None:  # rank 0: ends the stage's run in every tracker (W&B, Trackio)
                trainer.writer.close()
            policy = trainer.policy
            if interrupt.requested() is not None:
                break
            if distributed.is_main():
                print(json.dumps({"output_dir": cfg.output_dir,
                                  **{k: round(v, 4) for k, v in last.items() if k.startswith(("reward", "eval/", "accuracy"))}}))
        distributed.barrier()  # no rank tears gloo down while another still uses it (that aborts the process)
    finally:
        if trainer is not None:
            trainer.engine.close()  # vLLM tears the process groups down itself, and must do it first
        distributed.shutdown()


def cmd_sft(args: argparse.Namespace) -> None:
    """Checkpoints go to `output_dir/checkpoint-<step>` (resumable) and the final policy to `output_dir` itself."""
    from . import interrupt
    from .learner.checkpoint import latest_checkpoint
    from .learner.sft import demonstration_rows, jsonl_rows, train_sft
    from .policy import Policy
    from .run_dir import prepare_output_dir
    from .trackers import Trackers, parse_report_to

    parse_report_to(args.report_to)
    prepare_output_dir(args.output_dir, resume=args.resume, overwrite=args.overwrite)
    policy = Policy.from_pretrained(args.model, device=args.device)
    rows = jsonl_rows(args.data, policy.tokenizer) if args.data else demonstration_rows(
        args.env, range(SFT_SEED_BASE, SFT_SEED_BASE + args.seeds), policy.tokenizer, env_kwargs(args))
    with Trackers(args.output_dir, args.report_to, run_settings(args)) as writer:
        train_sft(policy, rows, steps=args.steps, lr=args.learning_rate, batch_size=args.batch_size, seed=args.seed, writer=writer,
                  output_dir=args.output_dir, save_every=args.save_every, keep=args.save_total_limit, resume=args.resume)
    if interrupt.requested() is not None:
        print(f"stopped by {interrupt.describe(interrupt.requested())}; {latest_checkpoint(args.output_dir)} saved; "
              "`--resume` continues the run", flush=True)
        return
    policy.save_pretrained(args.output_dir)
    print(f"saved the fine-tuned policy to {args.output_dir}")


def env_kwargs(args: argparse.Namespace) -> dict:
    """`--env-kwargs` as a dict, or a one-line error."""
    try:
        kwargs = json.loads(args.env_kwargs)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--env-kwargs must be a JSON object, e.g. '{{\"chunk_size\": 96}}'; got {args.env_kwargs!r}: {exc}") from None
    if not isinstance(kwargs, dict):
        raise ValueError(f"--env-kwargs must be a JSON object, e.g. '{{\"chunk_size\": 96}}'; got {args.env_kwargs!r}")
    return kwargs


def cmd_eval(args: argparse.Namespace) -> None:
    from . import interrupt
    from .evaluate import evaluate
    from .policy import Policy
    from .rollout.engine import make_engine

    if args.temperature == 0 and args.n != 1:
        raise ValueError(f"--n {args.n} at --temperature 0: greedy decoding gives one answer per problem; "
                         "give --n 1, or a --temperature above 0 for avg@n and pass@k")
    if args.temperature < 0 or args.n < 1 or args.seeds < 1:
        raise ValueError(f"--temperature must be >= 0, --n and --seeds >= 1; got {args.temperature}, {args.n}, {args.seeds}")
    policy = Policy.from_pretrained(args.model, device=args.device)
    with interrupt.abortable():  # Ctrl-C stops it at once: an evaluation holds nothing to save
        res = evaluate(make_engine(args.engine, policy, args.seed), args.env, range(args.seeds), n=args.n,
                       env_kwargs=json.loads(args.env_kwargs), temperature=args.temperature, progress="eval", out=args.out,
                       problem_seeds=args.problem_seeds)
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
    """Stage 1 (SFT on the positives, `--sft-steps`) checkpoints in `output_dir/sft`, stage 2 in `output_dir`
    itself; `--resume` continues whichever was cut short, skipping stage 1 once stage 2 has a checkpoint."""
    from . import interrupt
    from .evaluate import evaluate
    from .learner.checkpoint import latest_checkpoint
    from .methods.redi import build_redi_data, check_alpha, load_traces, train_redi
    from .learner.sft import train_sft
    from .policy import Policy
    from .rollout.engine import make_engine
    from .run_dir import prepare_output_dir
    from .trackers import Trackers, parse_report_to

    check_alpha(args.alpha)
    parse_report_to(args.report_to)
    prepare_output_dir(args.output_dir, resume=args.resume, overwrite=args.overwrite)
    policy = Policy.from_pretrained(args.model, device=args.device)
    data = build_redi_data(load_traces(args.data, policy.tokenizer), args.pairs_per_prompt or None)
    print(json.dumps(data.counts))
    with Trackers(args.output_dir, args.report_to, run_settings(args)) as writer:
        in_stage_2 = args.resume and latest_checkpoint(args.output_dir) is not None
        if args.sft_steps and not in_stage_2:  # stage 1: SFT on the positives, with a checkpoint at its end
            sft_dir = Path(args.output_dir) / "sft"
            train_sft(policy, [r for t in data.positives for r in t.rows], steps=args.sft_steps, lr=args.sft_learning_rate,
                      batch_size=args.batch_size, seed=args.seed, writer=writer, output_dir=sft_dir, save_every=args.sft_steps,
                      keep=1, resume=args.resume)
            if interrupt.requested() is not None:
                print(f"stopped by {interrupt.describe(interrupt.requested())} in stage 1 (SFT); {latest_checkpoint(sft_dir)} "
                      "saved; `--resume` continues the run", flush=True)
                return
        engine, kw = make_engine(args.engine, policy, args.seed), env_kwargs(args)
        hist = train_redi(policy, data.pairs, steps=args.steps, batch_size=args.batch_size, lr=args.learning_rate, alpha=args.alpha,
                          seed=args.seed, writer=writer, eval_every=args.eval_every, output_dir=args.output_dir,
                          save_every=args.save_every, keep=args.save_total_limit, resume=args.resume,
                          eval_fn=lambda: evaluate(engine, args.env, range(args.eval_prompts), env_kwargs=kw, temperature=0.0))
    if interrupt.requested() is not None:
        print(f"stopped by {interrupt.describe(interrupt.requested())}; {latest_checkpoint(args.output_dir)} saved; "
              "`--resume` continues the run", flush=True)
    elif hist:
        print(json.dumps({k: round(v, 4) for k, v in hist[-1].items()}))


def cmd_serve(args: argparse.Namespace) -> None:
    """Serve one env id over OpenEnv's protocol until interrupted (`thinkgym.envs.server`)."""
    try:
        from thinkgym.envs.server import serve
    except ImportError as exc:
        raise ValueError(f"thinkgym serve needs openenv-core (pip install 'thinkgym[serve]'): {exc}") from None
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535; got {args.port}")
    serve(args.env, env_kwargs(args), host=args.host, port=args.port, max_sessions=args.max_sessions,
          session_timeout=args.session_timeout)


def run_settings(args: argparse.Namespace) -> dict:
    """A command's flags, as the settings an experiment tracker records for the run."""
    return {k: v for k, v in vars(args).items() if k != "func"}


def build_parser(train_flags: bool = True) -> argparse.ArgumentParser:
    """Every command and flag. `train_flags=False` leaves out train's GRPOConfig flags, so that the other
    commands (their `--help` too) never load the learner's config."""
    p = argparse.ArgumentParser(prog="thinkgym", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)  # no prefixes: `--lr` must not become `--lr-scheduler`
    d = argparse.ArgumentDefaultsHelpFormatter
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="GRPO training (flags = GRPOConfig fields)", description="GRPO training; each flag is a GRPOConfig field",
                       allow_abbrev=False)
    t.add_argument("--config", help="YAML file of GRPOConfig fields")
    t.add_argument("--resume", dest="resume", action="store_const", const=True, default=None,
                   help="continue from output_dir's latest checkpoint (without --output-dir: the run runs/latest links to)")
    t.add_argument("--overwrite", action="store_true", help="delete the run already in output_dir and start afresh "
                   "(a fresh run refuses a folder that holds files)")
    if train_flags:
        add_config_flags(t)
    t.set_defaults(func=cmd_train)
    helps = {"sft": "SFT on an env's demonstrations or a jsonl of pairs", "eval": "held-out accuracy, or avg@n and pass@k, of a policy",
             "sample": "write a jsonl of sampled traces", "redi": "REDI on a jsonl of (prompt, response, correct)"}
    for name, func in (("sft", cmd_sft), ("eval", cmd_eval), ("sample", cmd_sample), ("redi", cmd_redi)):
        s = sub.add_parser(name, help=helps[name], description=helps[name], formatter_class=d, allow_abbrev=False)
        s.add_argument("--model", default="tiny", help="a local folder, a hub id, or `tiny` (the embedded default)")
        s.add_argument("--env", default="DelethinkDemo-v0", help="registered environment id")
        s.add_argument("--env-kwargs", default="{}", help="JSON keyword arguments for the environment")
        s.add_argument("--device", default=None, help="cuda or cpu; unset picks cuda where there is one")
        s.set_defaults(func=func)
    for name in ("eval", "sample", "redi"):
        sub.choices[name].add_argument("--engine", default="hf", help="rollout engine: hf or vllm")
    for name in ("sample", "redi", "sft"):
        sub.choices[name].add_argument("--seed", type=int, default=0, help="seeds the sampler (REDI's and SFT's batches)")
    for name in ("sft", "redi"):
        sub.choices[name].add_argument("--overwrite", action="store_true", help="delete the run already in --output-dir "
                                       "and start afresh (a fresh run refuses a folder that holds files)")
        sub.choices[name].add_argument("--resume", action="store_true", help="continue from --output-dir's latest checkpoint")
        sub.choices[name].add_argument("--report-to", default="tensorboard", metavar="TRACKER[,TRACKER]",
                                       help="where metrics go, named as TRL's report_to: tensorboard, wandb, trackio, or several "
                                            "comma-separated (wandb and trackio are not installed with thinkgym: pip install wandb)")
    s = sub.choices["sft"]
    s.add_argument("--data", help="jsonl of prompt/response pairs; unset trains on the env's demonstrations")
    s.add_argument("--seeds", type=int, default=400, help="demonstrations (env seeds) to train on")
    s.add_argument("--steps", type=int, default=300, help="optimizer steps")
    s.add_argument("--batch-size", type=int, default=32, help="rows per step")
    s.add_argument("--learning-rate", type=float, default=1e-3, help="AdamW learning rate (warm-up, then linear decay)")
    s.add_argument("--output-dir", required=True, help="where the fine-tuned policy is saved (from_pretrained loads it), "
                   "with TensorBoard logs and checkpoint-<step> folders")
    s.add_argument("--save-every", type=int, default=100, help="checkpoint every N steps, at the end and on Ctrl-C (0: only on Ctrl-C)")
    s.add_argument("--save-total-limit", type=int, default=3, help="keep the newest N checkpoints (0: all)")
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
    pl = sub.add_parser("plot", help="PNG curves from a run's TensorBoard logs", formatter_class=d, allow_abbrev=False,
                        description="PNG of a run's loss, entropy, grad norm, KL, clip fraction, reward and its components, "
                                    "accuracy, learning rate and length, smoothed, and of any --tags")
    pl.add_argument("run_dir", help="a run's output_dir")
    pl.add_argument("--out", help="PNG path (default: RUN_DIR/curves.png)")
    pl.add_argument("--smooth", type=float, default=0.6, help="EMA smoothing weight in [0, 1), as TensorBoard's; 0 draws raw values")
    pl.add_argument("--tags", default="", metavar="TAG,TAG",
                    help="more scalar tags to draw, one panel each, comma-separated: names or shell patterns ('time/*,reward_std')")
    pl.set_defaults(func=cmd_plot)
    sv = sub.add_parser("serve", help="serve an environment over OpenEnv's protocol (HTTP and WebSocket)", formatter_class=d,
                        allow_abbrev=False, description="An OpenEnv server (openenv-core) for one env id: each WebSocket session "
                        "(/ws) gets its own environment; clients: OpenEnv's EnvClient, or gym.make('thinkgym/Remote-v0', url=...)")
    sv.add_argument("--env", default="DelethinkDemo-v0", help="registered environment id to serve")
    sv.add_argument("--env-kwargs", default="{}", help="JSON keyword arguments for every session's environment")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface; see the README's warning)")
    sv.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    sv.add_argument("--max-sessions", type=int, default=256, help="most sessions open at once; one more is refused (CAPACITY_REACHED)")
    sv.add_argument("--session-timeout", type=float, default=None, help="close a session idle this many seconds (unset: never)")
    sv.set_defaults(func=cmd_serve)
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
    r.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps, at the end and on Ctrl-C (0: only at the "
                   "end and on Ctrl-C)")
    r.add_argument("--save-total-limit", type=int, default=3, help="keep the newest N stage-2 checkpoints (0: all)")
    return p


STOPPABLE = ("train", "sft", "redi", "eval")  # the long commands, which stop cleanly on Ctrl-C (`interrupt`)


def main(argv: Sequence[str] | None = None) -> None:
    """Run one command. A bad setting is a one-line error (exit 1). In the long commands the first Ctrl-C or
    SIGTERM stops the command at its next safe point, after it has saved what a resume needs; a second exits
    at once. Either way the exit status is the shell's for the signal: 130 (SIGINT), 143 (SIGTERM)."""
    from . import interrupt

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(train_flags=not argv or argv[0] == "train").parse_args(argv)
    with interrupt.stop_on_signal() if args.command in STOPPABLE else contextlib.nullcontext():
        try:
            args.func(args)
        except ValueError as exc:
            sys.exit(f"thinkgym {args.command}: error: {' '.join(str(exc).split())}")
        except interrupt.Interrupted:
            print(f"thinkgym {args.command}: stopped by {interrupt.describe(interrupt.requested())}; nothing to save", flush=True)
        stopped = interrupt.requested()
    if stopped is not None:
        sys.exit(interrupt.exit_code(stopped))


if __name__ == "__main__":
    main()
