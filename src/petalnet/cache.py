"""Where the on-disk cache lives, and what identifies a backbone's parameters in it.

The cache itself is the row store (:mod:`petalnet.rowstore`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

__all__ = ["default_cache_dir", "parameter_fingerprint"]


def default_cache_dir() -> Path:
    """``$PETALNET_CACHE_DIR``, else ``$XDG_CACHE_HOME/petalnet``, else ``~/.cache/petalnet``."""
    env = os.environ.get("PETALNET_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "petalnet"


def parameter_fingerprint(module: torch.nn.Module) -> str:
    """Hash every parameter and buffer of ``module`` (names, shapes, dtypes and bytes)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
