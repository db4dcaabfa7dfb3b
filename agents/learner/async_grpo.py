"""Asynchronous GRPO (`async_rollouts=True`): the learner trains while rollout workers sample ahead. Under
torchrun rank 0 learns while ranks 1..N−1 roll out; in one process a rollout thread beside the learner samples on
the same device (on a GPU, on a CUDA stream of its own, so that its decode and the learner's forward/backward run
at the same time).

In the synchronous step the learner idles while the policy samples, and the samplers idle while it learns.
Here the learner asks for steps up to `max_staleness` ahead of the one it trains, so the rollout ranks sample
step t + k with the weights they hold while it trains step t; after every optimizer step it broadcasts its
weights, and every row carries the version that sampled it (`Row.version`, optimizer steps behind it). The
learner serves a step only from rows at most `max_staleness` versions old (`staleness.StalenessBuffer`),
recomputes their log-probs with its own weights, and corrects for the gap (`off_policy_correction`); with
`max_staleness=0` the run is the one-process synchronous run.

The learner's messages to each rollout rank go in order over one channel (int64 tensors):
- `WEIGHTS v`: the weights after v optimizer steps follow as a broadcast over the weight group. A rollout rank
  joins it as soon as it reads the message: between generation rounds (so a Delethink trace's later chunks
  may come from newer weights than its first; each chunk's row carries its own version) or between steps.
- `COLLECT t, m, seeds`: sample the groups of these seeds for step t with at least version m = t − k. Since
  `WEIGHTS m` was sent before it, no rollout rank waits for weights that do not exist yet.
- `STOP`: leave, after serving what was asked before.
Each rollout rank ships a `Shipment` (its batch) per request back to rank 0. A run that stops drops the steps
it had asked for ahead (logged); a resume asks for them again, sampled by the resumed weights.

The protocol (`Pipeline` on the learner's side, `RolloutWorker` on the other) runs over one of two transports:
`RankChannel`/`RankEnd` (process groups, below) or `ThreadChannel`/`ThreadEnd` (queues between the learner and a
rollout thread of its process, weights handed over as snapshots).

Under torchrun every process runs one-process thinkgym code: the trainer on rank 0 and the collector on the others see
WORLD_SIZE=1 (`solo`), and the pipeline talks over process groups of its own (gloo for messages and rows,
NCCL for the weights on GPUs).
"""

from __future__ import annotations

import queue
import time
from collections import deque
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist

from .. import distributed, interrupt
from ..policy import Policy
from ..rollout.collector import Collector
from ..rollout.engine import make_engine
from ..types import Batch, Row
from .async_transport import (COLLECT, STOP, WEIGHTS, Links, Message, RankChannel, RankEnd, ThreadChannel, ThreadEnd,
                              connect, solo)
from .config import GRPOConfig
from .staleness import Shipment, StalenessBuffer
from .trainer import GRPOTrainer


