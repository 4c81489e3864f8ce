"""Several backbones side by side: ``"efficientnet_lite0+efficientnet_lite1"``.

A fused backbone runs every part on the same image and concatenates their features, so a
head trains on what both see (multi-backbone feature fusion). The image is prepared once,
with the preprocessing of the part that wants the largest crop; each other part gets that
crop resized to its own crop size (antialiased bilinear) and re-normalised to its own mean
and standard deviation: about the same region of the photo as its own preprocessing (the
ratio of crop to resize differs by a few percent at most between ImageNet models), resampled in
two steps instead of one (for lite0 inside lite0+lite1 the features differ from lite0's own
by a cosine of about 0.97; the accuracy measured in docs/benchmarks.md is of this path).
Any registered names can be joined with ``+``. A fused backbone's blocks are those of its
first part: ``strategy="freeze_unfreeze"`` fine-tunes the last blocks of the first part while
the other parts stay frozen (``"efficientnet_lite0+efficientnet_lite1"``: lite0 fine-tuned
beside frozen lite1 features). The frozen side, the first part's front and the other parts
whole, runs once per image like any frozen front (:meth:`Fused.split_first`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from petalnet._types import WeightsArg
from petalnet.backbones.base import FeatureExtractor
from petalnet.errors import PetalnetError

__all__ = ["SEPARATOR", "Fused", "FusedBack", "fuse", "fused_weights_id", "part_weights"]

SEPARATOR = "+"


class Fused(nn.Module):
    """Run each part on one prepared batch and concatenate their flattened features.

    Args:
        parts: The backbones, in order; the one with the largest crop sets the input.
    """

    def __init__(self, parts: Sequence[FeatureExtractor]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)
        largest = max(parts, key=lambda p: p.preprocessing.crop_size).preprocessing
        self.preprocessing = largest  # how the input is prepared
        self.crop_size = largest.crop_size
        for i, part in enumerate(parts):  # x_part = (x * std_in + mean_in - mean) / std
            mean = torch.tensor(part.preprocessing.mean).view(1, 3, 1, 1)
            std = torch.tensor(part.preprocessing.std).view(1, 3, 1, 1)
            in_mean = torch.tensor(largest.mean).view(1, 3, 1, 1)
            in_std = torch.tensor(largest.std).view(1, 3, 1, 1)
            self.register_buffer(f"scale{i}", in_std / std, persistent=False)
            self.register_buffer(f"shift{i}", (in_mean - mean) / std, persistent=False)
        self.sizes = [p.preprocessing.crop_size for p in parts]

    def part_input(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """What part ``i`` sees of ``x``: re-normalised, and resized to its crop size.

        Args:
            x: ``(N, 3, H, W)`` images prepared for the largest part.
            i: The part's index.

        Returns:
            ``(N, 3, h, w)`` images prepared for part ``i``.
        """
        y: torch.Tensor = x * getattr(self, f"scale{i}") + getattr(self, f"shift{i}")
        size = self.sizes[i]
        if size != self.crop_size:
            factor = size / self.crop_size
            shape = (round(x.shape[-2] * factor), round(x.shape[-1] * factor))
            y = nn.functional.interpolate(
                y, size=shape, mode="bilinear", align_corners=False, antialias=True
            )
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` images prepared for the largest part -> ``(N, sum of D)``."""
        outputs = [
            torch.flatten(part(self.part_input(x, i)), 1) for i, part in enumerate(self.parts)
        ]
        return torch.cat(outputs, dim=1)

    @property
    def block_names(self) -> tuple[str, ...]:
        """The blocks partial fine-tuning can unfreeze: those of the first part."""
        return tuple(self._extractors()[0].block_names)

    def split_first(self, trainable_blocks: int) -> tuple[FeatureExtractor, nn.Module]:
        """Cut the first part into a frozen front and its last ``trainable_blocks`` blocks.

        Args:
            trainable_blocks: Blocks of the first part to train, from 1 to its number of
                blocks minus 1.

        Returns:
            ``(front, back)``: ``front`` is a fused extractor of the first part's front and
            the other parts whole (its rows: the front's flattened output, then the other
            parts' features); ``back`` maps such rows to this backbone's features, running
            the first part's last blocks on their share. Both share this module's parts.
        """
        part, *others = self._extractors()
        first, back = part.split(trainable_blocks)
        return fuse([first, *others]), FusedBack(back, first.feature_dim)

    def _extractors(self) -> list[FeatureExtractor]:
        return [cast(FeatureExtractor, part) for part in self.parts]


class FusedBack(nn.Module):
    """The trained side of a fused backbone: the first part's last blocks, the rest as is.

    Args:
        back: Maps the first part's front rows to its features (:meth:`FeatureExtractor.split`).
        width: How many leading columns of a row are the first part's front rows.
    """

    def __init__(self, back: nn.Module, width: int) -> None:
        super().__init__()
        self.back = back
        self.width = int(width)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """``(N, width + others)`` fused front rows -> ``(N, D)`` fused features."""
        return torch.cat([self.back(rows[:, : self.width]), rows[:, self.width :]], dim=1)


def fused_weights_id(parts: Sequence[FeatureExtractor]) -> str | None:
    """The weights identifier of a fused backbone: the parts' one if shared, else each."""
    ids = [p.weights for p in parts]
    if all(i is None for i in ids):
        return None
    if len(set(ids)) == 1:
        return ids[0]
    return SEPARATOR.join(str(i) for i in ids)


def part_weights(weights: WeightsArg, names: Sequence[str]) -> list[WeightsArg]:
    """What each part of the fused backbone ``names`` is built with.

    Args:
        weights: One value for every part (``"DEFAULT"``, ``None``, a shared named set), or
            one identifier per part joined with ``+`` (what a checkpoint stores when the
            parts' identifiers differ).
        names: The parts' registered names.

    Returns:
        One weights argument per part.

    Raises:
        PetalnetError: ``weights`` names another number of parts.
    """
    if not (isinstance(weights, str) and SEPARATOR in weights):
        return [weights] * len(names)
    split = weights.split(SEPARATOR)
    if len(split) != len(names):
        raise PetalnetError(
            f"Weights {weights!r} name {len(split)} parts; the backbone "
            f"{SEPARATOR.join(names)!r} has {len(names)}."
        )
    return [None if w == "None" else w for w in split]


def fuse(parts: Sequence[FeatureExtractor]) -> FeatureExtractor:
    """One feature extractor running ``parts`` side by side (features concatenated).

    Args:
        parts: Two or more built backbones, in order.

    Returns:
        The fused feature extractor: the preprocessing of the part with the largest crop,
        restorable when every part is.

    Raises:
        PetalnetError: Fewer than two parts.
    """
    if len(parts) < 2:
        raise PetalnetError(f"A fused backbone needs two or more parts; got {len(parts)}.")
    body = Fused(parts)
    return FeatureExtractor(
        body,
        feature_dim=sum(p.feature_dim for p in parts),
        preprocessing=body.preprocessing,
        weights=fused_weights_id(parts),
        restorable=all(p.restorable for p in parts),
    )
