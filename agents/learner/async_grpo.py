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

Every process runs one-process thinkgym code: the trainer on rank 0 and the collector on the others see
WORLD_SIZE=1 (`solo`), and the pipeline talks over process groups of its own (gloo for messages and rows,
NCCL for the weights on GPUs).
"""

from __future__ import annotations

import os
import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .. import distributed, interrupt
from ..policy import Policy
from ..rollout.collector import Collector
from ..rollout.engine import make_engine
from ..types import Batch, Row
from .config import GRPOConfig
from .staleness import Shipment, StalenessBuffer
from .trainer import GRPOTrainer

COLLECT, WEIGHTS, STOP = 1, 2, 3
HEADER = 4  # kind, step or version, min version, number of seeds


@dataclass
class Links:
    """This process's place in the asynchronous run and the groups it talks over."""

    rank: int
    size: int
    messages: Any  # gloo: the learner's messages, received by a rollout rank's listening thread
    shipments: Any  # gloo: the rollout ranks' batches
    weights: Any  # the weight broadcasts: gloo on the CPU, NCCL on GPUs
    device: str | None

    @property
    def rollout_ranks(self) -> list[int]:
        return list(range(1, self.size))


def connect(cfg: GRPOConfig) -> Links:
    """Join the torchrun ranks and make the pipeline's groups (a collective)."""
    w = distributed.world()
    if cfg.prompts_per_step < w.size - 1:
        raise ValueError(f"prompts_per_step={cfg.prompts_per_step} is shared by {w.size - 1} rollout ranks: it must be at least that")
    device = distributed.setup(cfg.device)
    on_gpu = device is not None and device.startswith("cuda")
    groups = [dist.new_group(backend=b) for b in ("gloo", "gloo", "nccl" if on_gpu else "gloo")]
    return Links(w.rank, w.size, *groups, device)


@contextmanager
def solo() -> Iterator[None]:
    """Within, thinkgym's data-parallel helpers see one process (`distributed.world`, `distributed.active`)."""
    saved = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE")}
    os.environ.update(RANK="0", WORLD_SIZE="1")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


Buckets = dict[torch.dtype, list[torch.nn.Parameter]]


def weight_buckets(model: torch.nn.Module) -> Buckets:
    """The model's parameters grouped by dtype: each group travels as one flat buffer."""
    buckets: Buckets = {}
    for p in model.parameters():
        buckets.setdefault(p.dtype, []).append(p)
    return buckets


@torch.no_grad()
def flat_snapshot(buckets: Buckets) -> list[torch.Tensor]:
    """A copy of the weights, one flat buffer per dtype: the learner's next step may change its own at once."""
    return [torch.cat([p.detach().reshape(-1) for p in ps]) for ps in buckets.values()]


@torch.no_grad()
def load_flat(buckets: Buckets, flats: list[torch.Tensor]) -> None:
    """Copy `flat_snapshot`'s buffers into a model of the same parameters."""
    for ps, flat in zip(buckets.values(), flats):
        offset = 0
        for p in ps:
            p.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()


class WeightSync:
    """The model's parameters as one flat buffer per dtype, broadcast from rank 0 over the weight group. The
    learner's side snapshots its weights and broadcasts in the background, so that its next step can start.

    Up to `in_flight` versions may be on their way at once: a rollout rank joins version v's broadcast only
    when it reads its message, which can be after it ships a step that the learner has yet to take; waiting
    for v before publishing v + 1 could then wait for a rank that waits for the learner."""

    def __init__(self, model: torch.nn.Module, group: Any, in_flight: int = 1):
        self.group, self.in_flight = group, in_flight
        self.buckets = weight_buckets(model)
        self.pending: deque[tuple[list[Any], list[torch.Tensor]]] = deque()  # (works, snapshot) per version, oldest first

    def send(self) -> None:
        while len(self.pending) >= self.in_flight:  # its snapshot is still being read
            for work in self.pending.popleft()[0]:
                work.wait()
        snapshot = flat_snapshot(self.buckets)
        self.pending.append(([dist.broadcast(flat, 0, group=self.group, async_op=True) for flat in snapshot], snapshot))

    def wait(self) -> None:
        while self.pending:
            for work in self.pending.popleft()[0]:
                work.wait()

    @torch.no_grad()
    def receive(self) -> None:
        flats = []
        for dtype, ps in self.buckets.items():
            flats.append(torch.empty(sum(p.numel() for p in ps), dtype=dtype, device=ps[0].device))
            dist.broadcast(flats[-1], 0, group=self.group)
        load_flat(self.buckets, flats)


