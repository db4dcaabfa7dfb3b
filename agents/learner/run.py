"""The run around GRPO steps: the loop, checkpoints, stop signals, the warm start, held-out evaluation and
logging. `GRPOTrainer` (`trainer.py`, the step) is a `GRPORun`; `train()` here calls its `train_step()`.

A run starts from checkpoint-0 (the weights RL starts from, after an optional warm start), saves every
`save_every` steps and at the end, evaluates every `eval_every` steps, and stops at the next safe point on
SIGINT/SIGTERM with a checkpoint that `resume` continues exactly (`interrupt`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from .. import distributed, interrupt, lora, run_dir
from ..evaluate import PosedProblems, evaluate
from ..policy import Policy
from ..trackers import Trackers
from ..types import SFT_GATE_SEED_BASE, SFT_SEED_BASE, Episode
from .checkpoint import SHARDED, checkpoint_path, latest_checkpoint, load_trainer_state, rng_state, save_checkpoint, set_rng_state
from .config import GRPOConfig
from .sft import demonstration_rows, train_sft

if TYPE_CHECKING:
    from .trainer import GRPOTrainer


def with_output_dir(cfg: GRPOConfig) -> tuple[GRPOConfig, bool]:
    """`cfg` with its run folder: the one given, the latest run's when resuming, or a fresh time-stamped one
    (then True: it is linked from runs/latest once the run starts)."""
    if cfg.output_dir:
        return cfg, False
    if cfg.resume:
        return dataclasses.replace(cfg, output_dir=str(run_dir.latest_run())), False
    return dataclasses.replace(cfg, output_dir=str(run_dir.fresh_run_dir())), True


class GRPORun:
    """The run-level half of `GRPOTrainer`: what happens between and around its steps."""

    def start_run(self: GRPOTrainer, fresh: bool) -> None:
        """The run's own state: its TensorBoard writer (rank 0), warm-start flags and pending evaluation."""
        self.writer = Trackers(self.cfg.output_dir, self.cfg.report_to, self.cfg.to_dict()) if self.world.is_main else None
        if fresh:
            run_dir.link_latest(self.cfg.output_dir)
        self.warm_started = False
        self.warm_start_report: dict[str, Any] | None = None
        self.last_episode: Episode | None = None
        self.last_scores: tuple[float, dict[str, float]] = (0.0, {})
        self._posed: PosedProblems | None = None  # built on the first logged sample
        self.eval_pending = False  # the current step's held-out evaluation is still to run (saved with the checkpoint)

    def log(self: GRPOTrainer, metrics: dict[str, float], step: int) -> None:
        """Write the finite numbers of `metrics` to TensorBoard at `step` (rank 0 only)."""
        if self.writer is None:  # not rank 0
            return
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def run_eval(self: GRPOTrainer, step: int) -> dict[str, float]:
        """Held-out evaluation, its seeds shared among the ranks; every metric is a mean over prompts. Greedy
        (`eval_temperature=0`) logs `eval/accuracy`; sampling adds `eval/avg@n` and `eval/pass@k` for k <= n."""
        cfg = self.cfg
        seeds = distributed.shard(range(cfg.eval_prompts))
        rng = rng_state(self.engine)
        try:  # a stop signal ends it at once with one process; ranks wait for each other in its collectives
            with interrupt.abortable(self.world.size == 1):
                res = evaluate(self.engine, cfg.env, seeds, n=cfg.eval_samples, env_kwargs=cfg.env_kwargs,
                               temperature=cfg.eval_temperature) if seeds else {}  # pass@k only when sampling
        except interrupt.Interrupted:  # rewind its sampling, so that a resume runs it again and continues exactly
            set_rng_state(rng, self.engine)
            self.eval_pending = True
            return {}
        self.eval_pending = False
        res = distributed.global_means({k: (v * len(seeds), float(len(seeds))) for k, v in res.items()})
        self.log({f"eval/{k}": v for k, v in res.items()}, step)
        return res

    def state(self: GRPOTrainer) -> dict[str, Any]:
        """The trainer's state; `ranks` holds every rank's RNGs, shuffle and environment state (a collective)."""
        mine = {"rng": rng_state(self.engine), "shuffle": self._shuffle.bit_generator.state,
                "env": self.collector.env_state()}
        return {"step": self.step, "optimizer": None if self.sharded else self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "ranks": distributed.gather(mine), "reward": self.reward.state_dict() if self.reward is not None else None,
                "nonfinite": (self.nonfinite_streak, self.nonfinite_total), "eval_pending": self.eval_pending, "config": self.cfg.to_dict()}

    def save(self: GRPOTrainer) -> None:
        """Rank 0 writes the policy (a LoRA policy: its adapter) and the trainer state; under FSDP every rank
        first writes its shards of the fp32 weights and the optimizer into `sharded/` (DCP)."""
        state = self.state()
        if self.sharded:
            distributed.save_sharded(checkpoint_path(self.cfg.output_dir, self.step) / SHARDED, self.model, self.opt)
        if self.world.is_main:
            save_checkpoint(self.cfg.output_dir, self.step, self.policy, state, keep=self.cfg.save_total_limit)
        distributed.barrier()  # no rank goes on (or exits) before the checkpoint is written

    def load(self: GRPOTrainer) -> bool:
        """Continue from the latest checkpoint of `output_dir`, exactly (weights, optimizer, schedules, RNGs, reward
        and environment state); False where there is none."""
        path = latest_checkpoint(self.cfg.output_dir)
        if path is None:
            return False
        if (path / SHARDED).exists() != self.sharded:
            written = "parallelism='fsdp' under torchrun" if (path / SHARDED).exists() else "parallelism='ddp' or one process"
            raise ValueError(f"{path} was written with {written}; resume it the same way (this run has parallelism="
                             f"{self.cfg.parallelism!r} on {self.world.size} processes)")
        st = load_trainer_state(path)
        start = checkpoint_path(self.cfg.output_dir, 0) / "policy"
        if self.ref_model is not None and start.exists():  # RL's starting weights, warm-started or not
            self.set_reference(Policy.from_pretrained(str(start), device=str(self.policy.device), dtype=self.policy.dtype).model)
        if self.sharded:  # the fp32 shards and optimizer, resharded to this many ranks, then the rollout copy
            distributed.load_sharded(path / SHARDED, self.model, self.opt)
            distributed.gather_into(self.model, self.policy.model)
        else:
            if self.cfg.use_peft:
                lora.load_adapter(self.model, path / "policy")
            else:
                loaded = Policy.from_pretrained(str(path / "policy"), device=str(self.policy.device), dtype=self.policy.dtype)
                self.model.load_state_dict(loaded.model.state_dict())
            self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        # checkpoints written before data parallelism hold one process's state at the top level
        per_rank = st.get("ranks") or [{"rng": st["rng"], "shuffle": st["shuffle"], "env": st.get("env")}]
        if len(per_rank) == self.world.size:
            mine = per_rank[self.world.rank]
            set_rng_state(mine["rng"], self.engine)
            self._shuffle.bit_generator.state = mine["shuffle"]
        else:
            mine = per_rank[0]
            warnings.warn(f"{path} was written by {len(per_rank)} processes and is resumed by {self.world.size}: the weights, optimizer, "
                          "schedules and reward state continue, the sampling RNGs restart from the seed", stacklevel=2)
        if self.reward is not None and st.get("reward") is not None:
            self.reward.load_state_dict(st["reward"])
        self.collector.load_env_state(mine["env"])
        self.nonfinite_streak, self.nonfinite_total = st["nonfinite"]
        self.step = st["step"]
        self.eval_pending = st.get("eval_pending", False)
        self.engine.sync_weights()
        return True

    @property
    def warm_start_dir(self: GRPOTrainer) -> Path:
        """Where a warm start cut short by a stop signal leaves its checkpoint, which `resume` continues."""
        return Path(self.cfg.output_dir) / "warm_start"

    def warm_start(self: GRPOTrainer) -> None:
        """SFT on the task's demonstrations (`sft_steps`), once: a second call refuses, since RL's
        starting point would silently move. A stop signal ends it early, leaving `warm_started` False and
        a checkpoint in `warm_start_dir`; with `resume` it continues from there."""
        if self.warm_started:
            raise RuntimeError("this trainer has already warm-started; a second SFT pass would move RL's starting point")
        cfg = self.cfg
        seeds = range(SFT_SEED_BASE, SFT_SEED_BASE + cfg.sft_seeds)
        rows = [row for env_id, kw in self.warm_start_envs.items() for row in demonstration_rows(env_id, seeds, self.policy.tokenizer, kw)]
        done, cap, accuracy, accuracies = 0, cfg.sft_max_steps or cfg.sft_steps, None, None
        for rnd in itertools.count():  # one round without a gate; with one, rounds until it passes or the cap
            steps = cfg.sft_steps if rnd == 0 else min(cfg.sft_gate_round, cap - done)
            out = self.warm_start_dir if rnd == 0 else self.warm_start_dir / f"round-{rnd}"
            lr = cfg.sft_learning_rate if rnd == 0 else cfg.sft_gate_learning_rate or cfg.sft_learning_rate / 2
            train_sft(self.policy, rows, steps=steps, lr=lr, seed=cfg.seed + rnd, writer=self.writer,
                      progress=self.world.is_main, output_dir=out, keep=1, resume=cfg.resume, first_step=done)
            if distributed.any_rank(interrupt.requested() is not None):  # stopped, on every rank: its checkpoint is in
                return                                                     # warm_start_dir, for resume
            done += steps
            distributed.broadcast_module(self.policy.model)  # every rank ran the same SFT; rank 0's result is the one kept
            if self.sharded:
                distributed.load_whole(self.model, self.policy.model)
            self.engine.sync_weights()
            if not cfg.sft_gate:
                break
            accuracies = {env_id: self.gate_accuracy(env_id, kw) for env_id, kw in self.warm_start_envs.items()}
            accuracy = min(accuracies.values())  # the gate passes when every format does
            self.log({"sft/gate_accuracy": accuracy, **{f"sft/gate_accuracy/{k}": v for k, v in accuracies.items()}}, done)
            if accuracy >= cfg.sft_gate or done >= cap:
                break
        self.set_reference(self.policy.model)
        passed = None if accuracy is None else accuracy >= cfg.sft_gate
        self.warm_start_report = {"sft_steps": done, "gate": cfg.sft_gate, "gate_prompts": cfg.sft_gate_prompts,
                                  "gate_accuracy": accuracy, "gate_accuracies": accuracies, "passed": passed}
        if self.world.is_main:
            Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
            (Path(cfg.output_dir) / "warm_start.json").write_text(json.dumps(self.warm_start_report, indent=1))
            if passed is not None:
                each = f" (the least of {', '.join(f'{k} {v:.3f}' for k, v in accuracies.items())})" if len(accuracies) > 1 else ""
                print(f"warm start {'passed' if passed else 'did NOT pass'} its gate: greedy accuracy {accuracy:.3f}{each} on "
                      f"{cfg.sft_gate_prompts} validation problems {'>=' if passed else '<'} {cfg.sft_gate} after {done} SFT steps"
                      + ("" if passed else f" (the cap, sft_max_steps={cap})"), flush=True)
        self.warm_started = True

    def set_reference(self: GRPOTrainer, source: torch.nn.Module) -> None:
        """The KL reference is the policy RL starts from (checkpoint-0): after a warm start, its weights."""
        if self.ref_model is None:
            return
        if self.sharded:
            distributed.load_whole(self.ref_model, source)
        else:
            self.ref_model.load_state_dict(source.state_dict())

    @property
    def warm_start_envs(self: GRPOTrainer) -> dict[str, dict[str, Any]]:
        """The formats the warm start trains on and gates: the run's env, then `sft_extra_envs`."""
        return {self.cfg.env: self.cfg.env_kwargs, **self.cfg.sft_extra_envs}

    def gate_accuracy(self: GRPOTrainer, env_id: str, env_kwargs: dict[str, Any]) -> float:
        """Greedy accuracy in `env_id` on the warm-start gate's validation problems (their own seed range), shared among ranks."""
        seeds = distributed.shard(range(SFT_GATE_SEED_BASE, SFT_GATE_SEED_BASE + self.cfg.sft_gate_prompts))
        acc = evaluate(self.engine, env_id, seeds, n=1, temperature=0.0, env_kwargs=env_kwargs)["accuracy"] if seeds else 0.0
        return distributed.global_means({"acc": (acc * len(seeds), float(len(seeds)))})["acc"]

    def train(self: GRPOTrainer) -> dict[str, float]:
        """Run to `steps` (or resume there). The first SIGINT/SIGTERM stops it at the next safe point, with a
        checkpoint to resume from (`interrupt`); a second exits at once. Returns the last step's metrics."""
        with interrupt.stop_on_signal():
            return self._run()

    def _run(self: GRPOTrainer) -> dict[str, float]:
        cfg = self.cfg
        resumed = cfg.resume and self.load()
        if cfg.resume and not resumed and self.world.is_main and not self.warm_start_dir.exists():
            warnings.warn(f"resume: no checkpoint in {cfg.output_dir}; starting a fresh run", stacklevel=3)
        if not resumed:
            if cfg.sft_steps and not self.warm_started:
                self.warm_start()
                if not self.warm_started:
                    self._report_stop(f"during the warm start; its checkpoint is in {self.warm_start_dir}")
                    return {}
            self.eval_pending = bool(cfg.eval_every)
            self.save()  # checkpoint-0: exactly the weights RL starts from, for before/after comparisons
            if self.world.is_main and self.warm_start_dir.exists():
                shutil.rmtree(self.warm_start_dir)  # an interrupted warm start's checkpoint: checkpoint-0 supersedes it
        last: dict[str, float] = {}
        try:
            if self.eval_pending:
                self.run_eval(self.step)
            bar = tqdm(range(self.step, cfg.steps), initial=self.step, total=cfg.steps, desc="grpo", dynamic_ncols=True,
                       disable=not self.world.is_main)
            for _ in bar:
                if distributed.any_rank(interrupt.requested() is not None):  # stopped in the evaluation before this step
                    self._report_stop(f"before step {self.step + 1}; checkpoint-{self.step} in {cfg.output_dir} resumes here")
                    break
                last = self.train_step()
                self.step += 1
                self.log(last, self.step)
                bar.set_postfix(reward=f"{last['reward']:.3f}", len=f"{last['completions/mean_length']:.0f}")
                if self.writer is not None and self.last_episode is not None and cfg.log_completions_every \
                        and self.step % cfg.log_completions_every == 0:
                    self.writer.add_text("completions", self._sample_text(), self.step)
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    last.update({f"eval/{k}": v for k, v in self.run_eval(self.step).items()})
                stop = distributed.any_rank(interrupt.requested() is not None)  # ranks stop at the same step
                if stop or (cfg.save_every and self.step % cfg.save_every == 0) or self.step == cfg.steps:
                    self.save()
                if stop:
                    self._report_stop(f"at step {self.step}; checkpoint-{self.step} saved in {cfg.output_dir}")
                    break
            if cfg.eval_every and self.step == cfg.steps and self.step % cfg.eval_every:  # the run ends on a held-out number
                last.update({f"eval/{k}": v for k, v in self.run_eval(self.step).items()})
        finally:
            if self.writer is not None:
                self.writer.flush()
        return last

    def _report_stop(self: GRPOTrainer, where: str) -> None:
        if self.world.is_main:
            name = interrupt.describe(interrupt.requested()) if interrupt.requested() is not None else "a signal"
            print(f"stopped by {name} {where}; `--resume` continues the run", flush=True)

    def _sample_text(self: GRPOTrainer) -> str:
        """A rollout of the step as TensorBoard markdown: the prompt, the gold answer, the completion (its
        chunks split by `---`), the parsed answer and the reward it was trained on with its components."""
        ep = self.last_episode
        tok = self.policy.tokenizer
        if self._posed is None:
            self._posed = PosedProblems(self.cfg.env, self.collector.env_kwargs)
        _, gold = self._posed(ep.seed, ep.steps[0].prompt_ids)
        prompt = tok.decode(ep.steps[0].prompt_ids, skip_special_tokens=False)
        text = "\n---\n".join(tok.decode(s.action_ids, skip_special_tokens=False) for s in ep.steps)
        reward, comps = self.last_scores
        comps = ", ".join(f"{k} {v:g}" for k, v in comps.items())
        return (f"seed {ep.seed}, reward {reward:g} ({comps or 'no components'}), correct {bool(ep.info.get('correct'))}\n\n"
                f"**prompt**\n\n```\n{prompt}\n```\n\n**gold answer** `{gold}`, **parsed answer** `{ep.info.get('answer')}`\n\n"
                f"**completion**\n\n```\n{text}\n```")

