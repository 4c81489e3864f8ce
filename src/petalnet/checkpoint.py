"""Checkpoint files: one self-describing ``torch.save`` file of tensors and plain values.

Loading uses ``torch.load(weights_only=True)``, which refuses anything but tensors and
plain containers, so a checkpoint can never execute code. Saving writes a temporary file
and renames it over the target, so a crash mid-save never leaves a half-written file in
place of a good one. Every tensor is stored on the CPU, so a GPU-trained checkpoint loads
anywhere.

This module owns the format, and only the format, both ways: :func:`to_payload` turns a
:class:`~petalnet.fitted.FittedModel` (what ``fit`` learned) and the classifier's
parameters into plain data, :func:`from_payload` rebuilds them, and :func:`resume_state`
gives a training run what it continues from.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from petalnet._version import __version__
from petalnet.backbones.registry import build_backbone
from petalnet.calibration import Calibration
from petalnet.callbacks import EpochRecord, TrainingState
from petalnet.data import HeldOut
from petalnet.errors import CheckpointError, PetalnetError
from petalnet.fitted import FittedModel
from petalnet.head import build_head
from petalnet.params import ClassifierParams, param_specs
from petalnet.preprocessing import Preprocessing
from petalnet.quantize import Int8Scales

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "from_payload",
    "load_model",
    "read_checkpoint",
    "resume_state",
    "to_cpu",
    "to_payload",
    "write_checkpoint",
]

FORMAT = "petalnet.checkpoint"
FORMAT_VERSION = 1
_REQUIRED = ("backbone", "head", "classes", "preprocessing")


def _plain(value: Any) -> Any:
    """Parameter values as plain data: paths and devices as strings, sequences as lists."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def _history(rows: Any) -> list[EpochRecord]:
    """History rows read back as typed records."""
    return [
        {
            "epoch": int(r["epoch"]),
            "train_loss": float(r["train_loss"]),
            "valid_loss": float(r["valid_loss"]),
            "valid_accuracy": float(r["valid_accuracy"]),
            "seconds": float(r["seconds"]),
        }
        for r in rows
    ]


def _training_state(data: Mapping[str, Any]) -> TrainingState:
    """The training state a checkpoint's content holds."""
    training = data.get("training") or {}
    return TrainingState(
        history=_history(data.get("history", [])),
        best_epoch=int(data.get("best_epoch", 0)),
        optimizer_state=dict(data.get("optimizer", {})),
        best_state=training.get("best_state", data["head"]["state_dict"]),
        last_state=training.get("last_state"),
        rng_state=training.get("rng_state"),
        average_state=training.get("average_state"),
    )


def to_payload(
    model: FittedModel, params: Mapping[str, Any], *, include_backbone: bool | None = None
) -> dict[str, Any]:
    """The checkpoint content for ``model`` trained with ``params``: tensors and plain values.

    Args:
        model: The fitted model.
        params: The classifier's parameters; ``callbacks`` (code) is never stored.
        include_backbone: Store the backbone's parameters: ``None`` does so only when they
            cannot be rebuilt from the backbone's name and weights id.

    Returns:
        The payload for :func:`write_checkpoint`.
    """
    meta = model.backbone.meta
    backbone: dict[str, Any] = {
        "name": meta.name,
        "weights": meta.weights,
        "source": meta.source,
        "feature_dim": meta.feature_dim,
    }
    if include_backbone or (include_backbone is None and not meta.restorable):
        backbone["state_dict"] = model.backbone.state_dict()
    if meta.int8 is not None:
        backbone["int8"] = meta.int8.to_payload()
    state = model.training
    payload: dict[str, Any] = {
        "petalnet_version": __version__,
        "params": {k: _plain(v) for k, v in params.items() if k != "callbacks"},
        "backbone": backbone,
        "preprocessing": meta.preprocessing.to_dict(),
        "head": {
            "hidden_units": list(model.hidden_units),
            "dropout": float(model.dropout),
            "state_dict": model.head.state_dict(),
        },
        "classes": list(model.classes),
        "category_names": model.category_names,
        "history": [dict(r) for r in state.history],
        "selection_history": [dict(r) for r in model.selection_history],
        "best_epoch": int(state.best_epoch),
        "data": {
            "n_train": int(model.n_train),
            "n_valid": int(model.n_valid),
            "held_out": model.held_out.to_dict() if model.held_out else None,
        },
        "optimizer": state.optimizer_state,
        "calibration": model.calibration.to_payload(),
    }
    if state.last_state is not None:
        payload["training"] = {"last_state": state.last_state, "rng_state": state.rng_state}
        if state.average_state is not None:
            payload["training"]["average_state"] = state.average_state
        if meta.source == "trained" and state.best_state is not None:
            # fine-tuned layers and head together, as the training loop holds them
            payload["training"]["best_state"] = state.best_state
    return payload


