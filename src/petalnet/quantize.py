"""Int8 backbones: a frozen backbone quantised to 8-bit integers, for the CPU.

``FlowerClassifier(quantize="int8")`` runs its frozen backbone through post-training
static quantisation: ``torchao``'s PT2E flow with ``X86InductorQuantizer`` (per-channel
int8 weights, per-tensor activations observed on :data:`CALIBRATION_IMAGES` training
images), whose convolutions then run as oneDNN's int8 kernels, called directly
(:func:`~petalnet.onednn.lower_int8_graph`: no C++ compiler, no compile time, the calls
Inductor would emit). Activations use 7 bits
(``reduce_range``): CPUs without VNNI (AVX2 only) saturate 8-bit products at 16 bits, and
one setting everywhere means a model calibrated on one CPU runs correctly on any other
(their int8 kernels round alike to within a few units of the last bit, not bit for bit).

The activation scales are what depends on the calibration images, so they are data: an
:class:`Int8Scales` in the backbone's :class:`~petalnet.BackboneMeta`, saved in the
checkpoint and part of the row store's namespace. Weights' scales follow from the weights.
A loaded model rebuilds the same graph from its scales, without its training images.

Of a fused backbone (``"efficientnet_lite0+efficientnet_lite1"``) some parts may be
quantised and the others left in float32 (:attr:`Int8Scales.parts`): what
``quantize="auto"`` does where only some parts were measured to keep their accuracy in
int8 (:func:`resolve_quantize`). Each such part is traced, calibrated and run as an int8
graph of its own inside the fused module; the float parts stay the eager modules (with
their prepacked oneDNN convolutions), so nothing traces them.

Where torch has no oneDNN int8 convolution, the same int8 graph runs in reference kernels
with a warning: the same quantisation, but slower than float32. ``torchao`` is an optional
dependency (``pip install 'petalnet[int8]'``); this module imports it only when asked.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from petalnet.backbones.fusion import Fused
from petalnet.errors import DataError, ImageReadError, PetalnetError, PetalnetWarning
from petalnet.images import ImageInput, image_to_tensor
from petalnet.onednn import lower_int8_graph, onednn_int8_available
from petalnet.preprocessing import Preprocessing

__all__ = [
    "CALIBRATION_IMAGES",
    "Int8Scales",
    "calibrate_int8",
    "calibration_images",
    "float_paths",
    "int8_runner",
    "reference_graph",
    "require_int8",
    "resolve_quantize",
]

CALIBRATION_IMAGES = 64
"""Training images the activation observers see (evenly spaced over the sorted list)."""

_EXAMPLE_BATCH = 8  # the example batch the graph is traced with; any batch runs it


def _import_torchao() -> bool:
    """Import ``torchao`` (once); whether it is installed.

    Its import makes torch log a deprecation meant for torchao's developers (an Enum given
    to ``register_constant``), which would be the one line a user sees from a fit or a
    notebook cell: that logger is held at ERROR during the import.
    """
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        import torchao  # noqa: F401
    except ImportError:
        return False
    finally:
        pytree_log.setLevel(level)
    return True


def require_int8(device: torch.device) -> None:
    """Fail with what to do where an int8 backbone cannot run: off the CPU, or without torchao.

    Args:
        device: Where the backbone would compute.

    Raises:
        PetalnetError: ``device`` is not the CPU, or ``torchao`` cannot be imported.
    """
    if device.type != "cpu":
        raise PetalnetError(
            f"quantize='int8' computes on the CPU only, but the device is {device.type!r}: "
            "use device='cpu', or fit with quantize=None."
        )
    if not _import_torchao():
        raise PetalnetError(
            "quantize='int8' needs torchao, which is not installed: "
            "pip install 'petalnet[int8]' (or use quantize=None)."
        )


def resolve_quantize(
    quantize: str | None,
    strategy: str,
    device: torch.device,
    auto_parts: Sequence[bool] = (True,),
    float_dtype: torch.dtype = torch.float32,
    floats: Sequence[Sequence[str]] = (),
) -> tuple[int, ...] | None:
    """Whether a fit quantises its backbone, and which parts: the one place that decides.

    Args:
        quantize: ``None``, ``"int8"`` or ``"auto"``.
        strategy: The fine-tuning strategy: ``"freeze"`` quantises the backbone,
            ``"freeze_unfreeze"`` its frozen front (the caller's part), ``"full"`` nothing.
        device: Where the backbone computes.
        auto_parts: For each part of the backbone (one, or those of a fused backbone),
            whether int8 was measured to keep its accuracy (its registration's
            ``auto_int8``: :func:`~petalnet.backbones.registry.auto_int8`).
        float_dtype: What the backbone would compute in unquantised (``bfloat16`` on a CPU
            with native bfloat16).
        floats: For each part, the children of its body that stay in float32 when it is
            quantised (its registration's ``int8_float``).

    Returns:
        ``None``: float. ``()``: the whole backbone in int8 (``"int8"``, or ``"auto"``
        where every part may be quantised), or with ``"freeze_unfreeze"`` its frozen front
        (``"int8"``, or ``"auto"`` where the float path is float32: the fine-tuned blocks
        compute in float32 after it; not the frozen side of a fused backbone). Part
        indices: those parts of a fused backbone in int8, the others in float32
        (``"auto"``, where some parts may be quantised and the float path is float32
        anyway: where the CPU has native bfloat16 a float part would lose it, so the
        backbone stays float; so too a part whose first blocks stay in float32,
        ``floats``). ``"auto"`` quantises only a frozen backbone (or front) on a CPU whose
        torch runs oneDNN's int8 convolution (x86) with
        torchao installed: where int8 measured faster (docs/benchmarks.md).
    """
    if quantize != "auto":
        return () if quantize == "int8" else None
    front = strategy == "freeze_unfreeze"  # only the frozen front can be quantised
    if strategy not in ("freeze", "freeze_unfreeze") or device.type != "cpu":
        return None
    if front and len(auto_parts) > 1:  # a fused backbone's frozen side: no int8 graph for it
        return None
    if not onednn_int8_available():
        return None
    picked = tuple(i for i, ok in enumerate(auto_parts) if ok)
    whole = len(picked) == len(auto_parts)
    partial = any(floats[i] for i in picked if i < len(floats))
    mixed = not whole or front or partial  # float beside int8: only where it is float32
    if not picked or (mixed and float_dtype != torch.float32) or not _import_torchao():
        return None
    return () if whole else picked


@dataclass(frozen=True)
class Int8Scales:
    """The activation quantisation of an int8 backbone: what its calibration decided.

    Attributes:
        observers: ``(observer name, scale, zero point)`` of every activation observer in
            the quantised graph, in graph order; of a partly quantised fused backbone, each
            part's in turn, named ``"part:observer"`` (each part is a graph of its own).
        parts: The parts of a fused backbone that are quantised (indices, in order), the
            others computing in float32; ``()`` for the whole backbone.
        front: How many leading children of the backbone's ``body`` are quantised, as one
            graph: the frozen front of a partly fine-tuned backbone
            (``strategy="freeze_unfreeze"``), the fine-tuned blocks after it computing in
            float32; ``0`` for the whole backbone.
        floats: Modules left in float32 inside the quantised graphs, by their path in the
            traced module (of a partly quantised fused backbone prefixed ``"part:"``): the
            first blocks of a backbone registered with ``int8_float``.
    """

    observers: tuple[tuple[str, float, int], ...]
    parts: tuple[int, ...] = ()
    front: int = 0
    floats: tuple[str, ...] = ()

    @property
    def fingerprint(self) -> str:
        """A short hash of the scales: rows computed with other scales never mix."""
        data: list[Any] = [list(o) for o in self.observers]
        if self.parts:  # (the whole backbone's fingerprint as before: its rows stay valid)
            data.append(["parts", *self.parts])
        if self.front:
            data.append(["front", self.front])
        if self.floats:
            data.append(["floats", *self.floats])
        return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]

    def to_payload(self) -> list[list[Any]] | dict[str, Any]:
        """Plain values for a checkpoint (the list of triples for a whole backbone)."""
        observers = [list(o) for o in self.observers]
        extra: dict[str, Any] = {}
        if self.parts:
            extra["parts"] = list(self.parts)
        if self.front:
            extra["front"] = self.front
        if self.floats:
            extra["floats"] = list(self.floats)
        return {"observers": observers, **extra} if extra else observers

    @classmethod
    def from_payload(cls, data: Sequence[Sequence[Any]] | Mapping[str, Any]) -> Int8Scales:
        """Rebuild what :meth:`to_payload` stored.

        Args:
            data: ``[name, scale, zero point]`` triples, or ``{"observers": triples}`` with
                any of ``"parts"`` (indices), ``"front"`` (children) and ``"floats"``
                (module paths).

        Returns:
            The scales.
        """
        triples: Sequence[Sequence[Any]]
        parts: Sequence[Any] = ()
        floats: Sequence[Any] = ()
        front = 0
        if isinstance(data, Mapping):
            triples, parts = data["observers"], data.get("parts", ())
            front, floats = int(data.get("front", 0)), data.get("floats", ())
        else:
            triples = data
        observers = tuple((str(n), float(s), int(z)) for n, s, z in triples)
        return cls(observers, tuple(int(p) for p in parts), front, tuple(str(f) for f in floats))


def calibration_images(
    images: Sequence[ImageInput], preprocessing: Preprocessing, count: int = CALIBRATION_IMAGES
) -> torch.Tensor:
    """Up to ``count`` of ``images``, evenly spaced, as the centre crop the backbone sees.

    Unreadable files are left out here (the training pass reports them).

    Args:
        images: The training images, in their (sorted) order.
        preprocessing: The backbone's preprocessing.
        count: How many to take.

    Returns:
        ``(n, 3, crop, crop)`` preprocessed images.

    Raises:
        DataError: None of those images can be read.
    """
    step = max(1, len(images) // count)
    picked = list(images[::step][:count])
    transform = preprocessing.transform()
    read = []
    for image in picked:
        try:
            read.append(image_to_tensor(image, transform, draft_size=preprocessing.resize_size))
        except ImageReadError:
            continue
    if not read:
        raise DataError(
            f"None of the {len(picked)} training images picked to calibrate quantize='int8' "
            "could be read; see the warnings of the training pass, or use quantize=None."
        )
    return torch.stack(read)


_TRACES: dict[tuple[Any, ...], nn.Module] = {}
"""The last traced graphs by key (one per quantised part): a fit traces once to calibrate,
once to run."""
_KEPT_TRACES = 4


def _trace_key(runner: nn.Module, example: torch.Tensor) -> tuple[Any, ...]:
    """What a trace depends on: the module's type, its tensors' values, the input's shape."""
    digest = hashlib.sha256()
    # parameters and every buffer, unsaved ones too (lite's grown kernels)
    for name, tensor in itertools.chain(runner.named_parameters(), runner.named_buffers()):
        data = tensor.detach().cpu().contiguous().view(-1).view(torch.uint8)
        digest.update(name.encode() + data.numpy().tobytes())
    return (type(runner), tuple(example.shape[1:]), example.dtype, digest.hexdigest())


def _traced(runner: nn.Module, example: torch.Tensor) -> nn.Module:
    """``runner`` traced by ``torch.export`` with a dynamic batch (the last trace reused)."""
    key = _trace_key(runner, example)
    traced = _TRACES.pop(key, None)
    if traced is None:
        traced = _export(runner, example)
    _TRACES[key] = traced  # the newest last
    while len(_TRACES) > _KEPT_TRACES:
        del _TRACES[next(iter(_TRACES))]
    return copy.deepcopy(traced)  # prepare_pt2e annotates its graph in place


def _export(runner: nn.Module, example: torch.Tensor) -> nn.Module:
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    try:
        return torch.export.export(
            runner, (example,), dynamic_shapes=({0: batch},), strict=True
        ).module()
    except Exception as exc:  # torch.export names the construct it cannot trace
        raise PetalnetError(
            "quantize='int8' could not trace this backbone with torch.export "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); use quantize=None."
        ) from None


def _prepared(runner: nn.Module, example: torch.Tensor, floats: Sequence[str] = ()) -> Any:
    """``runner`` traced and given observers (``torchao``'s ``prepare_pt2e``).

    Every layer is annotated but those under the module paths ``floats``, which stay float.
    """
    require_int8(example.device)
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    config = xiq.get_default_x86_inductor_quantization_config(reduce_range=True)
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(config)
    for path in floats:
        quantizer.set_module_name_qconfig(path, None)
    return prepare_pt2e(_traced(runner, example), quantizer)


def _fused_parts(runner: nn.Module, parts: Sequence[int]) -> Any:
    """The ``Fused`` body of a prepared fused backbone that has ``parts``."""
    body = getattr(runner, "body", None)
    if not isinstance(body, Fused) or max(parts) >= len(body.parts):
        raise PetalnetError(
            f"int8 scales of parts {list(parts)} of a fused backbone, but this backbone is "
            "not the fused backbone they were computed for; fit again."
        )
    return body


def _front(runner: nn.Module, front: int) -> nn.Module:
    """The leading ``front`` children of ``runner.body``, as one module (what is quantised)."""
    body = getattr(runner, "body", None)
    children = list(body.children()) if isinstance(body, nn.Sequential) else []
    if len(children) < front:
        raise PetalnetError(
            f"int8 scales of the first {front} blocks of a backbone, but this backbone has "
            f"{len(children)}: it is not the backbone they were computed for; fit again."
        )
    return nn.Sequential(*children[:front])


_PART_SEPARATOR = ":"
"""Between a part's index and its observer's name in a partly quantised backbone's scales."""


def _activation_observers(prepared: Any) -> list[tuple[str, Any]]:
    """Every per-tensor (activation) observer of a prepared graph, by attribute name.

    One observer shared by two places appears under each name, so that fixing them by name
    fixes every use.
    """
    from torchao.quantization.pt2e.observer import ObserverBase

    return [
        (name, module)
        for name, module in prepared.named_modules(remove_duplicate=False)
        if isinstance(module, ObserverBase) and module.qscheme == torch.per_tensor_affine
    ]


def float_paths(
    runner: nn.Module, floats: Sequence[Sequence[str]], front: int = 0
) -> tuple[str, ...]:
    """Where the body children ``floats`` names sit in the module :func:`calibrate_int8` traces.

    Args:
        runner: A prepared backbone, or one part of a fused one.
        floats: One tuple of ``body`` children per part (one, or each of a fused backbone's
            when ``runner`` is all of it): those that stay in float32.
        front: The quantised front's length (its children are then named by index).

    Returns:
        Module paths, e.g. ``("body.stem",)`` or ``("body.parts.1.body.stem",)``.

    Raises:
        PetalnetError: A name is not a child of the backbone's ``body``.
    """
    body = getattr(runner, "body", None)
    if isinstance(body, Fused) and len(floats) == len(body.parts) > 1:  # all of it, one graph
        return tuple(
            f"body.parts.{i}.{path}"
            for i, names in enumerate(floats)
            for path in float_paths(body.parts[i], (names,))
        )
    names = [name for part in floats for name in part]
    children = [n for n, _ in body.named_children()] if isinstance(body, nn.Module) else []
    if missing := [n for n in names if n not in children]:
        raise PetalnetError(
            f"int8_float names {missing}, which this backbone's body does not have (it has "
            f"{children}); fix the registration's int8_float, or use quantize=None."
        )
    if front:  # the front is one Sequential of the body's first children: paths by index
        return tuple(str(children.index(n)) for n in names if children.index(n) < front)
    return tuple(f"body.{n}" for n in names)


def calibrate_int8(
    runner: nn.Module,
    images: torch.Tensor,
    parts: Sequence[int] = (),
    front: int = 0,
    floats: Sequence[Sequence[str]] = (),
) -> Int8Scales:
    """Observe ``runner``'s activations on ``images`` and return their int8 scales.

    Args:
        runner: A prepared float backbone (:func:`~petalnet.features.prepare_backbone`).
        images: ``(N, 3, H, W)`` preprocessed calibration images.
        parts: The parts of a fused backbone to quantise (:func:`resolve_quantize`);
            ``()`` for all of it.
        front: The leading children of ``runner.body`` to quantise (the frozen front of a
            partly fine-tuned backbone); ``0`` for all of it.
        floats: For each part of the backbone, the children of its body that stay in
            float32 (:func:`~petalnet.backbones.registry.int8_float`); ``()``: none.

    Returns:
        The scales (:class:`Int8Scales`).

    Raises:
        PetalnetError: ``torchao`` is missing, the backbone cannot be traced, or
            ``floats`` names a block it does not have.
    """
    if front:
        paths = float_paths(runner, floats, front)
        return Int8Scales(_observe(_front(runner, front), images, paths), front=front, floats=paths)
    if not parts:
        paths = float_paths(runner, floats)
        return Int8Scales(_observe(runner, images, paths), floats=paths)
    body = _fused_parts(runner, parts)
    found, kept = [], []
    for part in parts:
        with torch.no_grad():
            seen = body.part_input(images, part)
        paths = float_paths(body.parts[part], floats[part : part + 1])
        prefix = f"{part}{_PART_SEPARATOR}"
        found += [(prefix + n, s, z) for n, s, z in _observe(body.parts[part], seen, paths)]
        kept += [prefix + path for path in paths]
    return Int8Scales(tuple(found), tuple(parts), floats=tuple(kept))


def _observe(
    runner: nn.Module, images: torch.Tensor, floats: Sequence[str] = ()
) -> tuple[tuple[str, float, int], ...]:
    """The activation scales of ``runner`` (every layer but ``floats``) seen on ``images``."""
    images = images.contiguous(memory_format=torch.channels_last)
    prepared = _prepared(runner, images[:_EXAMPLE_BATCH], floats)
    with torch.no_grad():
        for first in range(0, len(images), 32):
            prepared(images[first : first + 32])
    found = []
    for name, observer in _activation_observers(prepared):
        scale, zero_point = observer.calculate_qparams()
        found.append((name, float(scale.reshape(-1)[0]), int(zero_point.reshape(-1)[0])))
    return tuple(found)


class _Int8Runner(nn.Module):
    """The quantised graph, its int8 convolutions run by oneDNN's int8 kernels.

    (Of a partly quantised fused backbone each quantised part is one, inside the fused
    module; the float parts stay as they are.)

    ``graph`` is the converted PT2E graph (reference kernels on dequantised values: what a
    ``.pt2`` export holds); ``lowered`` is a copy whose quantised convolution chains are
    single prepacked oneDNN calls (:func:`~petalnet.onednn.lower_int8_graph`), or ``None``
    where this torch has no oneDNN int8 convolution (``graph`` runs then, with a warning,
    slower than float32).
    """

    def __init__(self, graph: fx.GraphModule) -> None:
        super().__init__()
        self.graph = graph
        self.lowered: fx.GraphModule | None = None
        if onednn_int8_available():
            self.lowered = lower_int8_graph(copy.deepcopy(graph))
        else:
            warnings.warn(
                "quantize='int8': this torch has no oneDNN int8 convolution (or "
                "PETALNET_ONEDNN=0 is set), so the int8 backbone runs in reference kernels, "
                "slower than float32; use a CPU build of torch with oneDNN, or quantize=None.",
                PetalnetWarning,
                stacklevel=4,
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        out: torch.Tensor = (self.lowered or self.graph)(x)
        return out


def int8_runner(runner: nn.Module, scales: Int8Scales, example: torch.Tensor) -> nn.Module:
    """``runner`` quantised with ``scales``: the module that computes an int8 backbone's rows.

    Args:
        runner: A prepared float backbone on the CPU (channels-last, BN folded): a copy of
            its own (:func:`~petalnet.features.prepare_backbone` makes one), since with
            :attr:`Int8Scales.parts` or :attr:`Int8Scales.front` it is changed in place.
        scales: Its activation scales (:func:`calibrate_int8`, or a checkpoint's).
        example: One preprocessed batch of the backbone's input shape (for tracing).

    Returns:
        The int8 module; any batch size runs it. With :attr:`Int8Scales.parts`, ``runner``
        with its quantised parts replaced by int8 modules, the others left in float; with
        :attr:`Int8Scales.front`, ``runner`` whose body's leading children are one int8
        module.

    Raises:
        PetalnetError: ``torchao`` is missing, the backbone cannot be traced, or the scales
            do not fit its graph (another backbone, or another ``torchao``'s graph).
    """
    if scales.front:  # the front in int8, the fine-tuned blocks after it in float
        front = _front(runner, scales.front)
        quantised = _quantised(front, scales.observers, example, scales.floats)
        body: Any = runner.body
        runner.body = nn.Sequential(quantised, *list(body.children())[scales.front :])
        return runner.eval()
    if not scales.parts:
        return _quantised(runner, scales.observers, example, scales.floats)
    if any(_PART_SEPARATOR not in name for name, _, _ in scales.observers):
        raise PetalnetError(
            "These int8 scales of a partly quantised fused backbone were saved by an earlier "
            "petalnet, which traced all of its parts as one graph; fit again (or load it "
            "with that version)."
        )
    body = _fused_parts(runner, scales.parts)  # the float parts stay, the others change
    for part in scales.parts:
        prefix = f"{part}{_PART_SEPARATOR}"
        observers = tuple(
            (n.removeprefix(prefix), s, z) for n, s, z in scales.observers if n.startswith(prefix)
        )
        floats = [f.removeprefix(prefix) for f in scales.floats if f.startswith(prefix)]
        with torch.no_grad():
            seen = body.part_input(example, part)
        body.parts[part] = _quantised(body.parts[part], observers, seen, floats)
    return runner.eval()


def _quantised(
    runner: nn.Module,
    observers: Sequence[tuple[str, float, int]],
    example: torch.Tensor,
    floats: Sequence[str] = (),
) -> _Int8Runner:
    """``runner`` (all of it but ``floats``) quantised with its activation ``observers``."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.observer import FixedQParamsObserver
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    example = example.contiguous(memory_format=torch.channels_last)
    prepared = _prepared(runner, example, floats)
    found = _activation_observers(prepared)
    if [name for name, _ in found] != [name for name, _, _ in observers]:
        raise PetalnetError(
            f"The int8 scales ({len(observers)} activations) do not fit this "
            f"backbone's quantised graph ({len(found)}): the backbone or torchao changed "
            "since they were computed; fit again."
        )
    for (name, observer), (_, scale, zero_point) in zip(found, observers, strict=True):
        fixed = FixedQParamsObserver(
            scale,
            zero_point,
            dtype=observer.dtype,
            qscheme=observer.qscheme,
            quant_min=observer.quant_min,
            quant_max=observer.quant_max,
        )
        setattr(prepared, name, fixed)
    with torch.no_grad():
        prepared(example[:1])  # the weights' per-channel observers see the weights
    graph = allow_exported_model_train_eval(convert_pt2e(prepared))  # eval(): a no-op
    return _Int8Runner(graph).eval()


def reference_graph(runner: nn.Module) -> nn.Module:
    """What an export holds of an int8 runner: its quantised graphs in reference kernels.

    Args:
        runner: What :func:`int8_runner` returned (changed in place: its prepacked oneDNN
            weights cannot be copied).

    Returns:
        The converted PT2E graph (quantise and dequantise operators around float kernels),
        or, of a partly quantised fused backbone, ``runner`` with each quantised part
        replaced by its graph.
    """
    if isinstance(runner, _Int8Runner):
        return runner.graph
    for module in list(runner.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, _Int8Runner):
                setattr(module, name, child.graph)
    return runner