def message_width(cfg: GRPOConfig) -> int:
    return HEADER + cfg.prompts_per_step


@dataclass
class Message:
    """One of the learner's messages to a rollout worker (`kind`: COLLECT, WEIGHTS or STOP, see the module's
    docstring); `weights` is what a thread's WEIGHTS message hands over (a process's come by broadcast)."""

    kind: int
    a: int = 0
    b: int = 0
    seeds: list[int] = ()
    weights: Any = None


class RankChannel:
    """The learner's transport to rollout ranks: messages as int64 tensors, shipments as pickled objects over
    gloo, weights by `WeightSync`'s broadcast."""

    healthy = True  # a failed rank ends the whole torchrun job

    def __init__(self, cfg: GRPOConfig, links: Links, model: torch.nn.Module):
        self.cfg, self.links, self.ranks = cfg, links, links.rollout_ranks
        # when the learner publishes version v + 1, every rollout rank has read the messages up to its request for
        # step v (which it shipped), so it has joined every version up to v − k: at most k + 1 are still in flight
        self.weights = WeightSync(model, links.weights, in_flight=cfg.max_staleness + 2)
        self.sends: list[tuple[Any, torch.Tensor]] = []

    def tell(self, rank: int, message: Message) -> None:
        msg = torch.zeros(message_width(self.cfg), dtype=torch.int64)
        msg[:HEADER] = torch.tensor([message.kind, message.a, message.b, len(message.seeds)])
        msg[HEADER:HEADER + len(message.seeds)] = torch.tensor(list(message.seeds), dtype=torch.int64)
        if len(self.sends) > 64:  # a listening thread takes each message at once: these are long done
            for work, _ in self.sends[:32]:
                work.wait()
            del self.sends[:32]
        self.sends.append((dist.isend(msg, rank, group=self.links.messages), msg))

    def publish(self, version: int) -> None:
        for r in self.ranks:
            self.tell(r, Message(WEIGHTS, version))
        self.weights.send()

    def receive(self, rank: int) -> Shipment:
        box: list[Any] = [None]
        dist.recv_object_list(box, src=rank, group=self.links.shipments)
        return box[0]

    def close(self) -> None:
        self.weights.wait()
        for work, _ in self.sends:
            work.wait()


class RankEnd:
    """A rollout rank's end of `RankChannel`: a thread receives the learner's messages as they come (a gloo
    receive cannot be polled) into `mailbox`, up to STOP."""

    def __init__(self, cfg: GRPOConfig, links: Links, model: torch.nn.Module):
        self.cfg, self.links = cfg, links
        self.weights = WeightSync(model, links.weights)
        self.mailbox: queue.Queue[Message] = queue.Queue()
        self.listener = threading.Thread(target=self.listen, name="async-messages", daemon=True)

    def start(self) -> None:
        self.listener.start()

    def listen(self) -> None:
        while True:
            buf = torch.zeros(message_width(self.cfg), dtype=torch.int64)
            dist.recv(buf, 0, group=self.links.messages)
            kind, a, b, n, *seeds = buf.tolist()
            self.mailbox.put(Message(kind, a, b, seeds[:n]))
            if kind == STOP:
                return

    def load(self, message: Message) -> None:
        self.weights.receive()

    def ship(self, shipment: Shipment) -> None:
        dist.send_object_list([shipment], dst=0, group=self.links.shipments)

    def close(self) -> None:
        self.listener.join()


@dataclass
class ThreadFailure:
    """What a rollout thread ships instead of a batch when it fails: the learner re-raises it."""

    error: BaseException
    trace: str


