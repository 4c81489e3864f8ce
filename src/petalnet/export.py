"""Exporting a trained classifier for deployment: a ``torch.export`` program or ONNX.

The exported model takes a *preprocessed* batch ``(N, 3, crop, crop)`` — resized, centre
cropped and normalised as ``metadata["preprocessing"]`` says — and returns calibrated class
probabilities ``(N, n_classes)`` (softmax over the logits divided by the temperature).
Class ids, display names and the preprocessing are stored inside the file (``.pt2`` extra
file ``petalnet.json``, ONNX metadata property ``petalnet``) and in a JSON file next to it.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path
from typing import Any, get_args

import torch
from torch import nn

from petalnet._types import Amp, ExportFormat
from petalnet._version import __version__
from petalnet.errors import ExportOptionsError, PetalnetError
from petalnet.features import prepare_backbone
from petalnet.fitted import FittedModel
from petalnet.precision import cpu_has_native_bf16
from petalnet.quantize import reference_graph

__all__ = ["FORMATS", "ExportFormat", "export_metadata", "export_model"]

FORMATS: tuple[ExportFormat, ...] = get_args(ExportFormat)


class _Probabilities(nn.Module):
    """Backbone, classifier, then the softmax of the logits over the calibration temperature."""

    def __init__(
        self, backbone: nn.Module, head: nn.Module, temperature: float, dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.temperature = float(temperature)
        self.dtype = dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.dtype).contiguous(memory_format=torch.channels_last)
        log_probs: torch.Tensor = self.head(self.backbone(x))
        # the head ends in LogSoftmax, so its outputs are the logits up to a constant
        return (log_probs.float() / self.temperature).softmax(-1)


def export_metadata(model: FittedModel, fmt: str) -> dict[str, Any]:
    """What a deployment needs besides the network: classes, names, preprocessing, input.

    Args:
        model: The fitted model.
        fmt: The export format.

    Returns:
        JSON-compatible metadata.
    """
    pre = model.backbone.preprocessing
    return {
        "petalnet_version": __version__,
        "format": fmt,
        "backbone": model.backbone.meta.name,
        "classes": list(model.classes),
        "category_names": model.category_names,
        "preprocessing": pre.to_dict(),
        "input": {
            "name": "images",
            "shape": ["N", 3, pre.crop_size, pre.crop_size],
            "dtype": "float32",
        },
        "output": {"name": "probabilities", "shape": ["N", len(model.classes)]},
        # the temperature is applied inside; unknown-flower detection is not exported
        "calibration": {"temperature": model.calibration.temperature},
    }


def export_model(
    model: FittedModel,
    path: str | os.PathLike[str],
    format: ExportFormat = "pt2",
    *,
    amp: Amp = False,
) -> Path:
    """Write ``model`` as a ``torch.export`` program or an ONNX model, plus ``<path>.json``.

    The network takes a preprocessed float32 batch ``(N, 3, crop, crop)`` (``N`` dynamic)
    and returns calibrated class probabilities ``(N, C)``.

    Args:
        model: A fitted model.
        path: Target file (``.pt2`` or ``.onnx`` by convention).
        format: ``"pt2"`` (``torch.export.save``; load with ``torch.export.load(path).module()``)
            or ``"onnx"`` (the dynamo-based exporter; run with ONNX Runtime).
        amp: ``True`` (``pt2`` only): the program computes in bfloat16 (input and output
            stay float32), for CPUs with native bfloat16; ``"auto"``: so where this CPU has
            native bfloat16 and the format allows it; ``False``: float32, matching
            ``predict`` with ``amp=False`` to float32 rounding.

    Returns:
        The model's path.

    Raises:
        ExportOptionsError: Unknown format, ``amp`` with ONNX, or an int8 model
            (``quantize="int8"``, which exports to ``pt2`` in int8 only) with ONNX or ``amp``.
        PetalnetError: The export failed (the message says why).
    """
    if format not in FORMATS:
        raise ExportOptionsError(f"format must be one of {', '.join(FORMATS)}, got {format!r}.")
    int8 = model.backbone.meta.int8 is not None
    if int8 and format == "onnx":
        raise ExportOptionsError(
            "An int8 model (quantize='int8') exports to pt2 only: its graph holds torchao's "
            "quantize and dequantize operators; use format pt2."
        )
    if int8 and amp is True:
        raise ExportOptionsError(
            "An int8 model computes in int8, not bfloat16: export with amp off."
        )
    if amp == "auto":  # the one place this choice is made
        amp = format == "pt2" and not int8 and cpu_has_native_bf16()
    if amp and format == "onnx":
        raise ExportOptionsError(
            "ONNX exports are float32 (ONNX Runtime's CPU kernels lack bfloat16); "
            "export with amp off, or use format pt2."
        )
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    dtype = torch.bfloat16 if amp else torch.float32
    folded = prepare_backbone(copy.deepcopy(model.backbone), torch.device("cpu"))  # BN folded
    # int8: the quantised graph itself, in reference kernels (an _Int8Runner's, or each
    # quantised part's); it carries its scales
    folded = reference_graph(folded) if int8 else folded.to(dtype).eval()
    network = _Probabilities(
        folded,
        copy.deepcopy(model.head).to(dtype).cpu().eval(),
        model.calibration.temperature,
        dtype,
    )
    network.requires_grad_(False)  # an inference graph: no autograd in the exported model
    crop = model.backbone.preprocessing.crop_size
    example = torch.zeros(2, 3, crop, crop)
    batch = {"images": {0: torch.export.Dim("N", min=1, max=4096)}}
    meta = export_metadata(model, format)
    meta["compute_dtype"] = "int8" if int8 else str(dtype).removeprefix("torch.")
    blob = json.dumps(meta, indent=1)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # exporter notes and deprecations
            if format == "pt2":
                program = torch.export.export(network, (example,), dynamic_shapes=batch)
                torch.export.save(program, target, extra_files={"petalnet.json": blob})
            else:
                _export_onnx(network, example, batch, target)
                _add_onnx_metadata(target, blob)
    except PetalnetError:
        raise
    except Exception as exc:
        raise PetalnetError(f"Exporting to {format} failed: {type(exc).__name__}: {exc}") from None
    target.with_name(target.name + ".json").write_text(blob)
    return target


def _export_onnx(
    network: nn.Module, example: torch.Tensor, batch: dict[str, Any], target: Path
) -> None:
    """The dynamo-based ONNX exporter (needs ``onnxscript``: the ``[onnx]`` extra)."""
    try:
        import onnxscript  # noqa: F401
    except ModuleNotFoundError:
        raise PetalnetError(
            "ONNX export needs onnx and onnxscript: pip install 'petalnet[onnx]'."
        ) from None
    program = torch.onnx.export(
        network,
        (example,),
        dynamo=True,
        input_names=["images"],
        output_names=["probabilities"],
        dynamic_shapes=batch,
        verbose=False,
    )
    if program is None:  # pragma: no cover - dynamo=True always returns the program
        raise PetalnetError("the ONNX exporter returned nothing")
    program.save(str(target))


def _add_onnx_metadata(path: Path, blob: str) -> None:
    """Store the metadata in the ONNX file itself when the ``onnx`` package is there."""
    try:
        import onnx
    except ModuleNotFoundError:
        return  # the JSON next to the file still carries it
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "petalnet", blob
    onnx.save(model, str(path))
