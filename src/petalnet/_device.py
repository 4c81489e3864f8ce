"""Choosing the device to compute on."""

from __future__ import annotations

import torch

from petalnet.errors import PetalnetError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Turn ``"auto"``/``None`` into the best available device (cuda > mps > cpu).

    Args:
        device: ``"auto"``, ``None``, or anything ``torch.device`` accepts.

    Returns:
        The device.

    Raises:
        PetalnetError: The named device is not available on this machine.
    """
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PetalnetError(
            f"device={str(device)!r} was asked for but CUDA is not available here; "
            "use device='auto' or 'cpu'."
        )
    return dev
