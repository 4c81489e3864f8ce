"""Where the rows of one pass live: one array, in memory when small, else memory-mapped.

Extraction writes each batch into its slot of one ``(N, D)`` or ``(V, N, D)`` array made
here, and training gathers its batches from it by index. An array over
:data:`IN_MEMORY_BYTES` is a ``numpy.memmap`` of an unnamed temporary file (in
``tempfile.gettempdir()``; set ``TMPDIR`` to a disk folder where ``/tmp`` is a RAM disk):
its pages belong to the page cache, which the kernel writes out and drops under pressure,
so a process's own memory stays the size of a batch whatever ``N`` is. The file has no name
from the start, so nothing is left behind, even after ``kill -9``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["IN_MEMORY_BYTES", "compact", "empty_rows"]

IN_MEMORY_BYTES = 32 * 1024**2
"""Arrays up to this size stay in memory (a constant: memory does not grow with ``N``)."""

_NUMPY = {torch.float32: np.float32, torch.float16: np.float16}


def empty_rows(shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised CPU tensor of ``shape``, file-backed when large.

    Args:
        shape: ``(N, D)`` or ``(V, N, D)``.
        dtype: ``torch.float32`` or ``torch.float16``.

    Returns:
        The tensor (sharing memory with a ``numpy.memmap`` when large).
    """
    shape = tuple(int(s) for s in shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * torch.finfo(dtype).bits // 8
    if nbytes <= IN_MEMORY_BYTES or dtype not in _NUMPY:
        return torch.empty(shape, dtype=dtype)
    with tempfile.TemporaryFile(prefix="petalnet-rows-") as f:  # the map outlives the file
        mapped = np.memmap(f, dtype=_NUMPY[dtype], mode="w+", shape=shape)
    return torch.from_numpy(mapped)


def compact(rows: torch.Tensor, kept: torch.Tensor, block: int = 4096) -> torch.Tensor:
    """Move rows ``kept`` (ascending) to the front of ``rows``, in place, block by block.

    Args:
        rows: ``(N, ...)`` rows, some of them unused.
        kept: Ascending indices of the rows to keep.
        block: Rows moved at a time (bounds the temporary copy).

    Returns:
        ``rows[:len(kept)]``, holding the kept rows in order (no copy when all are kept).
    """
    if len(kept) == len(rows):
        return rows
    # each target index is at most its source and blocks go in ascending order, so a block
    # never overwrites a row that a later block still has to read
    for start in range(0, len(kept), block):
        part = kept[start : start + block]
        rows[start : start + len(part)] = rows[part]
    return rows[: len(kept)]
