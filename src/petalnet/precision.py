"""The precision backbones run in: the one place that decides it.

``amp="auto"`` means float16 autocast on CUDA, bfloat16 on CPUs that compute it natively
(AVX-512 BF16 or AMX), and float32 elsewhere: on an AVX2-only CPU bfloat16 convolutions
are about 10x slower than float32. ``PETALNET_CPU_BF16=1`` (or ``0``) overrides the CPU
detection, for CPUs it does not know and to test the bfloat16 path anywhere.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from petalnet._types import Amp

__all__ = ["Amp", "autocast", "cpu_has_native_bf16", "resolve_precision"]


def cpu_has_native_bf16() -> bool:
    """Tell whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX on x86 Linux).

    ``PETALNET_CPU_BF16=1`` or ``=0`` in the environment overrides the detection.

    Returns:
        ``True`` where bfloat16 autocast pays off on this CPU.
    """
    forced = os.environ.get("PETALNET_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def resolve_precision(amp: Amp, device: torch.device) -> torch.dtype:
    """Pick the dtype backbones compute in.

    Args:
        amp: ``True``, ``False`` or ``"auto"``: float16 autocast on CUDA, bfloat16 on CPUs
            with native bfloat16 support, float32 elsewhere.
        device: Where the backbone runs.

    Returns:
        ``torch.float32`` (no autocast), ``torch.float16`` or ``torch.bfloat16``.

    Raises:
        ValueError: ``amp`` is not a bool nor ``"auto"``.
    """
    if amp not in (True, False, "auto"):
        raise ValueError(f"amp must be True, False or 'auto', got {amp!r}.")
    on = amp
    if amp == "auto":
        on = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    if not on or device.type not in ("cuda", "cpu"):
        return torch.float32
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype) -> AbstractContextManager[Any]:
    """Autocast to ``dtype`` on ``device``; nothing for float32.

    Args:
        device: Where the computation runs.
        dtype: From :func:`resolve_precision`.

    Returns:
        A context manager.
    """
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
