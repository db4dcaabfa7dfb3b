"""The asynchronous trainer's buffer: rollout batches wait here, per step and rollout rank, until the learner
takes them, and none is served with a row more than `max_staleness` policy versions older than the step.

A policy version is the number of optimizer steps (`train_step`s) behind the weights: the learner trains step
t with version t, so a row sampled by version v is t − v versions stale. Rows come in `Shipment`s, one per
rollout rank and step; a shipment with a row too stale is dropped whole (its groups would otherwise lose
members) and the learner asks for that step again. Pure bookkeeping, no processes: `async_grpo.py` moves
the shipments.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..rollout.collector import summed_stats
from ..types import Batch, Episode, Row


@dataclass
class Shipment:
    """One rollout rank's share of one step: its batch, the version it had to hold at least, and how long it
    waited for weights (`wait_s`, weight transfers included) before and while collecting it."""

    step: int
    rank: int
    batch: Batch
    min_version: int
    wait_s: float = 0.0

    @property
    def oldest(self) -> int:
        return min((r.version for r in self.batch.rows), default=self.min_version)


@dataclass
class StalenessBuffer:
    """Shipments by (step, rank); `take` serves a whole step once every rollout rank's share is in."""

    max_staleness: int
    ranks: list[int]
    held: dict[tuple[int, int], Shipment] = field(default_factory=dict)
    dropped_rows: int = 0
    log: list[str] = field(default_factory=list)

    def put(self, shipment: Shipment) -> bool:
        """Keep the shipment if no row of it is older than its step allows; else drop it (say so in `log`)
        and return False: the caller asks for that share again."""
        stale = shipment.step - shipment.oldest
        if stale > self.max_staleness:
            self.dropped_rows += len(shipment.batch.rows)
            self.log.append(f"dropped step {shipment.step}'s rows from rank {shipment.rank}: version {shipment.oldest} is "
                            f"{stale} steps stale (max_staleness={self.max_staleness}); asking for them again")
            return False
        self.held[(shipment.step, shipment.rank)] = shipment
        return True

    def ready(self, step: int) -> bool:
        return all((step, r) in self.held for r in self.ranks)

    def take(self, step: int) -> tuple[Batch, dict[str, float]]:
        """The step's batch, every rollout rank's share in rank order (the one-process batch), and its metrics."""
        if not self.ready(step):
            missing = [r for r in self.ranks if (step, r) not in self.held]
            raise RuntimeError(f"step {step} is not complete: ranks {missing} have not shipped it")
        parts = [self.held.pop((step, r)) for r in self.ranks]
        batch = merge_batches([p.batch for p in parts])
        return batch, staleness_metrics(step, batch.rows, parts, self.dropped_rows)

    def discard(self) -> list[Shipment]:
        """Every shipment still held (a run that stops leaves its prefetched steps; a resume samples them anew)."""
        out = sorted(self.held.values(), key=lambda s: (s.step, s.rank))
        self.held.clear()
        return out


def merge_batches(parts: list[Batch]) -> Batch:
    """Batches collected apart as one: episodes concatenated, each row's `episode` and each episode's `group`
    shifted past the earlier parts', the stats summed."""
    episodes: list[Episode] = []
    rows: list[Row] = []
    for b in parts:
        groups = len({ep.group for ep in episodes})
        rows += [replace(r, episode=r.episode + len(episodes)) for r in b.rows]
        episodes += [replace(ep, group=ep.group + groups) for ep in b.episodes]
    return Batch(episodes, rows, summed_stats([b.stats for b in parts]))


def staleness_metrics(step: int, rows: list[Row], parts: list[Shipment], dropped_rows: int) -> dict[str, float]:
    """What the step trained on: the staleness of its rows (mean over rows, max), the rows dropped so far, and
    the longest wait of a rollout rank for weights."""
    ages = [step - r.version for r in rows] or [0]
    return {"async/staleness_mean": sum(ages) / len(ages), "async/staleness_max": float(max(ages)),
            "async/rows_dropped": float(dropped_rows), "async/rollout_weight_wait_s": max(p.wait_s for p in parts)}
