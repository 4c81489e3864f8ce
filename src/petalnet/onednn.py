"""Frozen CPU convolutions as one prepacked oneDNN call each, their ReLU fused in.

Two forms, one idea: the float runner's ``nn.Conv2d`` modules (:func:`pack_convolutions`)
and an int8 backbone's quantised graph (:func:`lower_int8_graph`).

An eager ``nn.Conv2d`` on the CPU hands oneDNN its weight in PyTorch's plain layout on
every call: oneDNN reorders it into its blocked layout each time, under autocast the
weight is cast to bfloat16 first, and the ReLU6 after it is a second pass over the whole
activation. :func:`pack_convolutions` gives a frozen, BN-folded copy
(:func:`~petalnet.features.prepare_backbone`) what Inductor's ``freezing`` pass emits,
without compiling anything: the weight reordered (and cast) once per input shape by
``torch.ops.mkldnn._reorder_convolution_weight``, and the convolution with its ReLU or
ReLU6 in one ``torch.ops.mkldnn._convolution_pointwise`` call. The sums are the same;
on an AMD EPYC with AVX-512 BF16 lite0's front ran 1.22x faster in bfloat16 and 1.02x in
float32, and nothing end to end held to AVX2 (docs/benchmarks.md, "Speed levers").

Only the module that computes rows is packed (``ImagePipeline.runner``); saved models
and exports keep plain convolutions. ``PETALNET_ONEDNN=0`` turns packing off (to measure
against it, or where a build's oneDNN misbehaves).

An int8 backbone's graph (:mod:`petalnet.quantize`: torchao's PT2E flow, every convolution
between a ``dequantize`` of its uint8 input and a ``quantize`` of its output) gets the same
treatment from :func:`lower_int8_graph`: each such chain becomes one
``torch.ops.onednn.qconv2d_pointwise`` call on uint8 activations with its weight prepacked
once, its ReLU/ReLU6 and its requantisation fused, and a residual ``add`` fused as oneDNN's
``sum`` post-op. These are the calls Inductor emits for that graph; made directly they
need no C++ compiler and no compile time (Inductor's first compile took 26 s) and run at
90-97 % of the compiled graph's speed, which also fuses the input's quantisation
(docs/benchmarks.md, "int8 without a compiler").
"""

from __future__ import annotations

import functools
import os
from collections import OrderedDict
from typing import Any

import torch
from torch import fx, nn