class Pipeline:
    """The learner's side: asks the rollout workers for steps ahead, publishes its weights, and serves each step
    from the buffer."""

    def __init__(self, cfg: GRPOConfig, channel: RankChannel | ThreadChannel, step_prompts: Callable[[int], list[int]]):
        self.cfg, self.channel, self.step_prompts = cfg, channel, step_prompts
        self.ranks = channel.ranks
        self.buffer = StalenessBuffer(cfg.max_staleness, self.ranks)
        self.asked: dict[int, deque[int]] = {r: deque() for r in self.ranks}  # the steps each rank owes, in order
        self.started = False

    def start(self, step: int) -> None:
        """Publish the weights the run starts (or resumes) from, and ask for its first k + 1 steps."""
        self.started = True
        self.channel.publish(step)
        for t in range(step, min(step + self.cfg.max_staleness + 1, self.cfg.steps)):
            self.ask(t)

    def ask(self, step: int, ranks: list[int] | None = None) -> None:
        """Ask each rollout rank for its contiguous share of the step's prompts, sampled by version step − k or newer."""
        seeds, n = self.step_prompts(step), len(self.ranks)
        for i, r in enumerate(self.ranks):
            if ranks is None or r in ranks:
                self.channel.tell(r, Message(COLLECT, step, step - self.cfg.max_staleness, seeds[i * len(seeds) // n:(i + 1) * len(seeds) // n]))
                self.asked[r].append(step)

    def _receive(self, rank: int) -> None:
        """The next shipment `rank` owes, into the buffer; one too stale is asked for again."""
        expected = self.asked[rank].popleft()
        shipment = self.channel.receive(rank)
        if shipment.step != expected:
            raise RuntimeError(f"rank {rank} shipped step {shipment.step} where step {expected} was due")
        if not self.buffer.put(shipment):
            print(f"async: {self.buffer.log[-1]}", flush=True)
            self.ask(shipment.step, [rank])

    def take(self, step: int) -> tuple[Batch, dict[str, float]]:
        """The step's rows (waiting for them as needed) and its staleness metrics."""
        t = time.perf_counter()
        for r in self.ranks:
            while (step, r) not in self.buffer.held:
                self._receive(r)
        batch, metrics = self.buffer.take(step)
        metrics["async/learner_wait_s"] = time.perf_counter() - t
        return batch, metrics

    def advance(self, version: int) -> float:
        """After an optimizer step: publish version `version` if a step is left to sample with it, and ask for the
        step it may sample (version + k). Returns the seconds the learner spent (the background broadcast excluded)."""
        t = time.perf_counter()
        if version < self.cfg.steps:
            self.channel.publish(version)
        if version + self.cfg.max_staleness < self.cfg.steps:
            self.ask(version + self.cfg.max_staleness)
        return time.perf_counter() - t

    def close(self) -> list[Shipment]:
        """Tell the rollout ranks to stop; the steps asked for and not trained on are dropped (returned, and
        logged): a resume samples them anew. After a rollout thread's failure, nothing more is waited for."""
        for r in self.ranks:
            self.channel.tell(r, Message(STOP))
        for r in self.ranks:
            while self.asked[r] and self.channel.healthy:
                self._receive(r)
        dropped = self.buffer.discard()
        if dropped:
            steps = sorted({s.step for s in dropped})
            print(f"async: stopped with steps {steps} sampled ahead (versions {sorted({s.oldest for s in dropped})}); "
                  "they are dropped, and a resume samples them again", flush=True)
        if self.channel.healthy:
            self.channel.close()
        return dropped


class AsyncGRPOTrainer(GRPOTrainer):
    """The learner: GRPO's step on rows shipped by the rollout ranks (`links`) or by a rollout thread of this
    process (`links=None`)."""

    def __init__(self, cfg: GRPOConfig, links: Links | None = None, policy: Policy | None = None):
        if links is None and cfg.engine != "hf":  # a second vLLM engine in one process would contend for its memory
            raise ValueError(f"async_rollouts=True in one process runs a rollout thread on engine='hf', not engine={cfg.engine!r}: "
                             "use engine='hf', or torchrun with rollout ranks")
        super().__init__(cfg, policy=policy)
        if self.openings is not None:
            raise ValueError(f"reward {cfg.reward!r} forces openings on each group, which the rollout ranks do not do: "
                             "use it with async_rollouts=False")
        if self.collector.env_state() is not None:
            raise ValueError(f"{cfg.env} keeps state across episodes (a curriculum), which would advance on the rollout ranks "
                             "and miss the learner's checkpoints: use it with async_rollouts=False")
        model = self.policy.model
        if links is None:  # the rollout thread stands for rank 1 of a 2-process run: its seeds, its share
            device = str(self.policy.device)
            channel = ThreadChannel(model, device, lambda end: RolloutWorker(cfg, 1, 2, device, end).serve())
        else:
            channel = RankChannel(cfg, links, model)
        self.pipeline = Pipeline(cfg, channel, self.step_prompts)
        self.async_metrics: dict[str, float] = {}

    def collect_step(self) -> tuple[Batch, np.ndarray, dict[str, list[float]], list, float]:
        if not self.pipeline.started:
            self.pipeline.start(self.step)
        batch, self.async_metrics = self.pipeline.take(self.step)
        rewards, comps, samples = self.score(batch)
        return batch, rewards, comps, samples, 0.0

    def logprobs_trusted(self, rows: list[Row]) -> bool:
        """Only rows of the learner's current weights have its log-probs."""
        return super().logprobs_trusted(rows) and all(r.version == self.step for r in rows)

    def sync_weights(self) -> float:
        """The learner's own engine (evaluation), then the rollout ranks' weights (`time/weight_sync_s`)."""
        return super().sync_weights() + self.pipeline.advance(self.step + 1)

    def train_step(self) -> dict[str, float]:
        metrics = super().train_step()
        metrics.update(self.async_metrics)
        return metrics

    def train(self) -> dict[str, float]:
        try:
            return super().train()
        finally:
            self.pipeline.close()


class RolloutWorker:
    """A rollout rank or thread: serves the learner's requests with the weights it holds (its own copy, so that
    the learner's optimizer step never changes weights mid-decode), over its end of the transport (`end`, built
    on its model)."""

    def __init__(self, cfg: GRPOConfig, rank: int, size: int, device: str | None,
                 end: Callable[[torch.nn.Module], RankEnd | ThreadEnd]):
        self.cfg, self.rank = cfg, rank
        self.index, n = rank - 1, size - 1
        self.policy = Policy.from_pretrained(cfg.model, device=device, dtype=cfg.dtype, seed=cfg.seed)
        self.engine = make_engine(cfg.engine, self.policy, cfg.seed * n + self.index, cfg.vllm_tensor_parallel_size,
                                  stream=cfg.stream_rollouts)
        self.collector = Collector(cfg.env, self.engine, cfg.env_kwargs, cfg.num_generations, cfg.temperature, cfg.top_p)
        self.collector.before_round = self.take_new_weights
        self.end = end(self.policy.model)
        self.queued: deque[Message] = deque()
        self.version, self.loading_s, self.first = -1, 0.0, True

    def message(self, block: bool) -> Message | None:
        try:
            return self.end.mailbox.get(block=block)
        except queue.Empty:
            return None

    def serve(self) -> None:
        """Until the learner says stop. A stop signal is the learner's to act on: here it is only noted."""
        self.end.start()
        with interrupt.stop_on_signal():  # nothing outside the main thread: a rollout thread's process is the learner's
            while True:
                msg = self.queued.popleft() if self.queued else self.message(block=True)
                if msg.kind == STOP:
                    self.end.close()
                    return
                if msg.kind == WEIGHTS:
                    self.load(msg)
                else:
                    self.ship(msg.a, msg.b, msg.seeds)

    def load(self, msg: Message) -> None:
        t = time.perf_counter()
        self.end.load(msg)
        self.engine.sync_weights()
        self.version = self.collector.policy_version = msg.a
        self.loading_s += time.perf_counter() - t

    def take_new_weights(self) -> None:
        """Between generation rounds: load every version published meanwhile, keep other messages for later."""
        while (msg := self.message(block=False)) is not None:
            if msg.kind == WEIGHTS:
                self.load(msg)
            else:
                self.queued.append(msg)

    def ship(self, step: int, min_version: int, seeds: list[int]) -> None:
        t = time.perf_counter()
        while self.version < min_version:  # WEIGHTS min_version was sent before this request: it is on its way
            msg = self.message(block=True)
            if msg.kind == WEIGHTS:
                self.load(msg)
            else:
                self.queued.append(msg)
        if self.first and step > 0:  # a resumed run: a sampling stream of its own, not step 0's again
            self.engine.seed(int(np.random.SeedSequence([self.cfg.seed, self.index, step]).generate_state(1)[0]))
        self.first = False
        wait_s, self.loading_s = time.perf_counter() - t, 0.0
        batch = self.collector.collect(seeds)
        self.end.ship(Shipment(step, self.rank, batch, min_version, wait_s + self.loading_s))


def train_async(cfg: GRPOConfig, policy: Policy | None = None) -> tuple[AsyncGRPOTrainer | RolloutWorker, dict[str, float]]:
    """One stage. In one process: the learner, with a rollout thread beside it (its last metrics). Under torchrun,
    on every rank: the learner's trainer on rank 0, a rollout worker elsewhere ({})."""
    if distributed.world().size < 2:
        trainer = AsyncGRPOTrainer(cfg, None, policy)
        return trainer, trainer.train()
    links = connect(cfg)
    with solo():
        if links.rank == 0:
            role: AsyncGRPOTrainer | RolloutWorker = AsyncGRPOTrainer(cfg, links, policy)
            last = role.train()
        else:
            role, last = RolloutWorker(cfg, links.rank, links.size, links.device,
                                       lambda model: RankEnd(cfg, links, model)), {}
            role.serve()
        dist.barrier(group=links.shipments)
    return role, last
