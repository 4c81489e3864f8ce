"""Checkpoint files: one self-describing ``torch.save`` file of tensors and plain values.

Loading uses ``torch.load(weights_only=True)``, which refuses anything but tensors and
plain containers, so a checkpoint can never execute code. Saving writes a temporary file
and renames it over the target, so a crash mid-save never leaves a half-written file in
place of a good one. Every tensor is stored on the CPU, so a GPU-trained checkpoint loads
anywhere.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from petalnet.errors import CheckpointError

__all__ = ["FORMAT", "FORMAT_VERSION", "read_checkpoint", "to_cpu", "write_checkpoint"]

FORMAT = "petalnet.checkpoint"
FORMAT_VERSION = 1
_REQUIRED = ("backbone", "head", "classes", "preprocessing")


def to_cpu(obj: Any) -> Any:
    """Return ``obj`` with every tensor inside (dicts, lists, tuples) moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def write_checkpoint(payload: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``payload`` atomically to ``path``, tensors on the CPU.

    Args:
        payload: The checkpoint content (see ``FlowerClassifier.save``).
        path: Target file; parent folders are created.

    Returns:
        The path written.

    Raises:
        CheckpointError: The file cannot be written (the message names it).
    """
    target = Path(path).expanduser()
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, **to_cpu(payload)}
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise CheckpointError(f"Cannot write checkpoint {str(target)!r}: {exc}") from None
    return target


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a checkpoint written by :func:`write_checkpoint`, without running code.

    Args:
        path: The checkpoint file.

    Returns:
        The checkpoint content, tensors on the CPU.

    Raises:
        CheckpointError: The file is missing, truncated, unsafe (holds pickled objects other
            than tensors and plain containers), from another program, or from a newer
            petalnet.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"Checkpoint {str(p)!r} does not exist; check the path.")
    try:
        with warnings.catch_warnings():  # torch's note on foreign pickle protocols is noise here
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            data = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if found:
            raise CheckpointError(
                f"Refusing to load {str(p)!r}: it holds a pickled {found.group(1)} object, "
                "which could run code; petalnet checkpoints hold only tensors and plain values."
            ) from None
        raise CheckpointError(
            f"Cannot read checkpoint {str(p)!r}: the file is truncated or is not a petalnet "
            "checkpoint (UnpicklingError)."
        ) from None
    except Exception as exc:
        raise CheckpointError(
            f"Cannot read checkpoint {str(p)!r}: the file is truncated or is not a petalnet "
            f"checkpoint ({type(exc).__name__})."
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(p)!r} is not a petalnet checkpoint (no {FORMAT!r} marker); "
            "create one with FlowerClassifier.save or `petalnet train`."
        )
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{str(p)!r} uses checkpoint format {version!r}, newer than this petalnet reads "
            f"({FORMAT_VERSION}); upgrade petalnet (pip install -U petalnet)."
        )
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise CheckpointError(f"Checkpoint {str(p)!r} is incomplete: no {', '.join(missing)}.")
    return data
