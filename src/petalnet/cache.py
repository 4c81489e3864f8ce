"""On-disk cache of backbone features, so a second ``fit`` on the same images skips the backbone.

Layout: ``<root>/<namespace>/<ab>/<key>.npy``, one vector per image view (float32, or
float16 for a cache opened with ``dtype="float16"``: the frozen-layer outputs of partial
fine-tuning, which are large).

* The **namespace** is a hash of everything that shapes a feature: backbone name, a
  fingerprint of its parameters, preprocessing, precision, and the petalnet/torchvision
  versions. Change any of them and the old entries are simply never looked at again.
* The **key** hashes the image's absolute path, size and modification time, and the view
  (centre crop or the k-th augmented view). An edited or replaced file gets a new key.
* Entries are written atomically (temporary file, then rename). The cache is **bounded**:
  after writing, the least recently used files are deleted until the whole root fits in
  ``max_bytes``. Deleting the folder at any time is safe; it is rebuilt on demand.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

from petalnet._version import __version__

__all__ = [
    "CACHE_FORMAT",
    "DEFAULT_MAX_BYTES",
    "FeatureCache",
    "default_cache_dir",
    "parameter_fingerprint",
]

CACHE_FORMAT = 1
DEFAULT_MAX_BYTES = 10 * 1024**3


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


class FeatureCache:
    """Feature vectors on disk for one backbone configuration.

    Args:
        root: Folder of the whole cache (all namespaces share its size bound).
        namespace: JSON-compatible description of what shapes the features.
        max_bytes: Size bound of ``root``; least recently used entries go first.
        dtype: How vectors are stored (``"float32"`` or ``"float16"``); part of the
            namespace, so the two never mix.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        namespace: Mapping[str, Any],
        max_bytes: int = DEFAULT_MAX_BYTES,
        dtype: str = "float32",
    ) -> None:
        self.root = Path(root).expanduser()
        self.dtype = np.dtype(dtype)
        described = {
            "cache_format": CACHE_FORMAT,
            "petalnet": __version__,
            "torchvision": torchvision.__version__,
            **namespace,
            **({} if self.dtype == np.float32 else {"stored_as": self.dtype.name}),
        }
        blob = json.dumps(described, sort_keys=True, default=str)
        self.namespace = hashlib.blake2b(blob.encode(), digest_size=12).hexdigest()
        self.dir = self.root / self.namespace
        self.description = described
        self.max_bytes = int(max_bytes)
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(path: str | os.PathLike[str], view: str = "center") -> str:
        """Key of one image view: absolute path, size, modification time and view name."""
        p = Path(path).resolve()
        st = p.stat()
        raw = f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0{view}"
        return hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()

    def _file(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        """Return the cached vector, or ``None`` (also for an unreadable entry)."""
        f = self._file(key)
        try:
            arr: np.ndarray = np.load(f, allow_pickle=False)
            os.utime(f)  # mark as recently used
        except (OSError, ValueError):
            self.misses += 1
            return None
        self.hits += 1
        return arr

    def put(self, key: str, vector: np.ndarray) -> None:
        """Store one vector atomically; a failure to write only costs the cache entry."""
        f = self._file(key)
        try:
            if not self.dir.exists():
                self.dir.mkdir(parents=True, exist_ok=True)
                (self.dir / "namespace.json").write_text(
                    json.dumps(self.description, indent=2, sort_keys=True, default=str)
                )
            f.parent.mkdir(exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=f.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as out:
                np.save(out, np.ascontiguousarray(vector, dtype=self.dtype), allow_pickle=False)
            os.replace(tmp, f)
        except OSError:
            return

    def prune(self) -> int:
        """Delete least recently used entries until the root fits ``max_bytes``.

        Returns:
            Number of bytes freed.
        """
        entries = []
        for f in self.root.glob("*/*/*.npy"):
            try:
                st = f.stat()
            except OSError:
                continue
            entries.append((st.st_mtime, st.st_size, f))
        total = sum(size for _, size, _ in entries)
        freed = 0
        for _, size, f in sorted(entries, key=lambda e: e[0]):
            if total - freed <= self.max_bytes:
                break
            f.unlink(missing_ok=True)
            freed += size
        return freed
