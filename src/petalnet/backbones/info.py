"""Facts about a backbone without downloading or initialising it: size, features, weights."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from petalnet.backbones.registry import build_backbone, weights_status

__all__ = ["backbone_info"]

_INIT_FUNCTIONS = (
    "kaiming_normal_",
    "kaiming_uniform_",
    "normal_",
    "uniform_",
    "zeros_",
    "ones_",
    "constant_",
    "trunc_normal_",
    "xavier_uniform_",
    "xavier_normal_",
    "orthogonal_",
)


@contextlib.contextmanager
def _skip_init() -> Iterator[None]:
    """Make ``torch.nn.init`` a no-op: parameters are allocated but not filled."""
    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in _INIT_FUNCTIONS:
            setattr(torch.nn.init, name, lambda tensor, *a, **k: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def backbone_info(name: str) -> dict[str, Any]:
    """Feature size, parameter count and weights availability of a backbone.

    The network is built without weights on the ``meta`` device (no memory, no compute),
    or with initialisation skipped where a builder cannot run on ``meta``.

    Args:
        name: A registered backbone name.

    Returns:
        ``name``, ``feature_dim``, ``parameters`` and ``blocks`` (the names of the blocks
        ``strategy="freeze_unfreeze"`` can unfreeze, first to last; ``None`` when the
        builder failed), and ``offline`` (see :func:`~petalnet.backbones.registry.weights_status`).
    """
    fx = None
    for context in (torch.device("meta"), _skip_init()):
        try:
            with context:
                fx = build_backbone(name, weights=None)
            break
        except Exception:
            continue
    return {
        "name": name,
        "feature_dim": fx.feature_dim if fx is not None else None,
        "parameters": sum(p.numel() for p in fx.parameters()) if fx is not None else None,
        "blocks": fx.block_names if fx is not None else None,
        "offline": weights_status(name),
    }
