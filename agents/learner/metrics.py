"""What a GRPO step logs about its batch: episode means (reward, length, accuracy, environment scalars) and
the compute it ran, each summed or averaged over every rank, so that the numbers are one process's."""

from __future__ import annotations

import numpy as np
import torch

from thinkgym.envs.compute import attention_cost

from .. import distributed
from ..types import Batch


def episode_metrics(batch: Batch, rewards: np.ndarray, comps: dict[str, list[float]], group_size: int) -> dict[str, float]:
    """Means over every rank's episodes (over groups for the std metrics): what one process would log."""
    group_std = rewards.reshape(-1, group_size).std(axis=1)
    eps = batch.episodes
    values: dict[str, list[float]] = {
        "reward": rewards.tolist(), "reward_std": group_std.tolist(), "frac_reward_zero_std": (group_std == 0).tolist(),
        "completions/mean_length": [ep.num_tokens for ep in eps], "completions/clipped_ratio": [ep.truncated for ep in eps],
        "accuracy": [bool(ep.info.get("correct")) for ep in eps], **{f"rewards/{k}/mean": list(v) for k, v in comps.items()}}
    for ep in eps:
        if "chunks" in ep.info:
            values.setdefault("delethink/chunks_mean", []).append(ep.info["chunks"])
            values.setdefault("delethink/thinking_tokens_mean", []).append(ep.info.get("thinking_tokens", 0))
        if "carried_state" in ep.info:  # pooled over every reset of the batch
            values.setdefault("delethink/carried_state_mean", []).extend(map(float, ep.info["carried_state"]))
        for knob, value in ep.info.get("difficulty", {}).items():
            values.setdefault(f"success_by_difficulty/{knob}={value}", []).append(bool(ep.info.get("correct")))
        if "curriculum" in ep.info:
            values.setdefault("curriculum/level", []).append(ep.info["curriculum"]["level"])
    return distributed.global_means({k: (float(sum(v)), float(len(v))) for k, v in values.items()})


def compute_counts(batch: Batch, iterations: int) -> dict[str, float]:
    """This step's work, summed over every rank, measured from the sequences actually run: tokens and
    attention query-key pairs of the learner's forward passes (one per row and iteration; the backward
    repeats them) and of the rollouts (a prefill and a decode per step of an episode, at its real context
    length). Times the model's FLOPs per token and per pair, they give the step's compute with the
    attention term (`benchmarks/markovian_vs_longcot.py`)."""
    train_pairs = sum(attention_cost([(r.prompt_len, r.completion_len)])["attention_pairs"] for r in batch.rows)
    segments = [(len(s.prompt_ids), len(s.action_ids)) for ep in batch.episodes for s in ep.steps]
    values = [iterations * sum(len(r.input_ids) for r in batch.rows), iterations * train_pairs,
              float(sum(sum(r.loss_mask) for r in batch.rows)),
              float(sum(p + g for p, g in segments)), attention_cost(segments)["attention_pairs"]]
    names = ["train_tokens", "train_attention_pairs", "trained_tokens", "rollout_tokens", "rollout_attention_pairs"]
    return {f"compute/{k}": v for k, v in zip(names, distributed.all_reduce(values))}


def add_log_ratio(gap: list[float], logp: torch.Tensor, engine_logp: torch.Tensor, mask: torch.Tensor) -> None:
    """Add to `gap` ([sum, max, tokens]) the |log π_learner − log π_engine| of the tokens that count."""
    d = (logp.detach() - engine_logp).abs() * mask
    gap[0] += float(d.sum())
    gap[1] = max(gap[1], float(d.max()))
    gap[2] += float(mask.sum())
