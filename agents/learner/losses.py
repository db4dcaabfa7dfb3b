"""Policy losses: one registration per `loss_type`, holding its per-token surrogate and its normalisation.

A `PolicyLoss` gives a per-token loss (`surrogate`) and one weight per row (`row_weights`), the weights
computed over all rows of the optimizer step at once. The step's loss is Σ_rows weight · Σ_tokens loss, so
normalisation is global across micro-batches, gradient accumulation and ranks (`RowStats`' counts are
summed over every rank), never per micro-batch or per rank. `loss_type`:
- `grpo`: mean over each sequence's tokens, then over sequences (DeepSeekMath).
- `dapo`: mean over every token of the step (DAPO, arXiv 2503.14476).
- `dr_grpo`: sum over tokens divided by a constant, sequences × max length (Dr. GRPO, arXiv 2503.20783).
- `delethink`: sum over all chunks of a trace divided by the trace's total length, then mean over
  traces (The Markovian Thinker, Eq. 3).
- `gspo`: a sequence-level ratio exp(mean_t log ρ_t), clipped per sequence (GSPO, arXiv 2507.18071).
- `cispo`: REINFORCE on every token, weighted by its clipped, stop-gradient importance weight
  sg(min(ρ, 1 + epsilon_high)); token mean over the step (MiniMax-M1, arXiv 2506.13585).

Adding a loss is one `POLICY_LOSSES.register(name, PolicyLoss(surrogate, row_weights))`, or
`@register_policy_loss(name)` above a `row_weights` function for a new normalisation of the PPO surrogate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from thinkgym.registry import Registry

from ..types import Row


@dataclass
class RowStats:
    """What a loss needs to know about the rows of one optimizer step. The lists are about this
    rank's rows; the counts are about the whole step, over every rank (the same with one process)."""

    lengths: list[int]          # loss-counted tokens per row
    trace_lengths: list[int]    # loss-counted tokens of each row's whole rollout
    num_traces: int
    max_length: int             # the constant of dr_grpo
    num_rows: int
    num_tokens: int             # loss-counted tokens of the step


Surrogate = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float, float],
                     tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
"""`fn(logp, old_logp, advantages, loss_mask, eps_low, eps_high) -> (per-token loss, low-clip, high-clip)`:
[rows, tokens] log-probabilities, one advantage per row, the clip indicators counted in `clip_ratio/*`."""