class ThreadChannel:
    """The learner's transport to a rollout thread of its own process (one process, no torchrun): messages and
    shipments through queues, weights as snapshots that the thread copies into its own model.

    On a GPU the thread works on a CUDA stream of its own, so its decode runs beside the learner's kernels. A
    snapshot is taken on the learner's stream; the event recorded after it is what the thread's stream waits
    for before copying, and the thread marks the snapshot as used by its stream (`record_stream`), so that its
    memory is not reused until the copy is done."""

    ranks = [1]  # the thread stands for rollout rank 1 of a 2-process run: same seeds, same shares

    def __init__(self, cfg: GRPOConfig, model: torch.nn.Module, device: str | None):
        self.cfg, self.device = cfg, device
        self.buckets = weight_buckets(model)
        self.mailbox: queue.Queue[Message] = queue.Queue()
        self.shipments: queue.Queue[Shipment | ThreadFailure] = queue.Queue()
        self.thread = threading.Thread(target=self.serve, name="async-rollouts", daemon=True)
        self.failure: ThreadFailure | None = None

    @property
    def healthy(self) -> bool:
        return self.failure is None

    def serve(self) -> None:
        """The thread: a rollout worker on its own stream, until STOP; a failure is shipped to the learner."""
        try:
            cuda = self.device is not None and self.device.startswith("cuda")
            with torch.cuda.stream(torch.cuda.Stream(self.device)) if cuda else nullcontext():
                RolloutWorker(self.cfg, 1, 2, self.device, lambda model: ThreadEnd(model, self.mailbox, self.shipments)).serve()
        except BaseException as e:  # noqa: BLE001 — whatever ends the thread must reach the learner, not hang it
            self.shipments.put(ThreadFailure(e, traceback.format_exc()))

    def tell(self, rank: int, message: Message) -> None:
        if self.thread.ident is None:  # the thread starts with the first request (a run with no step left has none)
            if message.kind == STOP:
                return
            self.thread.start()
        self.mailbox.put(message)

    def publish(self, version: int) -> None:
        snapshot = flat_snapshot(self.buckets)
        ready = None
        if snapshot[0].is_cuda:
            ready = torch.cuda.Event()
            ready.record()
        self.tell(1, Message(WEIGHTS, version, weights=(snapshot, ready)))

    def receive(self, rank: int) -> Shipment:
        got = self.shipments.get()
        if isinstance(got, ThreadFailure):
            self.failure = got
            raise RuntimeError(f"the rollout thread failed with {type(got.error).__name__}: {got.error}\n"
                               f"its traceback:\n{got.trace}") from got.error
        return got

    def close(self) -> None:
        if self.thread.ident is not None:
            self.thread.join()


class ThreadEnd:
    """The rollout thread's end of `ThreadChannel`."""

    def __init__(self, model: torch.nn.Module, mailbox: queue.Queue[Message], shipments: queue.Queue):
        self.buckets, self.mailbox, self.shipments = weight_buckets(model), mailbox, shipments

    def start(self) -> None:
        pass

    def load(self, message: Message) -> None:
        snapshot, ready = message.weights
        if ready is not None:
            stream = torch.cuda.current_stream()
            stream.wait_event(ready)
            load_flat(self.buckets, snapshot)
            for flat in snapshot:
                flat.record_stream(stream)
        else:
            load_flat(self.buckets, snapshot)

    def ship(self, shipment: Shipment) -> None:
        self.shipments.put(shipment)

    def close(self) -> None:
        pass


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
        super().__init__(cfg, policy=policy)
        if self.openings is not None:
            raise ValueError(f"reward {cfg.reward!r} forces openings on each group, which the rollout ranks do not do: "
                             "use it with async_rollouts=False")
        if self.collector.env_state() is not None:
            raise ValueError(f"{cfg.env} keeps state across episodes (a curriculum), which would advance on the rollout ranks "
                             "and miss the learner's checkpoints: use it with async_rollouts=False")
        model = self.policy.model
        channel = ThreadChannel(cfg, model, str(self.policy.device)) if links is None else RankChannel(cfg, links, model)
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