__all__ = [
    "PackedConv2d",
    "lower_int8_graph",
    "onednn_available",
    "onednn_int8_available",
    "pack_convolutions",
]

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
        if x.dtype == torch.bfloat16 and not _onednn_bf16():  # an AVX2-only CPU: ATen's path
            return self._unpacked(x)
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

    def _unpacked(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution and its activation as the eager modules compute them."""
        out: torch.Tensor = self.conv(x)
        if self.activation == "hardtanh":
            low, high = self.scalars
            return nn.functional.hardtanh(out, low, high)
        return nn.functional.relu(out) if self.activation == "relu" else out


@functools.cache
def _onednn_bf16() -> bool:
    """Whether oneDNN computes bfloat16 on this CPU (AVX-512 BW/VL/DQ or AVX-NE-CONVERT).

    Where it does not (AVX2-only CPUs, or ``ONEDNN_MAX_CPU_ISA=AVX2``) its weight reorder
    refuses bfloat16, and a packed convolution asked for bfloat16 computes as the eager one.
    """
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


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


def onednn_int8_available() -> bool:
    """Whether this torch has oneDNN's int8 convolution and it is not turned off.

    Returns:
        ``False`` with ``PETALNET_ONEDNN=0``, or where torch lacks the operators.
    """
    if not onednn_available():
        return False
    ops = torch.ops.onednn
    return hasattr(ops, "qconv_prepack") and hasattr(ops, "qconv2d_pointwise")


_UNARY = {
    torch.ops.aten.hardtanh_.default: "hardtanh",
    torch.ops.aten.hardtanh.default: "hardtanh",
    torch.ops.aten.relu_.default: "relu",
    torch.ops.aten.relu.default: "relu",
}


def _calls(node: Any, target: Any) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target == target


def _only_user(node: fx.Node | None) -> fx.Node | None:
    users = [] if node is None else list(node.users)
    return users[0] if len(users) == 1 else None


def _args(node: Any) -> tuple[Any, ...]:
    """A node's arguments, untyped: which of them are nodes is what the caller checked."""
    return tuple(node.args)


def lower_int8_graph(graph: fx.GraphModule) -> fx.GraphModule:
    """Replace each quantised convolution chain of ``graph`` by one oneDNN int8 call.

    ``graph`` is a converted PT2E graph (``torchao``'s ``convert_pt2e``): a convolution
    reads ``dequantize_per_tensor(uint8)`` and ``dequantize_per_channel(int8 weight)``.
    Its weight is prepacked once (:func:`torch.ops.onednn.qconv_prepack`) and the chain
    becomes one ``qconv2d_pointwise`` call:

    * conv [→ ReLU/ReLU6 (``hardtanh``)] → ``quantize_per_tensor``: uint8 out, the
      activation and the requantisation fused;
    * conv → ``add(dequantize(q), ·)`` → ``quantize_per_tensor``: the residual added by
      oneDNN's ``sum`` post-op into a copy of ``q`` (the ``.binary`` overload);
    * otherwise float32 out (the activation still fused), for what follows in float.

    Everything else (pooling, a float operator's own computation) is left as it is, and the
    quantisations outside the convolutions (the image's, a float operator's way in and out)
    compute in place, to the same bits; so the graph computes what it did, to rounding:
    oneDNN's integer kernels instead of float ones on dequantised values.

    Args:
        graph: The converted graph, changed in place.

    Returns:
        ``graph``, recompiled.
    """
    g = graph.graph
    q = torch.ops.quantized_decomposed
    for count, conv in enumerate(list(g.nodes)):
        if not _calls(conv, torch.ops.aten.conv2d.default):
            continue
        x, w, bias, stride, padding, dilation, groups = (*_args(conv), *[None] * 7)[:7]
        if not (
            _calls(x, q.dequantize_per_tensor.default)
            and _calls(w, q.dequantize_per_channel.default)
            and w.args[3] == 0
            and all(isinstance(n, fx.Node) and n.op == "get_attr" for n in w.args[:3])
        ):
            continue
        xa, wa = _args(x), _args(w)
        x_q = (xa[0], float(xa[1]), int(xa[2]))
        qw, w_scale = (functools.reduce(getattr, n.target.split("."), graph) for n in wa[:2])
        shape = (list(stride or [1, 1]), list(padding or [0, 0]), list(dilation or [1, 1]))
        name = f"_onednn_qconv_{count}"
        packed = torch.ops.onednn.qconv_prepack(qw, w_scale, *x_q[1:], *shape, groups or 1, None)
        graph.register_buffer(name, packed, persistent=False)
        w_q, rest = (wa[1], wa[2]), (bias, *shape, groups or 1)

        post, attr, scalars = conv, "none", list[float]()
        after = _only_user(conv)
        if after is not None and after.op == "call_function" and after.target in _UNARY:
            post, attr = after, _UNARY[after.target]
            if attr == "hardtanh":
                scalars = [float(a) for a in (*_args(after)[1:3], -1.0, 1.0)[:2]]
        nxt = _only_user(post)
        add_out = _only_user(nxt) if _calls(nxt, torch.ops.aten.add.Tensor) else None
        other: Any = None
        if attr == "none" and _calls(add_out, q.quantize_per_tensor.default):
            operands = [a for a in _args(nxt) if a is not post]
            if len(operands) == 1 and _calls(operands[0], q.dequantize_per_tensor.default):
                other = operands[0]

        out_q: tuple[Any, ...]
        middle: tuple[Any, ...] = ()
        post_op: tuple[Any, ...] = (attr, scalars, "")
        target = torch.ops.onednn.qconv2d_pointwise.default
        if nxt is not None and _calls(nxt, q.quantize_per_tensor.default):  # uint8 out
            out_q = (float(_args(nxt)[1]), int(_args(nxt)[2]), None)
            replaced, dead, where = nxt, [nxt, post, conv], nxt
        elif other is not None and add_out is not None and nxt is not None:  # residual sum
            out_q = (float(_args(add_out)[1]), int(_args(add_out)[2]), None)
            oa = _args(other)
            with g.inserting_after(add_out):  # oneDNN adds into it: a copy of the uint8 input
                accumulator = g.call_function(torch.ops.aten.clone.default, (oa[0],))
            replaced, dead, where = add_out, [add_out, nxt, conv], accumulator
            target, middle = torch.ops.onednn.qconv2d_pointwise.binary, (accumulator,)
            post_op = (float(oa[1]), int(oa[2]), "sum", 1.0, "none", [], "")
        else:  # float32 out, for what follows in float
            out_q = (1.0, 0, torch.float32)
            replaced, dead, where = post, [post, conv], post
        with g.inserting_after(where):
            weight = g.get_attr(name)
        with g.inserting_after(weight):
            args = (*x_q, weight, *w_q, *middle, *rest, *out_q, *post_op)
            new = g.call_function(target, args)
        replaced.replace_all_uses_with(new)
        for node in dict.fromkeys(dead):  # in place (hardtanh_): dead code elimination keeps it
            if not node.users:
                g.erase_node(node)
    _quantise_in_place(g)
    g.eliminate_dead_code()
    graph.recompile()
    return graph


def _quantize_uint8(
    x: torch.Tensor, scale: float, zero_point: int, low: int, high: int
) -> torch.Tensor:
    """``quantized_decomposed.quantize_per_tensor`` to uint8, one allocation, in place after."""
    scaled = torch.mul(x.float(), 1.0 / scale)
    return scaled.round_().add_(zero_point).clamp_(low, high).to(torch.uint8)


def _dequantize_uint8(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """``quantized_decomposed.dequantize_per_tensor`` of uint8 to float32, in place after."""
    return x.to(torch.float32).sub_(zero_point).mul_(scale)


def _quantise_in_place(g: fx.Graph) -> None:
    """The (de)quantisations left outside the convolutions, computed in place.

    ``quantized_decomposed``'s operators allocate a new tensor at each of their four or
    five elementwise steps (the image's quantisation, a float operator's way in and out);
    the same steps in place give the same values, bit for bit, 2-2.5x faster (the image's
    quantisation was a tenth of lite1's int8 pass held to AVX2).
    """
    q = torch.ops.quantized_decomposed
    for node in list(g.nodes):
        a = _args(node)
        if _calls(node, q.quantize_per_tensor.default) and a[5] == torch.uint8:
            new_args: tuple[Any, ...] = (a[0], float(a[1]), int(a[2]), int(a[3]), int(a[4]))
            target: Any = _quantize_uint8
        elif (
            _calls(node, q.dequantize_per_tensor.default)
            and a[5] == torch.uint8
            and node.kwargs.get("out_dtype") in (None, torch.float32)
        ):
            new_args, target = (a[0], float(a[1]), int(a[2])), _dequantize_uint8
        else:
            continue
        with g.inserting_after(node):
            new = g.call_function(target, new_args)
        node.replace_all_uses_with(new)
        g.erase_node(node)
