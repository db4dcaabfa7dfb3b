"""How the asynchronous trainer's learner and rollout workers talk (`async_grpo.py` holds the protocol).

Two transports with the same verbs. The learner's side (a channel): `tell` a worker a `Message`, `publish`
its weights as version v, `receive` a worker's next `Shipment`, `close`. A worker's side (an end): its
`mailbox` of messages, `load` a WEIGHTS message's weights into its model, `ship` a batch.
- Over process groups (torchrun): `RankChannel` / `RankEnd`; messages as int64 tensors and shipments as
  pickled objects over gloo, weights broadcast (NCCL on GPUs) by `WeightSync`.
- Within one process: `ThreadChannel` / `ThreadEnd`; queues, weights handed over as snapshots.
"""

from __future__ import annotations

import os
import queue
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .. import distributed
from .config import GRPOConfig
from .staleness import Shipment


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
    seeds: Sequence[int] = ()
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

    On a GPU the thread works on a CUDA stream of its own, of the highest priority, so its decode runs beside the
    learner's kernels and its blocks are scheduled before theirs (a graph replayed there takes its priority). A
    snapshot is taken on the learner's stream; the event recorded after it is what the thread's stream waits
    for before copying, and the thread marks the snapshot as used by its stream (`record_stream`), so that its
    memory is not reused until the copy is done."""

    ranks = [1]  # the thread stands for rollout rank 1 of a 2-process run: same seeds, same shares

    def __init__(self, model: torch.nn.Module, device: str | None, run_worker: Callable[[Callable[[torch.nn.Module], ThreadEnd]], None]):
        """`run_worker(end)` builds the rollout worker on the thread's end (`end(model)`) and serves until STOP."""
        self.device, self.run_worker = device, run_worker
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
            # the highest priority: the learner's large kernels would otherwise hold every SM while each of the
            # decode step's few hundred small ones waits its turn (a lower number is a higher priority)
            with torch.cuda.stream(torch.cuda.Stream(self.device, priority=-100)) if cuda else nullcontext():
                self.run_worker(lambda model: ThreadEnd(model, self.mailbox, self.shipments))
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
