"""Data parallelism for `thinkgym train` under `torchrun`, on torch.distributed and DDP.

`torchrun --nproc-per-node N` starts N copies of the same command and sets RANK, WORLD_SIZE and
LOCAL_RANK. Each rank collects its share of the step's groups (`shard`), the loss is normalised by
counts summed over every rank (`all_reduce`), and DDP all-reduces the gradients. DDP averages
gradients over ranks while each rank's loss is already its part of the global loss, so the trainer
multiplies the loss by the world size: the update is then the one-process update on the union of
the ranks' rows. Without torchrun every helper is the one-process identity.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the ranks that torchrun started."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the logs and checkpoints."""
        return self.rank == 0


def world() -> World:
    """From torchrun's RANK / WORLD_SIZE / LOCAL_RANK; one process where they are unset."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def is_main() -> bool:
    return world().is_main


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def setup(device: str | None) -> str | None:
    """Join the process group (once per process) when torchrun started several; return the device
    this rank trains on: cuda:LOCAL_RANK with NCCL where there is a GPU, else the CPU with gloo."""
    w = world()
    if w.size == 1:
        return device
    if device is not None and device.startswith("cuda:"):
        raise ValueError(f"device={device!r}: under torchrun each rank uses cuda:LOCAL_RANK; "
                         "pass device 'cuda' or 'cpu', or leave it unset")
    cuda = torch.cuda.is_available() and device != "cpu"
    if cuda:
        torch.cuda.set_device(w.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", device_id=torch.device("cuda", w.local_rank) if cuda else None)
    return f"cuda:{w.local_rank}" if cuda else "cpu"


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_seed(seed: int) -> int:
    """A sampling seed per rank, so ranks do not draw the same random numbers; `seed` itself on rank 0."""
    w = world()
    return seed * w.size + w.rank


def shard(items: Sequence[T]) -> list[T]:
    """This rank's contiguous share of `items`: concatenated in rank order, the shares are `items`."""
    w = world()
    n = len(items)
    return list(items[w.rank * n // w.size:(w.rank + 1) * n // w.size])


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce(values: Sequence[float], op: str = "sum") -> list[float]:
    """Element-wise sum (or max) of `values` over the ranks, in float64."""
    if op not in ("sum", "max"):
        raise ValueError(f"op={op!r} is unknown; valid ops: ['sum', 'max']")
    if not active():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t.tolist()


def gather(obj: T) -> list[T]:
    """Every rank's `obj` (any picklable object), in rank order, on every rank."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def global_means(parts: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Means over every rank from this rank's (sum, count) per key; keys some ranks lack count as empty there."""
    total: dict[str, list[float]] = {}
    for rank_parts in gather(parts):
        for k, (s, n) in rank_parts.items():
            acc = total.setdefault(k, [0.0, 0.0])
            acc[0] += s
            acc[1] += n
    return {k: s / n for k, (s, n) in total.items() if n > 0}


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module to run forward/backward through: DDP under torchrun, the model itself otherwise."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    on_cuda = next(model.parameters()).device.type == "cuda"
    return DistributedDataParallel(model, device_ids=[world().local_rank] if on_cuda else None)


def accumulate(model: torch.nn.Module, last: bool) -> contextlib.AbstractContextManager:
    """Around one micro-batch's backward: DDP's `no_sync` (gradients accumulate locally) unless it is
    the optimizer step's last micro-batch, whose backward all-reduces the accumulated gradients."""
    return model.no_sync() if hasattr(model, "no_sync") and not last else contextlib.nullcontext()


def broadcast_module(model: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (after work each rank did on its own)."""
    if active():
        for t in model.state_dict().values():
            dist.broadcast(t, 0)


def barrier() -> None:
    if active():
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """True on every rank if it is true on any (a stop signal seen by one rank stops them all)."""
    return all_reduce([float(flag)], "max")[0] > 0


def gather_flat(items: Sequence[T]) -> list[T]:
    """Every rank's items concatenated in rank order: for `shard`ed work, the one-process list."""
    return [x for part in gather(list(items)) for x in part]
