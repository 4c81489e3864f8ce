"""Running under ``torchrun``: process group set-up, sharding and gathering.

petalnet needs no code change to run on several processes: under ``torchrun`` (which sets
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``) ``fit`` joins the process group (NCCL on GPUs,
gloo on CPUs), splits feature extraction across ranks, trains the classifier with
``DistributedDataParallel`` on a shard of every epoch, reduces the validation metrics, and
only rank 0 prints and saves.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

__all__ = [
    "all_reduce_sum",
    "broadcast_seed",
    "gather",
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


def gather(local: Sequence[T]) -> list[T]:
    """Concatenate every rank's list, in rank order (identity outside ``torchrun``)."""
    if world_size() == 1:
        return list(local)
    parts: list[list[T] | None] = [None] * world_size()
    dist.all_gather_object(parts, list(local))
    return [item for part in parts for item in (part or [])]


def broadcast_seed(seed: int | None) -> int | None:
    """Rank 0's seed on every rank, so all ranks shuffle alike (drawn if ``None``)."""
    if world_size() == 1:
        return seed
    box = [seed if seed is not None else int(torch.randint(2**31 - 1, ()).item())]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Sum numbers over ranks (identity outside ``torchrun``)."""
    if world_size() == 1:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
