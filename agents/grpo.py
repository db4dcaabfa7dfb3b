"""The GRPO learner: collect groups of episodes, score them, and update the policy.

One step is: sample `prompts_per_step` seeds, run `num_generations` episodes of each through the
environment (`Collector`), turn rewards into group-relative advantages that every row of a
rollout shares, then take `num_iterations × minibatches` clipped-surrogate optimizer steps whose
normalisation (`loss_type`) spans the whole optimizer step. Read `train_step` top to bottom.
"""

from __future__ import annotations

import copy
import math
import signal
import time
from typing import Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from thinkgym.rewards import Sample, parse_reward_spec

from .advantages import get_advantage, mgpo_weight
from .checkpoint import latest_checkpoint, load_trainer_state, rng_state, save_checkpoint, set_rng_state
from .collector import Batch, Collector, Row
from .config import GRPOConfig
from .evaluate import evaluate
from .logprobs import completion_logprobs, pad_rows
from .losses import get_policy_loss, k3_kl, row_stats, sequence_surrogate, token_surrogate
from .policy import Policy
from .sft import demonstration_rows, train_sft

TRAIN_SEED_BASE, SFT_SEED_BASE = 10_000_000, 1_000_000  # eval uses seeds 0..eval_prompts-1


def make_engine(name: str, policy: Policy, seed: int):
    """A rollout engine by name."""
    if name == "hf":
        from .hf_engine import HFEngine

        return HFEngine(policy, seed=seed)
    if name == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine(policy, seed=seed)
    raise ValueError(f"engine={name!r} is unknown; valid engines: ['hf', 'vllm']")


class NonFiniteLossError(RuntimeError):
    pass


