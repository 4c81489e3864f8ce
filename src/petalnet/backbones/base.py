"""The object every backbone builder returns: a network plus what petalnet must know of it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from petalnet.errors import WeightsUnavailableError
from petalnet.preprocessing import Preprocessing

__all__ = [
    "FeatureExtractor",
    "WeightsArg",
    "is_weights_path",
    "load_state_into",
    "load_weights_file",
]

WeightsArg = str | os.PathLike[str] | None
"""What a ``weights`` argument may be: a named set (``"DEFAULT"``), a file path, or ``None``."""


class FeatureExtractor(nn.Module):
    """A backbone network that maps an image batch ``(N, 3, H, W)`` to features ``(N, D)``.

    Backbone builders (see :func:`petalnet.register_backbone`) return one of these. It wraps
    the network ``body`` and carries the metadata a classifier needs to train on it and to
    rebuild it from a checkpoint.

    Args:
        body: The network, with its ImageNet classifier removed.
        feature_dim: ``D``, the length of one image's feature vector.
        preprocessing: The resize/crop/normalisation the weights were trained with.
        weights: Identifier of the weights loaded (e.g. ``"IMAGENET1K_V1"``), ``None`` for a
            random initialisation.
        restorable: Whether calling the builder again with ``weights`` gives the same
            parameters on another machine. When ``False`` (random init, a local file),
            checkpoints store the backbone's parameters too.
    """

    def __init__(
        self,
        body: nn.Module,
        *,
        feature_dim: int,
        preprocessing: Preprocessing,
        weights: str | None = None,
        restorable: bool = True,
    ) -> None:
        super().__init__()
        self.body = body
        self.feature_dim = int(feature_dim)
        self.preprocessing = preprocessing
        self.weights = weights
        self.restorable = bool(restorable) and weights is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the flattened features of an image batch."""
        return torch.flatten(self.body(x), 1)


def is_weights_path(weights: WeightsArg) -> bool:
    """Tell whether ``weights`` names a local file rather than a named weights set.

    Args:
        weights: The ``weights`` argument given to a builder.

    Returns:
        ``True`` for path objects and for strings that look like file paths.
    """
    if weights is None:
        return False
    if isinstance(weights, os.PathLike):
        return True
    s = str(weights)
    return os.sep in s or "/" in s or s.endswith((".pth", ".pt", ".bin", ".safetensors"))


def load_weights_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a state dict from a local file without executing code.

    Args:
        path: A ``.pth``/``.pt`` file saved with ``torch.save`` or a ``.safetensors`` file.

    Returns:
        The state dict (a ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is unwrapped).

    Raises:
        WeightsUnavailableError: The file does not exist or holds no readable state dict.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsUnavailableError(f"Weights file {str(p)!r} does not exist; check the path.")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file  # optional dependency

            state: Any = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file ends here, with its name
        raise WeightsUnavailableError(
            f"Cannot read weights file {str(p)!r} ({type(exc).__name__}: {exc}); "
            "pass a state dict saved with torch.save or safetensors."
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailableError(
            f"Weights file {str(p)!r} does not hold a state dict of tensors."
        )
    return state


def load_state_into(
    model: nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike[str], name: str
) -> None:
    """Load ``state`` into ``model``, turning a mismatch into one clear error.

    Args:
        model: The network to fill.
        state: Its state dict.
        source: Where ``state`` came from (named in the error).
        name: The backbone's name (named in the error).

    Raises:
        WeightsUnavailableError: Keys or shapes do not fit ``model``.
    """
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise WeightsUnavailableError(
            f"Weights file {str(source)!r} does not fit {name!r}: {str(exc).splitlines()[0]}"
        ) from None
