"""The "larger views" lever: lite0 fed a 256 px centre crop instead of 224 px.

Usage (from the repository root)::

    python benchmarks/larger_views.py --preset fast-cpu --no-baseline \\
        --variant 'crop256={"backbone": "lite0_crop256"}'

It registers a plugin backbone, ``lite0_crop256``: EfficientNet-Lite0 with its ImageNet
weights and ``Preprocessing(resize_size=256, crop_size=256)``, i.e. the whole 256 px short
side of the photos in ``../shared`` (a larger crop would only upsample them), then runs
``benchmarks/levers.py`` with the arguments given (same hold-out protocol; ``valid/`` is
never read).
"""

from __future__ import annotations

import dataclasses
import sys

import levers

import petalnet
from petalnet._types import WeightsArg
from petalnet.backbones.lite import build_lite


@petalnet.register_backbone("lite0_crop256")
def lite0_crop256(weights: WeightsArg = "DEFAULT") -> petalnet.FeatureExtractor:
    """EfficientNet-Lite0 seeing a 256 px centre crop of a 256 px short side."""
    fx = build_lite("efficientnet_lite0", weights)
    pre = dataclasses.replace(fx.meta.preprocessing, resize_size=256, crop_size=256)
    fx.meta = dataclasses.replace(fx.meta, name="lite0_crop256", preprocessing=pre)
    return fx


if __name__ == "__main__":
    levers.main(sys.argv[1:])