class GRPOTrainer:
    def __init__(self, cfg: GRPOConfig, policy: Policy | None = None):
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.policy = policy or Policy.from_pretrained(cfg.model, device=cfg.device)
        self.engine = make_engine(cfg.engine, self.policy, cfg.seed)
        self.model = self.policy.model
        self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False) if cfg.beta > 0 else None
        fused = self.policy.device.type == "cuda"
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=fused)
        total = cfg.steps * cfg.num_iterations * cfg.minibatches
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: self._lr_factor(s, total))
        self.loss = get_policy_loss(cfg.loss_type)
        self.advantage = get_advantage(cfg.advantage_estimator)
        self.reward = parse_reward_spec(cfg.reward, cfg.reward_params) if cfg.reward else None
        self.siri = None
        if cfg.siri:
            from thinkgym.rewards import SiriSchedule

            self.siri = SiriSchedule(**cfg.siri)
        self.collector = Collector(cfg.env, self.engine, cfg.env_kwargs, cfg.num_generations, cfg.temperature, cfg.top_p)
        self.writer = SummaryWriter(cfg.output_dir)
        self.step, self.nonfinite_streak, self.nonfinite_total = 0, 0, 0
        self._stop_requested = False
        self._shuffle = np.random.default_rng(cfg.seed)

    # -- schedules --------------------------------------------------------------------------------
    def _lr_factor(self, s: int, total: int) -> float:
        if s < self.cfg.warmup_steps:
            return (s + 1) / self.cfg.warmup_steps
        frac = (s - self.cfg.warmup_steps) / max(1, total - self.cfg.warmup_steps)
        return {"constant": 1.0, "linear": 1.0 - frac, "cosine": 0.5 * (1 + math.cos(math.pi * frac))}[self.cfg.lr_scheduler]

    def train_seeds(self, step: int, round_: int = 0) -> list[int]:
        P = self.cfg.prompts_per_step
        base = TRAIN_SEED_BASE + (step * (self.cfg.max_resample_rounds + 1) + round_) * P
        return list(range(base, base + P))

    # -- one step ---------------------------------------------------------------------------------
    def score(self, batch: Batch) -> tuple[np.ndarray, dict[str, list[float]], list[Sample]]:
        """Rewards per episode: the env's own, or the configured reward spec over the episodes."""
        eps = batch.episodes
        if self.reward is None:
            comps: dict[str, list[float]] = {}
            for ep in eps:
                for k, v in ep.info.get("reward_components", {}).items():
                    comps.setdefault(k, []).append(float(v))
            return np.array([ep.reward for ep in eps], dtype=float), comps, []
        tok = self.policy.tokenizer
        samples = [Sample(text=tok.decode([t for s in ep.steps for t in s.action_ids], skip_special_tokens=False),
                          num_tokens=ep.num_tokens, prompt_id=ep.seed, correct=ep.info.get("correct"),
                          finished=ep.terminated) for ep in eps]
        out = self.reward.compute(samples)
        return np.array(out.total, dtype=float), out.components, samples

    def collect_step(self) -> tuple[Batch, np.ndarray, dict[str, list[float]], list[Sample], float]:
        """Collect the step's groups; with dynamic sampling keep only groups with reward variance."""
        G, P = self.cfg.num_generations, self.cfg.prompts_per_step
        if self.siri is not None:  # SIRI: this step's length budget becomes the environments' own
            self.collector.set_thinking_budget(int(self.siri(self.step)))
        batch = self.collector.collect(self.train_seeds(self.step))
        rewards, comps, samples = self.score(batch)
        if not self.cfg.dynamic_sampling:
            return batch, rewards, comps, samples, 0.0
        kept: list[int] = []
        pool_eps, pool_rows, pool_r, pool_s, pool_c = [], [], [], [], {}
        for round_ in range(self.cfg.max_resample_rounds + 1):
            if round_:
                batch = self.collector.collect(self.train_seeds(self.step, round_))
                rewards, comps, samples = self.score(batch)
            grouped = rewards.reshape(-1, G)
            for g in np.flatnonzero(grouped.std(axis=1) > 0):
                if len(kept) >= P:
                    break
                offset = len(pool_eps)
                idx = range(g * G, (g + 1) * G)
                pool_eps += [batch.episodes[i] for i in idx]
                pool_rows += [Row(r.input_ids, r.prompt_len, r.loss_mask, r.old_logprobs, offset + r.episode - g * G)
                              for r in batch.rows if g * G <= r.episode < (g + 1) * G]
                pool_r += [rewards[i] for i in idx]
                pool_s += [samples[i] for i in idx] if samples else []
                for k, v in comps.items():
                    pool_c.setdefault(k, []).extend(v[i] for i in idx)
                kept.append(g)
            if len(kept) >= P:
                break
        if not kept:  # nothing to learn from: keep the last batch, its advantages are all zero
            return batch, rewards, comps, samples, 1.0
        return Batch(pool_eps, pool_rows, batch.stats), np.array(pool_r), pool_c, pool_s, 1.0 - len(kept) / P

    def train_step(self) -> dict[str, float]:
        cfg, G = self.cfg, self.cfg.num_generations
        t_step = time.perf_counter()
        batch, rewards, comps, samples, dropped = self.collect_step()
        self.last_episode = batch.episodes[0]
        if self.reward is not None:
            self.reward.update(samples)  # stateful rewards (HAPO, LASER-D) move once per step
        grouped = rewards.reshape(-1, G)
        adv = self.advantage(grouped, scale_rewards=cfg.scale_rewards) if cfg.advantage_estimator == "grpo" else self.advantage(grouped)
        if cfg.mgpo_lambda > 0:
            acc = np.array([ep.info.get("correct", False) for ep in batch.episodes], dtype=float).reshape(-1, G).mean(1)
            adv = adv * mgpo_weight(acc, cfg.mgpo_lambda)[:, None]
        adv = adv.reshape(-1)
        rows = batch.rows
        if cfg.mask_truncated_completions:
            for r in rows:
                if batch.episodes[r.episode].truncated:
                    r.loss_mask = [0] * len(r.loss_mask)
        t_train = time.perf_counter()
        metrics = self.optimize(rows, adv)
        train_time = time.perf_counter() - t_train
        metrics.update(self.episode_metrics(batch, rewards, comps))
        metrics.update({"frac_groups_dropped": dropped, "time/train_s": train_time, "time/step_s": time.perf_counter() - t_step,
                        "train_tokens_per_s": sum(len(r.input_ids) for r in rows) * cfg.num_iterations / max(train_time, 1e-9),
                        **{k: v for k, v in batch.stats.items() if k.startswith(("time/", "rollout_tokens", "env_tokens"))}})
        self.engine.sync_weights()
        return metrics

    def optimize(self, rows: list[Row], adv: np.ndarray) -> dict[str, float]:
        cfg = self.cfg
        ep_len: dict[int, int] = {}
        for r in rows:
            ep_len[r.episode] = ep_len.get(r.episode, 0) + sum(r.loss_mask)
        max_len = cfg.max_completion_length or max((len(r.loss_mask) for r in rows), default=1)
        tis = self._engine_correction(rows) if cfg.engine != "hf" else None
        sums = {"loss": 0.0, "clip_ratio/low_mean": 0.0, "clip_ratio/high_mean": 0.0, "entropy": 0.0, "kl": 0.0, "grad_norm": 0.0}
        n_updates, n_tok = 0, 0
        self.model.train()
        for _ in range(cfg.num_iterations):
            order = self._shuffle.permutation(len(rows))
            for mb in np.array_split(order, cfg.minibatches):
                mb_rows = [rows[i] for i in mb]
                if not mb_rows:
                    continue
                weights = self.loss.row_weights(row_stats(mb_rows, ep_len, max_len))
                self.opt.zero_grad(set_to_none=True)
                step_loss = 0.0
                for start in range(0, len(mb_rows), cfg.micro_batch_size):
                    idx = list(range(start, min(start + cfg.micro_batch_size, len(mb_rows))))
                    micro = [mb_rows[i] for i in idx]
                    rb = pad_rows(micro, self.policy.tokenizer.pad_token_id, self.policy.device)
                    logp, ent = completion_logprobs(self.model, rb, cfg.temperature, with_entropy=True,
                                                    entropy_grad=cfg.entropy_coef > 0)
                    a = torch.tensor([adv[r.episode] for r in micro], device=logp.device, dtype=logp.dtype)
                    surrogate = sequence_surrogate if self.loss.sequence_level else token_surrogate
                    args = (logp, rb.old_logprobs, a, rb.loss_mask, cfg.epsilon, cfg.epsilon_high) if self.loss.sequence_level \
                        else (logp, rb.old_logprobs, a, cfg.epsilon, cfg.epsilon_high)
                    per_tok, low, high = surrogate(*args)
                    if tis is not None:
                        per_tok = per_tok * pad_rows_like(tis, [mb[i] for i in idx], logp)
                    if self.ref_model is not None:
                        with torch.no_grad():
                            ref_logp, _ = completion_logprobs(self.ref_model, rb, cfg.temperature)
                        kl = k3_kl(logp, ref_logp)
                        per_tok = per_tok + cfg.beta * kl
                        sums["kl"] += float((kl * rb.loss_mask).sum())
                    if cfg.entropy_coef:
                        per_tok = per_tok - cfg.entropy_coef * ent
                    w = torch.tensor([weights[i] for i in idx], device=logp.device, dtype=logp.dtype).unsqueeze(1)
                    loss = (per_tok * rb.loss_mask * w).sum()
                    loss.backward()
                    step_loss += loss.item()
                    m = rb.loss_mask
                    n_tok += int(m.sum())
                    sums["clip_ratio/low_mean"] += float((low * m).sum())
                    sums["clip_ratio/high_mean"] += float((high * m).sum())
                    sums["entropy"] += float((ent.detach() * m).sum())
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                if not (math.isfinite(step_loss) and torch.isfinite(grad_norm)):
                    self.opt.zero_grad(set_to_none=True)
                    self.nonfinite_streak += 1
                    self.nonfinite_total += 1
                    if self.nonfinite_streak >= cfg.max_nonfinite_steps:
                        raise NonFiniteLossError(f"{self.nonfinite_streak} optimizer steps in a row had a NaN/inf loss or gradient; "
                                                 "stopping (lower learning_rate, or check the rewards for NaN)")
                    continue
                self.nonfinite_streak = 0
                self.opt.step()
                self.sched.step()
                sums["loss"] += step_loss
                sums["grad_norm"] += float(grad_norm)
                n_updates += 1
        self.model.eval()
        out = {k: v / max(n_tok, 1) for k, v in sums.items() if k not in ("loss", "grad_norm")}
        out.update(loss=sums["loss"] / max(n_updates, 1), grad_norm=sums["grad_norm"] / max(n_updates, 1),
                   learning_rate=self.sched.get_last_lr()[0], nonfinite_skipped=float(self.nonfinite_total))
        out["clip_ratio/region_mean"] = out["clip_ratio/low_mean"] + out["clip_ratio/high_mean"]
        if self.ref_model is None:
            out.pop("kl")
        return out

    def _engine_correction(self, rows: list[Row]) -> list[torch.Tensor]:
        """Truncated importance sampling: the trainer recomputes old log-probs (used for the ratio) and
        each token is weighted by min(π_trainer_old / π_engine, tis_cap)."""
        weights = []
        with torch.no_grad():
            for start in range(0, len(rows), self.cfg.micro_batch_size):
                micro = rows[start:start + self.cfg.micro_batch_size]
                rb = pad_rows(micro, self.policy.tokenizer.pad_token_id, self.policy.device)
                logp, _ = completion_logprobs(self.model, rb, self.cfg.temperature)
                w = torch.clamp(torch.exp(logp - rb.old_logprobs), max=self.cfg.tis_cap)
                for i, r in enumerate(micro):
                    n = r.completion_len
                    weights.append(w[i, :n].cpu())
                    r.old_logprobs = logp[i, :n].tolist()
        return weights

    # -- logging ----------------------------------------------------------------------------------
    def episode_metrics(self, batch: Batch, rewards: np.ndarray, comps: dict[str, list[float]]) -> dict[str, float]:
        G = self.cfg.num_generations
        grouped = rewards.reshape(-1, G)
        eps = batch.episodes
        out = {"reward": float(rewards.mean()), "reward_std": float(grouped.std(axis=1).mean()),
               "frac_reward_zero_std": float((grouped.std(axis=1) == 0).mean()),
               "completions/mean_length": float(np.mean([ep.num_tokens for ep in eps])),
               "completions/clipped_ratio": float(np.mean([ep.truncated for ep in eps])),
               "accuracy": float(np.mean([bool(ep.info.get("correct")) for ep in eps]))}
        out.update({f"rewards/{k}/mean": float(np.mean(v)) for k, v in comps.items()})
        if "chunks" in eps[0].info:
            out["delethink/chunks_mean"] = float(np.mean([ep.info["chunks"] for ep in eps]))
            out["delethink/thinking_tokens_mean"] = float(np.mean([ep.info.get("thinking_tokens", 0) for ep in eps]))
        by_level: dict[str, list[float]] = {}
        for ep in eps:
            for knob, value in ep.info.get("difficulty", {}).items():
                by_level.setdefault(f"success_by_difficulty/{knob}={value}", []).append(float(bool(ep.info.get("correct"))))
            if "curriculum" in ep.info:
                by_level.setdefault("curriculum/level", []).append(float(ep.info["curriculum"]["level"]))
        out.update({k: float(np.mean(v)) for k, v in by_level.items()})
        if self.reward is not None:
            out.update({f"rewards/{k}": v for k, v in self.reward.metrics().items()})
        return out

    def log(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def run_eval(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        res = evaluate(self.engine, cfg.env, range(cfg.eval_prompts), n=cfg.eval_samples, env_kwargs=cfg.env_kwargs,
                       temperature=cfg.eval_temperature, ks=sorted({1, cfg.eval_samples}))
        self.log({f"eval/{k}": v for k, v in res.items()}, step)
        return res

    # -- checkpoints ------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"step": self.step, "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "rng": rng_state(getattr(self.engine, "generator", None)), "shuffle": self._shuffle.bit_generator.state,
                "reward": self.reward.state_dict() if self.reward is not None else None, "env": self.collector.env_state(),
                "nonfinite": (self.nonfinite_streak, self.nonfinite_total), "config": self.cfg.to_dict()}

    def save(self) -> None:
        save_checkpoint(self.cfg.output_dir, self.step, self.policy, self.state())

    def load(self) -> bool:
        path = latest_checkpoint(self.cfg.output_dir)
        if path is None:
            return False
        loaded = Policy.from_pretrained(str(path / "policy"), device=str(self.policy.device), dtype=self.policy.dtype)
        self.model.load_state_dict(loaded.model.state_dict())
        st = load_trainer_state(path)
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        set_rng_state(st["rng"], getattr(self.engine, "generator", None))
        self._shuffle.bit_generator.state = st["shuffle"]
        if self.reward is not None and st.get("reward") is not None:
            self.reward.load_state_dict(st["reward"])
        self.collector.load_env_state(st.get("env"))
        self.nonfinite_streak, self.nonfinite_total = st["nonfinite"]
        self.step = st["step"]
        self.engine.sync_weights()
        return True

    # -- the run ----------------------------------------------------------------------------------
    def warm_start(self) -> None:
        cfg = self.cfg
        seeds = range(SFT_SEED_BASE, SFT_SEED_BASE + cfg.sft_seeds)
        rows = demonstration_rows(cfg.env, seeds, self.policy.tokenizer, cfg.env_kwargs)
        train_sft(self.policy, rows, steps=cfg.sft_steps, lr=cfg.sft_learning_rate, seed=cfg.seed, writer=self.writer, log_every=0)
        self.engine.sync_weights()

    def _request_stop(self, signum, frame) -> None:
        self._stop_requested = True

    def train(self) -> dict[str, float]:
        cfg = self.cfg
        resumed = cfg.resume and self.load()
        if not resumed and cfg.sft_steps:
            self.warm_start()
        old = {s: signal.signal(s, self._request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        last: dict[str, float] = {}
        try:
            if cfg.eval_every and not resumed:
                self.run_eval(self.step)
            bar = tqdm(range(self.step, cfg.steps), initial=self.step, total=cfg.steps, desc="grpo", dynamic_ncols=True)
            for _ in bar:
                last = self.train_step()
                self.step += 1
                self.log(last, self.step)
                bar.set_postfix(reward=f"{last['reward']:.3f}", len=f"{last['completions/mean_length']:.0f}")
                if cfg.log_completions_every and self.step % cfg.log_completions_every == 0:
                    self.writer.add_text("completions", self._sample_text(), self.step)
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    last.update({f"eval/{k}": v for k, v in self.run_eval(self.step).items()})
                if self._stop_requested or (cfg.save_every and self.step % cfg.save_every == 0) or self.step == cfg.steps:
                    self.save()
                if self._stop_requested:
                    print(f"stopped by signal at step {self.step}; checkpoint saved in {cfg.output_dir}", flush=True)
                    break
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            self.writer.flush()
        return last

    def _sample_text(self) -> str:
        ep = self.last_episode
        tok = self.policy.tokenizer
        text = "\n---\n".join(tok.decode(s.action_ids, skip_special_tokens=False) for s in ep.steps)
        return f"reward {ep.reward}\n\n```\n{text}\n```"


def pad_rows_like(per_row: list[torch.Tensor], indices: list[int], like: torch.Tensor) -> torch.Tensor:
    """Right-pad per-row token tensors into the shape of `like` (padding = 1)."""
    out = torch.ones_like(like)
    for i, j in enumerate(indices):
        t = per_row[j]
        out[i, : t.numel()] = t.to(like.device, like.dtype)
    return out
