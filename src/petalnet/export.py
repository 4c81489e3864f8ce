"""Exporting a trained classifier for deployment: TorchScript or ONNX.

The exported model takes a *preprocessed* batch ``(N, 3, crop, crop)`` — resized, centre
cropped and normalised as ``metadata["preprocessing"]`` says — and returns class
probabilities ``(N, n_classes)`` (softmax included). Class ids, display names and the
preprocessing are stored inside the file (TorchScript extra file ``petalnet.json``, ONNX
metadata property ``petalnet``) and in a JSON file next to it.
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

from petalnet._types import ExportFormat
from petalnet._version import __version__
from petalnet.checkpoint import FittedModel
from petalnet.errors import PetalnetError

__all__ = ["FORMATS", "ExportFormat", "export_metadata", "export_model"]

FORMATS: tuple[ExportFormat, ...] = get_args(ExportFormat)


class _Probabilities(nn.Module):
    """Backbone, classifier, then the softmax of the logits over the calibration temperature."""

    def __init__(self, backbone: nn.Module, head: nn.Module, temperature: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.temperature = float(temperature)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        log_probs: torch.Tensor = self.head(self.backbone(images))
        # the head ends in LogSoftmax, so its outputs are the logits up to a constant
        return (log_probs / self.temperature).softmax(-1)


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
    model: FittedModel, path: str | os.PathLike[str], format: str = "torchscript"
) -> Path:
    """Write ``model`` as a TorchScript or ONNX model, plus ``<path>.json`` with its metadata.

    The exported network always computes in float32, whatever precision ``predict`` uses.

    Args:
        model: A fitted model.
        path: Target file (``.pt`` for TorchScript, ``.onnx`` for ONNX by convention).
        format: ``"torchscript"`` or ``"onnx"``.

    Returns:
        The model's path.

    Raises:
        PetalnetError: Unknown format, or the export failed (the message says why).
    """
    if format not in FORMATS:
        raise PetalnetError(f"format must be one of {', '.join(FORMATS)}, got {format!r}.")
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    network = _Probabilities(
        copy.deepcopy(model.backbone).float().cpu().eval(),
        copy.deepcopy(model.head).float().cpu().eval(),
        model.calibration.temperature,
    )
    network.requires_grad_(False)  # an inference graph: no autograd in the exported model
    crop = model.backbone.preprocessing.crop_size
    example = torch.zeros(2, 3, crop, crop)
    meta = export_metadata(model, format)
    blob = json.dumps(meta, indent=1)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer notes about shape arithmetic, deprecations
            if format == "torchscript":
                # torch.jit.trace is not annotated in torch's sources
                traced = torch.jit.trace(network, example)  # type: ignore[no-untyped-call]
                torch.jit.save(traced, str(target), _extra_files={"petalnet.json": blob})
            else:
                torch.onnx.export(
                    network,
                    (example,),
                    str(target),
                    dynamo=False,
                    input_names=["images"],
                    output_names=["probabilities"],
                    dynamic_axes={"images": {0: "N"}, "probabilities": {0: "N"}},
                )
                _add_onnx_metadata(target, blob)
    except PetalnetError:
        raise
    except Exception as exc:
        raise PetalnetError(f"Exporting to {format} failed: {type(exc).__name__}: {exc}") from None
    target.with_name(target.name + ".json").write_text(blob)
    return target


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
