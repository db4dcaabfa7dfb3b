"""Data parallelism for `thinkgym train` under `torchrun`, on torch.distributed, with DDP or FSDP2.

`torchrun --nproc-per-node N` starts N copies of the same command and sets RANK, WORLD_SIZE and
LOCAL_RANK. Each rank collects its share of the step's groups (`shard`), the loss is normalised by
counts summed over every rank (`all_reduce`), and DDP all-reduces the gradients. DDP averages
gradients over ranks while each rank's loss is already its part of the global loss, so the trainer
multiplies the loss by the world size: the update is then the one-process update on the union of
the ranks' rows. Without torchrun every helper is the one-process identity.

With `parallelism="fsdp"` the learner trains `sharded_copy`, an fp32 copy of the policy sharded with
FSDP2's `fully_shard` (whose reduce-scatter averages over ranks as DDP does), while each rank keeps the
policy's own whole model for its rollouts: `gather_into` refreshes it after every optimizer step.
`save_sharded` / `load_sharded` checkpoint the shards with torch.distributed.checkpoint (DCP).
"""

from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Sized, TypeVar

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
    """Whether this rank shares its work with others. False where the environment says one process, even in a
    process group: the asynchronous trainer's ranks each run one-process code (`learner/async_grpo.py`)."""
    return world().size > 1 and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


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


def rank_slice(parts: Sequence[Sized]) -> slice:
    """Where this rank's part lies in the concatenation of every rank's `parts` (`gather`'s list, rank order)."""
    rank = world().rank
    start = sum(len(p) for p in parts[:rank])
    return slice(start, start + len(parts[rank]))


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
    the optimizer step's last micro-batch, whose backward all-reduces the accumulated gradients. An FSDP2
    model reduce-scatters every micro-batch's gradients into its sharded ones (no unsharded copy is kept)."""
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


# -- FSDP2 (parallelism="fsdp") -------------------------------------------------------------------

def sharded_copy(model: torch.nn.Module, compute_dtype: torch.dtype, gradient_checkpointing: bool = False) -> torch.nn.Module:
    """An fp32 copy of `model`, sharded over the ranks with FSDP2: each decoder layer (the classes in the
    model's `_no_split_modules`) is one `fully_shard` unit, the rest is the root's. The fp32 shards are
    the master weights; forward and backward run in `compute_dtype`, and gradients are reduce-scattered
    in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    train = copy.deepcopy(model).float()  # .float() converts one parameter at a time, freeing each 16-bit one
    if gradient_checkpointing:
        train.gradient_checkpointing_enable()
    mp = MixedPrecisionPolicy(param_dtype=None if compute_dtype == torch.float32 else compute_dtype, reduce_dtype=torch.float32)
    units = set(getattr(train, "_no_split_modules", None) or ())
    for module in list(train.modules())[1:]:
        if type(module).__name__ in units:
            fully_shard(module, mp_policy=mp)
    fully_shard(train, mp_policy=mp)
    return train


@torch.no_grad()
def gather_into(sharded: torch.nn.Module, target: torch.nn.Module) -> None:
    """Copy the sharded module's whole weights into `target` (the same model, whole on every rank), in
    place and in target's dtype: one all-gather per parameter, of shards already cast to that dtype."""
    for (name, p), (target_name, t) in zip(sharded.named_parameters(), target.named_parameters()):
        if name != target_name:
            raise RuntimeError(f"the sharded model's parameter {name!r} meets {target_name!r} in the rollout copy")
        t.copy_(p.detach().to(t.dtype).full_tensor())


def load_whole(sharded: torch.nn.Module, source: torch.nn.Module) -> None:
    """The reverse of `gather_into`: each rank takes its shards of `source`'s whole weights."""
    from torch.distributed.checkpoint import state_dict as dsd

    dsd.set_model_state_dict(sharded, source.state_dict(), options=dsd.StateDictOptions(full_state_dict=True))


def save_sharded(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every rank writes its shards of the model and of the optimizer state (DCP); a collective.

    An optimizer that has not stepped yet is left out: `get_optimizer_state_dict` would initialise its
    state with a step, and the run would no longer be the one that never saved."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import state_dict as dsd

    state = {"model": dsd.get_model_state_dict(model)}
    if optimizer.state:
        state["optimizer"] = dsd.get_optimizer_state_dict(model, optimizer)
    dcp.save(state, checkpoint_id=str(path))


def load_sharded(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load `save_sharded`'s shards into the model and optimizer, resharded to this number of ranks."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import state_dict as dsd

    saved = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    state = {"model": dsd.get_model_state_dict(model)}
    if any(k.startswith("optimizer.") for k in saved):
        state["optimizer"] = dsd.get_optimizer_state_dict(model, optimizer)  # a template, overwritten by the load
    dcp.load(state, checkpoint_id=str(path))
    dsd.set_model_state_dict(model, state["model"])
    if "optimizer" in state:
        dsd.set_optimizer_state_dict(model, optimizer, state["optimizer"])
