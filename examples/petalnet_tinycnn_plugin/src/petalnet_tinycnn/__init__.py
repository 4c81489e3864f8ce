"""A backbone plugin for petalnet: a tiny CNN, found through the ``petalnet.backbones`` group."""

from __future__ import annotations

import torch
from torch import nn

from petalnet import FeatureExtractor, Preprocessing


def tinycnn(weights="DEFAULT") -> FeatureExtractor:
    """Build the tiny CNN.

    Args:
        weights: ``None`` for a random initialisation, or a path to a state-dict file of its
            body ("DEFAULT" means the same here: this example ships no pretrained weights).

    Returns:
        The feature extractor (64 features).
    """
    body = nn.Sequential(
        nn.Conv2d(3, 32, 3, stride=2, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
    )
    weights_id = None
    if weights not in (None, "DEFAULT"):
        body.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        weights_id = f"file:{weights}"
    return FeatureExtractor(
        body,
        feature_dim=64,
        preprocessing=Preprocessing(resize_size=144, crop_size=128),
        weights=weights_id,
        restorable=False,  # checkpoints then carry these parameters
    )
