"""Running under ``torchrun``: process group set-up, sharding and gathering.

petalnet needs no code change to run on several processes: under ``torchrun`` (which sets
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``) the image pipeline joins the process group
(NCCL on GPUs, each rank on its own ``LOCAL_RANK`` GPU; gloo on CPUs). Each rank extracts and
keeps only its share of the rows (every ``world``-th image) and trains on it with
``DistributedDataParallel``; only labels, counts, metrics and the outputs of prediction
travel between ranks, as tensors. Only rank 0 prints and saves.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

__all__ = [
    "all_reduce_max",
    "all_reduce_sum",
    "broadcast_seed",
    "from_main",
    "gather_objects",
    "gather_tensor",
    "init",
    "is_main",
    "local_device",
    "rank",
    "shard",
    "world_size",
]

T = TypeVar("T")


def _launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> bool:
    """Join the process group when launched by ``torchrun``; return whether distributed."""
    if not dist.is_available() or not _launched():
        return False
    if device.type == "cuda":  # NCCL stages collectives on the current device
        torch.cuda.set_device(local_device(device))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return True


def world_size() -> int:
    """Number of processes (1 outside ``torchrun``)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 outside ``torchrun``)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process logs and saves."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """On CUDA under ``torchrun``, this rank's own GPU (``LOCAL_RANK``)."""
    index: int | None = device.index  # torch's stubs say int; it is None for "cuda"
    if device.type == "cuda" and _launched() and index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of ``items`` (every ``world_size``-th, from ``rank``)."""
    return list(items[rank() :: world_size()])


def gather_objects(local: Sequence[T]) -> list[T]:
    """Concatenate every rank's (short) list, in rank order (identity outside ``torchrun``)."""
    if world_size() == 1:
        return list(local)
    parts: list[list[T] | None] = [None] * world_size()
    dist.all_gather_object(parts, list(local))
    return [item for part in parts for item in (part or [])]


def from_main(value: T) -> T:
    """Rank 0's ``value`` on every rank (``value`` itself outside ``torchrun``)."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_seed(seed: int | None) -> int | None:
    """Rank 0's seed on every rank, so all ranks shuffle alike (drawn if ``None``)."""
    if world_size() == 1:
        return seed
    return from_main(seed if seed is not None else int(torch.randint(2**31 - 1, ()).item()))


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Sum numbers over ranks (identity outside ``torchrun``)."""
    if world_size() == 1:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=_wire())
    dist.all_reduce(t)
    return t.tolist()


def _wire() -> torch.device:
    """Where collectives take their tensors: the current GPU for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_tensor(local: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows along dimension 0, in rank order, on the CPU.

    Ranks may hold different numbers of rows (padded for the collective, then cut).

    Args:
        local: This rank's ``(n, ...)`` rows.

    Returns:
        ``(sum of n, ...)`` rows (``local`` itself outside ``torchrun``).
    """
    if world_size() == 1:
        return local
    if local.dtype == torch.bool:  # not every backend reduces booleans
        return gather_tensor(local.to(torch.uint8)).bool()
    wire = _wire()
    counts = torch.zeros(world_size(), dtype=torch.long, device=wire)
    counts[rank()] = len(local)
    dist.all_reduce(counts)
    most = int(counts.max())
    # a rank with no rows may not know their width (an empty (0, 0) tensor): the widest wins
    trailing = torch.tensor(local.shape[1:], dtype=torch.long, device=wire)
    if len(trailing):
        dist.all_reduce(trailing, op=dist.ReduceOp.MAX)
    shape = tuple(int(d) for d in trailing.tolist())
    if not len(local):
        local = local.reshape(0, *shape)
    padded = torch.zeros((most, *shape), dtype=local.dtype, device=wire)
    padded[: len(local)] = local.to(wire)
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(n)].cpu() for p, n in zip(parts, counts.tolist(), strict=True)])


def all_reduce_max(value: int) -> int:
    """The largest ``value`` over ranks (``value`` outside ``torchrun``)."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.long, device=_wire())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())