def from_payload(data: Mapping[str, Any]) -> tuple[dict[str, Any], FittedModel]:
    """Rebuild what :func:`to_payload` stored.

    Args:
        data: A checkpoint's content, from :func:`read_checkpoint`.

    Returns:
        ``(params, model)``: the stored parameters (those this petalnet knows are the
        caller's to filter) and the fitted model on the CPU.

    Raises:
        CheckpointError: The backbone now has another feature size.
        BackboneNotFoundError: Its backbone is not registered in this process.
        WeightsUnavailableError: Its pretrained weights are not available here.
        KeyError: A required entry is missing (the caller names the file).
    """
    spec = data["backbone"]
    stored = spec.get("state_dict")
    pre = Preprocessing.from_dict(data["preprocessing"])
    if stored is not None:
        extractor = build_backbone(spec["name"], weights=None)
        extractor.load_state_dict(stored)
        extractor = extractor.derive(
            weights=spec.get("weights"), source=spec.get("source", "trained"), preprocessing=pre
        )
        if extractor.meta.source == "named":  # saved with include_backbone=True
            extractor = extractor.derive(source="trained")
    else:
        extractor = build_backbone(spec["name"], weights=spec["weights"]).derive(preprocessing=pre)
    if spec.get("int8") is not None:  # quantised: the scales its rows were computed with
        extractor = extractor.derive(int8=Int8Scales.from_payload(spec["int8"]))
    if extractor.feature_dim != int(spec["feature_dim"]):
        raise CheckpointError(
            f"Backbone {spec['name']!r} now gives {extractor.feature_dim} features but the "
            f"checkpoint was trained on {spec['feature_dim']}; the backbone changed."
        )
    classes = [str(c) for c in data["classes"]]
    head_spec = data["head"]
    hidden = [int(h) for h in head_spec["hidden_units"]]
    head = build_head(extractor.feature_dim, len(classes), hidden, float(head_spec["dropout"]))
    head.load_state_dict(head_spec["state_dict"])
    names = data.get("category_names")
    state = _training_state(data)
    model = FittedModel(
        backbone=extractor,
        head=head.eval(),
        hidden_units=hidden,
        dropout=float(head_spec["dropout"]),
        classes=classes,
        category_names=dict(names) if names is not None else None,
        training=state,
        n_train=int(data.get("data", {}).get("n_train", 0)),  # 0: saved before they were
        n_valid=int(data.get("data", {}).get("n_valid", 0)),
        held_out=HeldOut.from_dict(data.get("data", {}).get("held_out")),
        selection_history=_history(data.get("selection_history", [])),
        calibration=Calibration.from_payload(data.get("calibration")),
    )
    return dict(data.get("params", {})), model


def load_model(path: str | os.PathLike[str]) -> tuple[dict[str, Any], FittedModel]:
    """Read a checkpoint file and rebuild what it holds, without running code from it.

    Args:
        path: The checkpoint file.

    Returns:
        ``(params, model)``: the saved parameters this petalnet knows, checked, and the model.

    Raises:
        CheckpointError: The file is missing, damaged, unsafe or not a petalnet checkpoint,
            or holds an invalid parameter value.
        BackboneNotFoundError: Its backbone is not registered in this process.
        WeightsUnavailableError: Its pretrained weights are not available here.
    """
    data = read_checkpoint(path)
    try:
        saved, model = from_payload(data)
        known = {spec.name for spec in param_specs()}
        params = {k: v for k, v in saved.items() if k in known}
        ClassifierParams(**params).validate()
        return params, model
    except PetalnetError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} is damaged or inconsistent "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})."
        ) from None


def resume_state(
    data: Mapping[str, Any],
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    classes: list[str],
    backbone: str,
) -> TrainingState:
    """Load the last epoch of a saved run into ``model``; return the state to continue from.

    Args:
        data: The content of a checkpoint written by an earlier, shorter or interrupted
            ``fit`` (see :func:`read_checkpoint`).
        path: Its file, named in errors.
        model: What this run trains (the head, with fine-tuned backbone layers before it).
        classes: This run's classes.
        backbone: This run's backbone name.

    Returns:
        The history, best epoch and weights, optimizer and random state of that run.

    Raises:
        CheckpointError: The file is unreadable, holds no training state, or was trained
            with another backbone, classes or trained layers.
    """
    training = data.get("training") or {}
    if list(data["classes"]) != list(classes) or data["backbone"]["name"] != backbone:
        raise CheckpointError(
            f"Cannot resume from {str(path)!r}: it was trained with backbone "
            f"{data['backbone']['name']!r} on {len(data['classes'])} classes, this run uses "
            f"{backbone!r} on {len(classes)}."
        )
    if "last_state" not in training:
        raise CheckpointError(f"{str(path)!r} holds no training state to resume from.")
    try:
        model.load_state_dict(training["last_state"])
    except RuntimeError:
        raise CheckpointError(
            f"Cannot resume from {str(path)!r}: its classifier has other layer sizes or "
            "trains other layers; use the same hidden_units, strategy and unfreeze_blocks "
            "as the run that wrote it."
        ) from None
    return _training_state(data)


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
