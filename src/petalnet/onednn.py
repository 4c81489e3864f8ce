"""Frozen CPU convolutions as one prepacked oneDNN call each, their ReLU fused in.

An eager ``nn.Conv2d`` on the CPU hands oneDNN its weight in PyTorch's plain layout on
every call: oneDNN reorders it into its blocked layout each time, under autocast the
weight is cast to bfloat16 first, and the ReLU6 after it is a second pass over the whole
activation. :func:`pack_convolutions` gives a frozen, BN-folded copy
(:func:`~petalnet.features.prepare_backbone`) what Inductor's ``freezing`` pass emits,
without compiling anything: the weight reordered (and cast) once per input shape by
``torch.ops.mkldnn._reorder_convolution_weight``, and the convolution with its ReLU or
ReLU6 in one ``torch.ops.mkldnn._convolution_pointwise`` call. The sums are the same;
lite0's front ran 1.12x faster in float32 held to AVX2 and about 1.9x faster in bfloat16
on AMX (docs/benchmarks.md, "Speed levers").

Only the module that computes rows is packed (``ImagePipeline.runner``); saved models,
exports and the int8 path keep plain convolutions. ``PETALNET_ONEDNN=0`` turns packing
off (to measure against it, or where a build's oneDNN misbehaves).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

__all__ = ["PackedConv2d", "onednn_available", "pack_convolutions"]

_SHAPES_KEPT = 8
"""Input shapes whose packed weight a convolution keeps (batch sizes and crop sizes met)."""

_ACTIVATIONS: dict[type[nn.Module], tuple[str, list[float]]] = {
    nn.ReLU6: ("hardtanh", [0.0, 6.0]),
    nn.ReLU: ("relu", []),
}


def onednn_available() -> bool:
    """Whether this torch has oneDNN's packed convolution and it is not turned off.

    Returns:
        ``False`` with ``PETALNET_ONEDNN=0``, or where torch was built without oneDNN.
    """
    if os.environ.get("PETALNET_ONEDNN", "").strip() == "0":
        return False
    ops = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
        and hasattr(ops, "_convolution_pointwise")
        and hasattr(ops, "_reorder_convolution_weight")
    )


class PackedConv2d(nn.Module):
    """A frozen convolution (and the activation after it) as one oneDNN call.

    Inference only: it computes no gradients. Under CPU autocast it computes in the
    autocast dtype, as ``nn.Conv2d`` would, and returns that dtype.

    Args:
        conv: The frozen convolution (zero padding; EfficientNet-Lite's ``_SameConv2d``
            included: its strided "SAME" padding becomes a grown kernel, as there).
        activation: ``"none"``, ``"relu"`` or ``"hardtanh"``.
        scalars: The activation's arguments (``[0.0, 6.0]`` for ReLU6).
    """

    def __init__(self, conv: nn.Conv2d, activation: str = "none", scalars: Any = ()) -> None:
        super().__init__()
        self.conv = conv
        self.activation = activation
        self.scalars = [float(s) for s in scalars]
        self._packed: OrderedDict[tuple[Any, ...], tuple[torch.Tensor, Any, list[int]]] = (
            OrderedDict()
        )

    def _pack(self, x: torch.Tensor, dtype: torch.dtype) -> tuple[Any, Any, list[int]]:
        key = (*x.shape, dtype)
        got = self._packed.get(key)
        if got is not None:
            self._packed.move_to_end(key)
            return got
        c = self.conv
        grown = getattr(c, "grown_kernel", None)  # lite's "SAME" strided padding
        if callable(grown):
            weight, padding = grown(x.shape[-2:])
        else:
            weight, padding = c.weight, list(c.padding)  # never str: see _packable
        weight = weight.detach().to(dtype).contiguous()
        bias = None if c.bias is None else c.bias.detach().to(dtype)
        packed = torch.ops.mkldnn._reorder_convolution_weight(
            weight, padding, list(c.stride), list(c.dilation), c.groups, list(x.shape)
        )
        got = self._packed[key] = (packed, bias, padding)
        if len(self._packed) > _SHAPES_KEPT:
            self._packed.popitem(last=False)
        return got

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve ``x`` (and apply the activation) in one call.

        Args:
            x: ``(N, C, H, W)`` activations, float32 or the autocast dtype.

        Returns:
            The output, in the autocast dtype under CPU autocast, else in ``x``'s.
        """
        if torch.is_autocast_enabled("cpu") and x.dtype == torch.float32:
            x = x.to(torch.get_autocast_dtype("cpu"))
        weight, bias, padding = self._pack(x, x.dtype)
        c = self.conv
        out: torch.Tensor = torch.ops.mkldnn._convolution_pointwise(
            x,
            weight,
            bias,
            padding,
            list(c.stride),
            list(c.dilation),
            c.groups,
            self.activation,
            self.scalars,
            "",
        )
        return out


def _packable(module: nn.Module) -> bool:
    if not isinstance(module, nn.Conv2d):
        return False
    # a subclass with a forward of its own is packable only if it says how (lite's SAME)
    if type(module).forward is not nn.Conv2d.forward and not hasattr(module, "grown_kernel"):
        return False
    return (
        module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
        and not module.weight.requires_grad
        and module.weight.device.type == "cpu"
        and module.weight.dtype == torch.float32
    )


def pack_convolutions(module: nn.Module) -> nn.Module:
    """Replace the frozen CPU convolutions of ``module`` by :class:`PackedConv2d`, in place.

    A convolution directly followed by a ``ReLU`` or ``ReLU6`` in an ``nn.Sequential``
    that runs its children in order (BN-folded: an ``nn.Identity`` may sit between them)
    takes the activation into its call, and the activation becomes an ``nn.Identity``.
    Convolutions that train, sit on a GPU, use string or non-zero padding modes, or
    subclass ``nn.Conv2d`` with a forward of their own (other than EfficientNet-Lite's)
    are left as they are.

    Args:
        module: A frozen, eval-mode module that only infers (a prepared backbone).

    Returns:
        ``module`` (changed in place; unchanged where oneDNN is unavailable).
    """
    if not onednn_available():
        return module
    for parent in list(module.modules()):
        if isinstance(parent, PackedConv2d):
            continue
        children = list(parent.named_children())
        for i, (name, child) in enumerate(children):
            if not _packable(child):
                continue
            assert isinstance(child, nn.Conv2d)
            activation, scalars = "none", list[float]()
            if isinstance(parent, nn.Sequential) and type(parent).forward is nn.Sequential.forward:
                after = [m for _, m in children[i + 1 :]]
                while after and isinstance(after[0], nn.Identity):
                    after = after[1:]
                fused = _ACTIVATIONS.get(type(after[0])) if after else None
                if fused is not None:
                    activation, scalars = fused
                    j = next(k for k, (_, m) in enumerate(children) if m is after[0])
                    parent[j] = nn.Identity()
            setattr(parent, name, PackedConv2d(child, activation, scalars))
    return module