def token_surrogate(logp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, eps_low: float,
                    eps_high: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's −min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A) per token; also the low/high clip indicators."""
    ratio = torch.exp(logp - old)
    a = adv.unsqueeze(-1) if adv.dim() == 1 else adv
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    loss = -torch.minimum(ratio * a, clipped * a)
    return loss, (ratio < 1 - eps_low) & (a < 0), (ratio > 1 + eps_high) & (a > 0)


def sequence_surrogate(logp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, eps_low: float,
                       eps_high: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GSPO: s_i = exp(mean_t (log π − log π_old)), clipped per sequence, spread over its tokens."""
    log_s = ((logp - old) * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    s = torch.exp(log_s)
    loss = -torch.minimum(s * adv, torch.clamp(s, 1 - eps_low, 1 + eps_high) * adv)
    low, high = (s < 1 - eps_low) & (adv < 0), (s > 1 + eps_high) & (adv > 0)
    expand = lambda x: x.unsqueeze(-1).expand_as(logp)  # noqa: E731
    return expand(loss), expand(low), expand(high)


def cispo_surrogate(logp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, eps_low: float,
                    eps_high: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CISPO: −sg(min(ρ, 1+ε_high))·A·log π per token. The importance weight is clipped, not the update: a
    token past the clip still gets a gradient (PPO's surrogate would drop it), bounded by the weight. As in
    MiniMax-M1 there is no lower bound (`eps_low` is unused); `high` marks the tokens whose weight was capped."""
    ratio = torch.exp(logp - old).detach()
    a = adv.unsqueeze(-1) if adv.dim() == 1 else adv
    loss = -torch.clamp(ratio, max=1 + eps_high) * a * logp
    return loss, torch.zeros_like(ratio, dtype=torch.bool), ratio > 1 + eps_high


@dataclass(frozen=True)
class PolicyLoss:
    """One `loss_type`: the per-token surrogate, and one weight per row that normalises the token sums."""

    surrogate: Surrogate
    row_weights: Callable[[RowStats], list[float]]


POLICY_LOSSES: Registry[PolicyLoss] = Registry("loss_type")


def register_policy_loss(name: str, surrogate: Surrogate = token_surrogate) -> Callable[[Callable[[RowStats], list[float]]], Callable[[RowStats], list[float]]]:
    """Decorate `fn(stats: RowStats) -> list[float]` (one weight per row) to add a `loss_type` with `surrogate`.

    Normalise by the counts (`num_rows`, `num_tokens`, `num_traces`), not by `len(stats.lengths)`:
    under torchrun the lists hold one rank's rows only."""
    add = POLICY_LOSSES.register(name)  # a duplicate is refused here, before the function is defined

    def deco(fn: Callable[[RowStats], list[float]]) -> Callable[[RowStats], list[float]]:
        add(PolicyLoss(surrogate, fn))
        return fn
    return deco


def _n(x: int) -> float:
    return float(max(x, 1))


@register_policy_loss("grpo")
def _grpo(s: RowStats) -> list[float]:
    return [1.0 / (_n(n) * _n(s.num_rows)) for n in s.lengths]


@register_policy_loss("dapo")
def token_mean(s: RowStats) -> list[float]:
    return [1.0 / _n(s.num_tokens)] * len(s.lengths)


@register_policy_loss("dr_grpo")
def _dr_grpo(s: RowStats) -> list[float]:
    return [1.0 / (_n(s.num_rows) * _n(s.max_length))] * len(s.lengths)


@register_policy_loss("delethink")
def _delethink(s: RowStats) -> list[float]:
    return [1.0 / (_n(t) * _n(s.num_traces)) for t in s.trace_lengths]


@register_policy_loss("gspo", surrogate=sequence_surrogate)
def _gspo(s: RowStats) -> list[float]:
    # each token carries its sequence's loss, so 1/|o_i| turns the token sum back into it
    return [1.0 / (_n(n) * _n(s.num_rows)) for n in s.lengths]


POLICY_LOSSES.register("cispo", PolicyLoss(cispo_surrogate, token_mean))


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(π‖π_ref) per token: r − log r − 1 with r = π_ref/π."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def row_stats(rows: Sequence[Row], episode_lengths: dict[int, int], max_length: int,
              sum_over_ranks: Callable[[list[float]], list[float]] | None = None) -> RowStats:
    """Stats of this rank's `rows`; `sum_over_ranks` (distributed.all_reduce) makes the counts global.
    A trace's rows all live on one rank, so traces are counted once."""
    lengths = [sum(r.loss_mask) for r in rows]
    counts = [len({r.episode for r in rows}), len(rows), sum(lengths)]
    num_traces, num_rows, num_tokens = (int(c) for c in (sum_over_ranks(counts) if sum_over_ranks else counts))
    return RowStats(lengths, [episode_lengths[r.episode] for r in rows], num_traces, max_length, num_rows, num_tokens)


def importance_weights(logp: torch.Tensor, behaviour: torch.Tensor, mask: torch.Tensor, correction: str, tis_cap: float,
                       mis_bound: float) -> torch.Tensor:
    """Per-token weights that correct rows sampled by a behaviour policy (its log-probs `behaviour`) other than
    the learner's (`logp`, no gradient): `tis` is min(ρ_t, tis_cap) (truncated IS); `mis` (sequence-level
    masked IS) is the row's geometric-mean ratio exp(mean_t log ρ_t) on every token, or 0 for the whole row
    when |mean_t log ρ_t| > mis_bound. A row is one sequence: a Delethink chunk is its own row, so its own
    sequence here, as in GSPO's ratio."""
    log_ratio = logp - behaviour
    if correction == "tis":
        return torch.clamp(torch.exp(log_ratio), max=tis_cap)
    if correction == "mis":
        mean = (log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        kept = mean.abs() <= mis_bound
        return (torch.exp(mean) * kept).unsqueeze(-1).expand_as(logp)
    raise ValueError(f"off_policy_correction={correction!r} is unknown; valid: ['tis', 'mis']")
