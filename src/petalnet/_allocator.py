"""Keeping large CPU buffers in the heap between batches (glibc's malloc).

A CPU forward pass allocates and frees the same few activation buffers, each some
megabytes, on every batch. glibc serves a block larger than its *mmap threshold* with a
fresh ``mmap`` and gives it back with ``munmap`` when it is freed, so the next batch page-faults
and zeroes the same memory again; the threshold starts at 128 KiB and only rises (to at most
32 MiB) once the process happens to free such a block. Whether a run is fast then depends
on what it happened to free earlier: the head-only epochs of ``best-cpu`` ran 3.1 s or
6.6 s over the same rows, decided by that alone (docs/benchmarks.md, "best-cpu again").

:func:`keep_cpu_buffers` sets both thresholds once, to the values glibc itself reaches
after freeing a 32 MiB block: blocks up to 32 MiB come from the heap and up to 64 MiB of
free heap is kept instead of trimmed, so the buffers are reused. It changes nothing where
the C library is not glibc, where the user tuned malloc already (``MALLOC_*`` variables,
``GLIBC_TUNABLES``), or with ``PETALNET_MALLOC=default``.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import sys
from collections.abc import Mapping

__all__ = ["keep_cpu_buffers"]

_M_TRIM_THRESHOLD = -1  # mallopt parameters, <malloc.h>
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for its own dynamic threshold on 64-bit
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # what glibc pairs with it

_USER_TUNED = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether petalnet should tune malloc, given the environment (and this platform).

    Args:
        environ: The environment variables.

    Returns:
        ``False`` on a C library other than glibc, where the user tuned malloc, or with
        ``PETALNET_MALLOC`` set to ``default``, ``0`` or ``off``; ``True`` otherwise.
    """
    if environ.get("PETALNET_MALLOC", "").strip().lower() in {"default", "0", "off"}:
        return False
    if any(name in environ for name in _USER_TUNED):
        return False
    if "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""):
        return False
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@functools.cache
def keep_cpu_buffers() -> bool:
    """Set glibc's mmap and trim thresholds once per process (see the module docstring).

    Returns:
        Whether both were set.
    """
    if not wanted(os.environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # a static or unusual libc: leave it alone
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
