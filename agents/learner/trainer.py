"""The GRPO step: collect groups of episodes, score them, turn rewards into advantages, and optimize.

`train_step` reads top to bottom: sample `prompts_per_step` seeds and run `num_generations` episodes of
each through the environment (`collect_step`, with DAPO's dynamic sampling), score them (`score`), turn
rewards into group-relative advantages that every row of a rollout shares (`advantages`), then take
`num_iterations × minibatches` optimizer steps of the `loss_type`'s surrogate, normalised over the whole
optimizer step (`optimize`). The run around the steps (loop, checkpoints, signals, warm start, evaluation,
logging) is `run.py`'s `GRPORun`, which this class extends.

Under `torchrun` each rank collects its share of the step's prompts; counts, advantages and logged
means are global, and DDP sums the gradients or FSDP2 reduce-scatters them (`parallelism`,
`distributed.py`). With one process every collective is the identity. With `use_peft` the policy's
model is a peft model and only its LoRA adapter trains (`lora.py`).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable

import numpy as np
import torch

from thinkgym.rewards import Sample, parse_reward_spec

from .. import distributed, lora
from ..policy import Policy
from ..rollout.collector import Collector, summed_stats
from ..rollout.engine import Engine, make_engine
from ..rollout.sampling import Opening, forced_openings
from ..types import MONITOR_SEED_BASE, TRAIN_SEED_BASE, Batch, Row
from .advantages import ADVANTAGE_ESTIMATORS, mgpo_weight
from .config import GRPOConfig
from .logprobs import completion_logprobs, pad_rows, pad_rows_like
from .losses import POLICY_LOSSES, importance_weights, k3_kl, row_stats
from .metrics import add_log_ratio, compute_counts, episode_metrics
from .precision import build_optimizer, lr_schedule
from .run import GRPORun, with_output_dir


class NonFiniteLossError(RuntimeError):
    """`max_nonfinite_steps` optimizer steps in a row had a NaN/inf loss or gradient."""


class GRPOTrainer(GRPORun):
    def __init__(self, cfg: GRPOConfig, policy: Policy | None = None, engine: Engine | None = None):
        """`policy` replaces loading `cfg.model`; `engine` (sampling from the policy it trains) replaces
        building `cfg.engine`."""
        if engine is not None and policy is not None and engine.policy is not policy:
            raise ValueError("the engine samples from another policy than the one given: pass the engine alone "
                             "(its policy is trained), or the policy alone")
        self.world = distributed.world()
        device = distributed.setup(cfg.device)
        cfg, fresh = with_output_dir(cfg)
        self.cfg = cfg
        if cfg.prompts_per_step < self.world.size:
            raise ValueError(f"prompts_per_step={cfg.prompts_per_step} is split over {self.world.size} processes: "
                             "it must be at least the number of processes")
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.policy = (engine.policy if engine is not None else policy) or Policy.from_pretrained(
            cfg.model, device=device, dtype=cfg.dtype, seed=cfg.seed)
        # FSDP: the learner trains fp32 shards, and the policy's model stays whole on every rank for the rollouts
        self.sharded = cfg.parallelism == "fsdp" and self.world.size > 1
        if cfg.gradient_checkpointing and not self.sharded:
            self.policy.model.gradient_checkpointing_enable()
        if cfg.use_peft:
            self.policy.model = lora.add_adapter(self.policy.model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
        self.engine = engine or make_engine(cfg.engine, self.policy, distributed.rank_seed(cfg.seed), cfg.vllm_tensor_parallel_size,
                                            lora_merge=cfg.lora_rollout == "merge", stream=cfg.stream_rollouts)
        if self.sharded:
            self.model = distributed.sharded_copy(self.policy.model, self.policy.dtype, cfg.gradient_checkpointing)
            self.train_model = self.model
        else:
            self.model = self.policy.model
            self.train_model = distributed.wrap(self.model)  # forward/backward go through DDP under torchrun
        self.ref_model = None  # LoRA's reference is the model with its adapter off (`_ref_logprobs`)
        if cfg.beta > 0 and not cfg.use_peft:
            self.ref_model = distributed.sharded_copy(self.policy.model, self.policy.dtype) if self.sharded else copy.deepcopy(self.model)
            self.ref_model.eval().requires_grad_(False)
        total = cfg.steps * cfg.num_iterations * cfg.minibatches
        self.opt, self.sched = build_optimizer(self.model, cfg.learning_rate, lr_schedule(cfg.lr_scheduler, cfg.warmup_steps, total),
                                               cfg.weight_decay)
        self.loss = POLICY_LOSSES.get(cfg.loss_type)
        self.reward = parse_reward_spec(cfg.reward, cfg.reward_params) if cfg.reward else None
        raw = self.reward is not None and self.reward.raw_advantage
        if raw and cfg.dynamic_sampling:
            raise ValueError(f"reward {cfg.reward!r} already is the advantage, which is not zero when a group's rewards are "
                             "equal: dynamic_sampling would drop groups that teach; set dynamic_sampling=False")
        estimator = "raw" if raw else cfg.advantage_estimator  # AdaptThink's advantage is used as it is
        self.advantage = ADVANTAGE_ESTIMATORS.get(estimator)
        texts = self.reward.openings(cfg.num_generations) if self.reward is not None else None
        self.openings = forced_openings(texts, self.policy.tokenizer) if texts else None
        self.siri = None
        if cfg.siri:
            from thinkgym.rewards import SiriSchedule

            self.siri = SiriSchedule(**cfg.siri)
        self.collector = Collector(cfg.env, self.engine, cfg.env_kwargs, cfg.num_generations, cfg.temperature, cfg.top_p)
        self.start_run(fresh)
        self.step, self.nonfinite_streak, self.nonfinite_total = 0, 0, 0
        self._shuffle = np.random.default_rng(cfg.seed)

    def step_prompts(self, step: int, round_: int = 0) -> list[int]:
        """The `prompts_per_step` seeds of a step's collection round (every rank's), cycling through a
        pool of `train_prompts` seeds when that is set."""
        P = self.cfg.prompts_per_step
        start = (step * (self.cfg.max_resample_rounds + 1) + round_) * P
        pool = self.cfg.train_prompts
        return [TRAIN_SEED_BASE + (i % pool if pool else i) for i in range(start, start + P)]

    def train_seeds(self, step: int, round_: int = 0) -> list[int]:
        """This rank's seeds: its contiguous share of `step_prompts`."""
        return distributed.shard(self.step_prompts(step, round_))

    def run_prompts(self) -> list[int]:
        """Every seed that the `steps` of this run may train on."""
        rounds = self.cfg.max_resample_rounds + 1 if self.cfg.dynamic_sampling else 1
        return sorted({s for step in range(self.cfg.steps) for r in range(rounds) for s in self.step_prompts(step, r)})

    # -- one step ---------------------------------------------------------------------------------
    def samples(self, batch: Batch, openings: list[Opening] | None = None) -> list[Sample]:
        """What a reward sees of each episode, the budget it was sampled under included; with the
        `openings` the groups were sampled with, each member's think mode is the one forced on it."""
        tok, G = self.policy.tokenizer, self.cfg.num_generations
        return [Sample(text=tok.decode([t for s in ep.steps for t in s.action_ids], skip_special_tokens=False),
                       num_tokens=ep.num_tokens, prompt_id=ep.seed, correct=ep.info.get("correct"), finished=ep.terminated,
                       think_mode=openings[i % G].mode if openings else None, max_tokens=ep.budget)
                for i, ep in enumerate(batch.episodes)]

    def rollout_samples(self, seeds: Iterable[int]) -> list[Sample]:
        """`num_generations` freely sampled rollouts of each seed, as samples, on every rank. Each rank runs its
        share, `prompts_per_step` seeds at a time, so that the environment pool stays the size of a step's."""
        mine, P = distributed.shard(list(seeds)), self.cfg.prompts_per_step
        return distributed.gather_flat([x for i in range(0, len(mine), P) for x in self.samples(self.collector.collect(mine[i:i + P]))])

    def sample_reference(self) -> None:
        """Rewards measured against the policy RL starts from (AdaptThink's R̄_ref) get its samples of every
        prompt of the run, before the first update: later, those weights would be gone (keeping a frozen
        copy to sample from would cost a second model, and with vLLM a second engine)."""
        missing = self.reward.missing_reference(self.run_prompts())
        if missing:
            self.reward.set_reference(self.rollout_samples(sorted(missing)))

    def monitor_samples(self) -> list[Sample] | None:
        """Rollouts of the fixed monitor set (`monitor_prompts` seeds of its own range), which a stateful reward
        recomputes its state from when it is due (LASER-D's targets); None without a monitor set."""
        if not self.cfg.monitor_prompts:
            return None
        return self.rollout_samples(range(MONITOR_SEED_BASE, MONITOR_SEED_BASE + self.cfg.monitor_prompts))

    def score(self, batch: Batch) -> tuple[np.ndarray, dict[str, list[float]], list[Sample]]:
        """Rewards per episode: the env's own, or the configured reward spec. The spec scores every
        rank's samples together (a reward may look at the whole batch), then keeps this rank's."""
        eps = batch.episodes
        if self.reward is None:
            comps: dict[str, list[float]] = {}
            for ep in eps:
                for k, v in ep.info.get("reward_components", {}).items():
                    comps.setdefault(k, []).append(float(v))
            return np.array([ep.reward for ep in eps], dtype=float), comps, []
        samples = self.samples(batch, self.openings)
        parts = distributed.gather(samples)
        mine = distributed.rank_slice(parts)
        out = self.reward.compute([x for p in parts for x in p])
        return np.array(out.total[mine], dtype=float), {k: v[mine] for k, v in out.components.items()}, samples

    def collect_step(self) -> tuple[Batch, np.ndarray, dict[str, list[float]], list[Sample], float]:
        """Collect and score this rank's groups: its rewards, reward components and samples, and the fraction
        of the step's groups dynamic sampling dropped."""
        if self.siri is not None:  # SIRI: this step's length budget becomes the environments' own
            self.collector.set_thinking_budget(int(self.siri(self.step)))
        seeds = self.train_seeds(self.step)
        batch = self.collector.collect(seeds, self.prefixes())
        rewards, comps, samples = self.score(batch)
        if not self.cfg.dynamic_sampling:
            return batch, rewards, comps, samples, 0.0
        return self.resample(batch, rewards, comps, samples, quota=len(seeds))

    def prefixes(self) -> list[list[int]] | None:
        """The forced openings that the members of a group start with (AdaptThink), or None."""
        return [o.ids for o in self.openings] if self.openings else None

    def resample(self, batch: Batch, rewards: np.ndarray, comps: dict[str, list[float]], samples: list[Sample],
                 quota: int) -> tuple[Batch, np.ndarray, dict[str, list[float]], list[Sample], float]:
        """DAPO's dynamic sampling: keep the groups with reward variance, up to `quota` (this rank's share of
        `prompts_per_step`), collecting further rounds of fresh prompts; every rank takes part in a round
        until all are full. Nothing kept on any rank: the last round's batch, whose advantages are all zero."""
        G = self.cfg.num_generations
        kept, parts, kept_r, kept_s, kept_c = 0, [], [], [], {}
        round_stats = [batch.stats]  # the step's rollout time is every round's
        for round_ in range(self.cfg.max_resample_rounds + 1):
            if round_:
                batch = self.collector.collect(self.train_seeds(self.step, round_) if kept < quota else [], self.prefixes())
                round_stats.append(batch.stats)
                rewards, comps, samples = self.score(batch)
            groups = np.flatnonzero(rewards.reshape(-1, G).std(axis=1) > 0)[:quota - kept].tolist()
            kept += len(groups)
            parts.append(batch.groups(groups, G))
            idx = [i for g in groups for i in range(g * G, (g + 1) * G)]
            kept_r += [rewards[i] for i in idx]
            kept_s += [samples[i] for i in idx] if samples else []
            for k, v in comps.items():
                kept_c.setdefault(k, []).extend(v[i] for i in idx)
            if not distributed.any_rank(kept < quota):
                break
        total_kept = distributed.all_reduce([kept])[0]
        dropped = 1.0 - total_kept / self.cfg.prompts_per_step
        stats = summed_stats(round_stats)
        if not total_kept:  # nothing to learn from: keep the last batch, its advantages are all zero
            return Batch(batch.episodes, batch.rows, stats), rewards, comps, samples, dropped
        return Batch.concat(parts, stats), np.array(kept_r, dtype=float), kept_c, kept_s, dropped

    def advantages(self, batch: Batch, rewards: np.ndarray) -> np.ndarray:
        """One advantage per episode of this rank. The estimator sees every rank's rewards in rank
        order (the one-process batch), so one that looks beyond a group (`scale_rewards=batch`) is exact."""
        cfg, G = self.cfg, self.cfg.num_generations
        parts = distributed.gather(rewards)
        grouped = np.concatenate(parts).reshape(-1, G)
        adv = self.advantage(grouped, self.cfg.scale_rewards)
        mine = distributed.rank_slice(parts)
        adv = adv[mine.start // G:mine.stop // G]
        if cfg.mgpo_lambda > 0:
            acc = np.array([ep.info.get("correct", False) for ep in batch.episodes], dtype=float).reshape(-1, G).mean(1)
            adv = adv * mgpo_weight(acc, cfg.mgpo_lambda)[:, None]
        return adv.reshape(-1)

    def train_step(self) -> dict[str, float]:
        """One GRPO step: collect and score, move stateful rewards, advantages, optimize; returns its metrics."""
        cfg = self.cfg
        t_step = time.perf_counter()
        if self.reward is not None and self.sched.last_epoch == 0:  # no update yet: the policy is RL's start
            self.sample_reference()
        batch, rewards, comps, samples, dropped = self.collect_step()
        if batch.episodes:  # the step's first rollout, with the reward it was trained on, for the logged sample
            self.last_episode = batch.episodes[0]
            self.last_scores = float(rewards[0]), {k: float(v[0]) for k, v in comps.items()}
        if self.reward is not None:  # stateful rewards (HAPO, LASER-D) move once per step, alike on every rank
            monitor = self.monitor_samples() if self.reward.monitor_due else None
            self.reward.update(distributed.gather_flat(samples), monitor)
        adv = self.advantages(batch, rewards)
        rows = batch.rows
        if cfg.mask_truncated_completions:
            for r in rows:
                if batch.episodes[r.episode].truncated:
                    r.loss_mask = [0] * len(r.loss_mask)
        t_train = time.perf_counter()
        metrics = self.optimize(rows, adv)
        train_time = time.perf_counter() - t_train
        compute = self.compute_counts(batch)
        metrics.update(self.episode_metrics(batch, rewards, comps), **compute)
        metrics.update({"frac_groups_dropped": dropped, "time/train_s": train_time, "time/weight_sync_s": self.sync_weights(),
                        "train_tokens_per_s": compute["compute/train_tokens"] / max(train_time, 1e-9),
                        **{k: v for k, v in batch.stats.items() if k.startswith(("time/", "rollout_tokens", "env_tokens"))}})
        metrics["time/step_s"] = time.perf_counter() - t_step
        return metrics

    def episode_metrics(self, batch: Batch, rewards: np.ndarray, comps: dict[str, list[float]]) -> dict[str, float]:
        """The step's episode means over every rank (`metrics.episode_metrics`), and the reward's own metrics."""
        out = episode_metrics(batch, rewards, comps, self.cfg.num_generations)
        if self.reward is not None:
            out.update({f"rewards/{k}": v for k, v in self.reward.metrics().items()})
        return out

    def compute_counts(self, batch: Batch) -> dict[str, float]:
        """The step's tokens and attention pairs, learner and rollouts, over every rank (`metrics.compute_counts`)."""
        return compute_counts(batch, self.cfg.num_iterations)

    def sync_weights(self) -> float:
        """Bring the engine's weights up to the learner's: under FSDP, gather the shards into the policy's
        whole model on every rank, then the engine's own sync (vLLM's copy, a merged LoRA copy). Returns
        the seconds it took (`time/weight_sync_s`)."""
        t = time.perf_counter()
        if self.sharded:
            distributed.gather_into(self.model, self.policy.model)
        self.engine.sync_weights()
        return time.perf_counter() - t

    def logprobs_trusted(self, rows: list[Row]) -> bool:
        """Whether the rows' log-probs are the learner's own (ratio 1 at the first iteration); if not, the learner
        recomputes them and corrects by `off_policy_correction`. The asynchronous trainer also asks whether
        every row was sampled by the learner's current weights."""
        return self.engine.logprobs_are_trainers

    def optimize(self, rows: list[Row], adv: np.ndarray) -> dict[str, float]:
        """`num_iterations × minibatches` optimizer steps on this rank's rows. Under torchrun a step is
        every rank's share of its minibatch, normalised by counts summed over the ranks. Everything per
        row (advantage, importance weight, loss weight) is indexed like `rows`."""
        cfg = self.cfg
        ep_len: dict[int, int] = {}
        for r in rows:
            ep_len[r.episode] = ep_len.get(r.episode, 0) + sum(r.loss_mask)
        longest = max((len(r.loss_mask) for r in rows), default=1)
        max_len = cfg.max_completion_length or int(distributed.all_reduce([longest], "max")[0])
        gap = [0.0, 0.0, 0.0]  # the first iteration's |log ratio| of learner to engine: sum, max, tokens
        trusted = self.logprobs_trusted(rows)
        # One update from these rows (no second iteration or minibatch, no forced openings): the old log-probs
        # are the training forward's own, detached, and the engine correction comes from that forward too, so
        # no separate forward recomputes them (TRL skips it likewise).
        one_pass = not trusted and cfg.num_iterations == 1 and cfg.minibatches == 1 and self.openings is None
        behaviour = [torch.tensor(r.old_logprobs) for r in rows] if trusted or one_pass else None  # the engine's
        t_old = time.perf_counter()
        tis = None if trusted or one_pass else self._engine_correction(rows, gap)
        old_logprobs_s = time.perf_counter() - t_old
        self._opening_logprobs(rows)  # after the engine correction, which sets old log-probs to the policy's
        row_adv = np.array([adv[r.episode] for r in rows], dtype=float)  # a rollout's advantage on each of its rows
        row_weight = np.zeros(len(rows))
        sums = {"tokens": 0.0, "clip_ratio/low_mean": 0.0, "clip_ratio/high_mean": 0.0, "entropy": 0.0, "kl": 0.0}
        loss_sum, grad_norm_sum, n_updates = 0.0, 0.0, 0
        self.train_model.train()
        for _ in range(cfg.num_iterations):
            order = self._shuffle.permutation(len(rows))
            for mb in np.array_split(order, cfg.minibatches):
                stats = row_stats([rows[i] for i in mb], ep_len, max_len, distributed.all_reduce)
                if not stats.num_rows:  # empty on every rank
                    continue
                row_weight[mb] = self.loss.row_weights(stats)
                self.opt.zero_grad(set_to_none=True)
                local_loss = self._backward(rows, mb, row_adv, row_weight, tis, sums, behaviour, gap, one_pass)
                behaviour = None  # measured with the weights that sampled: before the first update only
                step_loss = distributed.all_reduce([local_loss])[0]
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                if hasattr(grad_norm, "full_tensor"):  # FSDP: a replicated DTensor
                    grad_norm = grad_norm.full_tensor()
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
                loss_sum += step_loss
                grad_norm_sum += float(grad_norm)
                n_updates += 1
        self.train_model.eval()
        totals = dict(zip(sums, distributed.all_reduce(list(sums.values()))))
        n_tok = totals.pop("tokens")
        out = {k: v / max(n_tok, 1) for k, v in totals.items()}
        out.update(loss=loss_sum / max(n_updates, 1), grad_norm=grad_norm_sum / max(n_updates, 1),
                   learning_rate=self.sched.get_last_lr()[0], nonfinite_skipped=float(self.nonfinite_total))
        out["clip_ratio/region_mean"] = out["clip_ratio/low_mean"] + out["clip_ratio/high_mean"]
        if cfg.beta <= 0:
            out.pop("kl")
        gap_sum, gap_tokens = distributed.all_reduce([gap[0], gap[2]])
        out["engine_log_ratio/abs_mean"] = gap_sum / max(gap_tokens, 1)
        out["engine_log_ratio/abs_max"] = distributed.all_reduce([gap[1]], "max")[0]
        if not trusted:
            out["time/old_logprobs_s"] = old_logprobs_s
        return out

    def _micro_batches(self, n: int, backward: bool) -> list[range]:
        """The micro-batches of `n` rows (index ranges), padded with empty ones so that every rank runs as
        many forwards as the rank with the most under FSDP, whose forwards all-gather the weights. Under DDP
        only a backward pass of a rank with no rows gets one, to join the step's gradient all-reduce."""
        size = self.cfg.micro_batch_size
        micro = [range(start, min(start + size, n)) for start in range(0, n, size)]
        if self.sharded:
            wanted = int(distributed.all_reduce([len(micro)], "max")[0])
        else:
            wanted = max(len(micro), 1) if backward else len(micro)
        return micro + [range(0)] * (wanted - len(micro))

    def _padding_batch(self):
        """A one-row batch that counts nothing (all-zero loss mask), for a padding micro-batch."""
        pad = self.policy.tokenizer.pad_token_id
        return pad_rows([Row([pad, pad], 1, [0], [0.0], -1)], pad, self.policy.device)

    def _ref_logprobs(self, rb) -> torch.Tensor:
        """Log-probabilities under the reference: the frozen copy, or a LoRA policy with its adapter off."""
        with torch.no_grad():
            if self.ref_model is not None:
                return completion_logprobs(self.ref_model, rb, self.cfg.temperature)[0]
            with self.model.disable_adapter():
                return completion_logprobs(self.model, rb, self.cfg.temperature)[0]

    def _backward(self, rows: list[Row], mb: np.ndarray, row_adv: np.ndarray, row_weight: np.ndarray,
                  tis: list[torch.Tensor] | None, sums: dict[str, float], behaviour: list[torch.Tensor] | None,
                  gap: list[float], one_pass: bool = False) -> float:
        """Forward and backward each micro-batch of the minibatch `mb` (indices into `rows`); return this
        rank's part of the step's loss. DDP all-reduces the accumulated gradients in the step's last backward;
        FSDP reduce-scatters each micro-batch's. A padding micro-batch adds a zero gradient. With the engine's
        `behaviour` log-probs (before any update), their |log ratio| to the learner's is added to `gap`; with
        `one_pass`, the old log-probs are this forward's, detached, and each token is weighted by the
        `off_policy_correction` of them against `behaviour`."""
        cfg = self.cfg
        micro = self._micro_batches(len(mb), backward=True)
        step_loss = 0.0
        for k, span in enumerate(micro):
            idx = mb[span.start:span.stop]
            rb = pad_rows([rows[i] for i in idx], self.policy.tokenizer.pad_token_id, self.policy.device) if len(idx) \
                else self._padding_batch()
            with distributed.accumulate(self.train_model, last=k == len(micro) - 1):
                logp, ent = completion_logprobs(self.train_model, rb, cfg.temperature, with_entropy=True,
                                                entropy_grad=cfg.entropy_coef > 0)
                a = torch.tensor(row_adv[idx] if len(idx) else [0.0], device=logp.device, dtype=logp.dtype)
                old = logp.detach() if one_pass else rb.old_logprobs
                per_tok, low, high = self.loss.surrogate(logp, old, a, rb.loss_mask, cfg.epsilon, cfg.epsilon_high)
                if behaviour is not None and len(idx):
                    engine = pad_rows_like(behaviour, idx, logp)
                    add_log_ratio(gap, logp, engine, rb.loss_mask)
                    if one_pass:
                        per_tok = per_tok * importance_weights(old, engine, rb.loss_mask, cfg.off_policy_correction, cfg.tis_cap,
                                                               cfg.mis_bound)
                if tis is not None and len(idx):
                    per_tok = per_tok * pad_rows_like(tis, idx, logp)
                if cfg.beta > 0:
                    kl = k3_kl(logp, self._ref_logprobs(rb))
                    per_tok = per_tok + cfg.beta * kl
                    sums["kl"] += float((kl.detach() * rb.loss_mask).sum())
                if cfg.entropy_coef:
                    per_tok = per_tok - cfg.entropy_coef * ent
                w = torch.tensor(row_weight[idx] if len(idx) else [0.0], device=logp.device, dtype=logp.dtype).unsqueeze(1)
                loss = (per_tok * rb.loss_mask * w).sum()
                # DDP averages gradients over ranks; each rank's loss is its part of the global sum
                (loss * self.world.size).backward()
            step_loss += loss.item()
            m = rb.loss_mask
            sums["tokens"] += float(m.sum())
            sums["clip_ratio/low_mean"] += float((low * m).sum())
            sums["clip_ratio/high_mean"] += float((high * m).sum())
            sums["entropy"] += float((ent.detach() * m).sum())
        return step_loss

    def _opening_logprobs(self, rows: list[Row]) -> None:
        """A forced opening was drawn from the importance-sampling distribution, not from the policy: the
        ratio's denominator is its `Opening.logprob` at its first token and 1 at the rest of it."""
        if self.openings is None:
            return
        seen: set[int] = set()
        for r in rows:  # an episode's first row starts with its opening
            if r.episode not in seen:
                seen.add(r.episode)
                o = self.openings[r.episode % self.cfg.num_generations]
                n = min(len(o.ids), r.completion_len)
                r.old_logprobs[:n] = ([o.logprob] + [0.0] * (len(o.ids) - 1))[:n]

    def _engine_correction(self, rows: list[Row], gap: list[float]) -> list[torch.Tensor]:
        """The trainer recomputes old log-probs (used for the ratio), and each token is weighted by the
        `off_policy_correction` of π_trainer_old / π_engine (`importance_weights`). Their |log ratio| is added to `gap`."""
        weights = []
        with torch.no_grad():
            for span in self._micro_batches(len(rows), backward=False):
                if not span:  # FSDP: this rank has fewer micro-batches than another; run a forward all the same
                    completion_logprobs(self.model, self._padding_batch())
                    continue
                micro = rows[span.start:span.stop]
                rb = pad_rows(micro, self.policy.tokenizer.pad_token_id, self.policy.device)
                logp, _ = completion_logprobs(self.model, rb, self.cfg.temperature)
                add_log_ratio(gap, logp, rb.old_logprobs, rb.loss_mask)
                w = importance_weights(logp, rb.old_logprobs, rb.loss_mask, self.cfg.off_policy_correction, self.cfg.tis_cap,
                                       self.cfg.mis_bound)
                for i, r in enumerate(micro):
                    n = r.completion_len
                    weights.append(w[i, :n].cpu())
                    r.old_logprobs = logp[i, :n].tolist()
        return weights
