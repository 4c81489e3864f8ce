"""Backbones: the registry, torchvision's classifiers and the offline EfficientNet-Lite0."""

from petalnet.backbones import lite as _lite  # noqa: F401  (registers efficientnet_lite0)
from petalnet.backbones import torchvision as _torchvision  # noqa: F401  (registers the rest)
from petalnet.backbones.base import FeatureExtractor, WeightsArg
from petalnet.backbones.registry import (
    ENTRY_POINT_GROUP,
    BackboneBuilder,
    build_backbone,
    get_backbone,
    list_backbones,
    register_backbone,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "BackboneBuilder",
    "FeatureExtractor",
    "WeightsArg",
    "build_backbone",
    "get_backbone",
    "list_backbones",
    "register_backbone",
]
