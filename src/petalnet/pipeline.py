"""The one image pipeline: images to backbone outputs, for fit, evaluate, predict alike.

An :class:`ImagePipeline` holds a prepared backbone and every decision about running it:
the device, the precision, the feature cache, the batch size, test-time augmentation views
and sharding under ``torchrun``. Unreadable files go to the
:class:`~petalnet.images.Unreadable` policy the caller passes.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Sequence

import torch
from torch import nn

from petalnet import distributed
from petalnet.backbones.base import FeatureExtractor
from petalnet.cache import FeatureCache
from petalnet.calibration import Calibration, HeadOutput
from petalnet.features import (
    CENTER,
    MIRROR,
    Features,
    View,
    extract_features,
    feature_cache,
    prepare_backbone,
)
from petalnet.images import ImageInput, Unreadable
from petalnet.preprocessing import Augmentation

__all__ = ["ImagePipeline"]


class ImagePipeline:
    """Runs one frozen backbone over images: the path every image takes.

    Args:
        backbone: The feature extractor (frozen here; a fast BN-folded copy runs it).
        device: Where to compute.
        precision: Autocast dtype (see :func:`~petalnet.precision.resolve_precision`).
        cache_dir: Feature cache folder; ``None`` for the default one.
        use_cache: Whether to read and fill the on-disk feature cache.
        batch_size: Images per backbone pass; ``None`` means 8 on a CPU (small batches
            stay in cache and ran fastest in our measurements) and 64 elsewhere.
        num_workers: Image-decoding worker processes; ``None`` picks a default.
        seed: Seed of augmented views.
        augmentation: Policy of augmented views.
        storage: The dtype outputs are kept in, in memory and in the cache (see
            :meth:`for_backbone`).
        verbose: ``0`` silent, ``1`` progress bars and one line per pass (rank 0 only).
    """

    def __init__(
        self,
        backbone: FeatureExtractor,
        *,
        device: torch.device,
        precision: torch.dtype = torch.float32,
        cache_dir: str | os.PathLike[str] | None = None,
        use_cache: bool = True,
        batch_size: int | None = None,
        num_workers: int | None = None,
        seed: int | None = None,
        augmentation: Augmentation = "classic",
        storage: torch.dtype = torch.float32,
        verbose: int = 0,
    ) -> None:
        self.backbone = backbone
        self.device = device
        self.precision = precision
        self.cache_dir = cache_dir
        self.use_cache = use_cache
        self.batch_size = batch_size or (8 if device.type == "cpu" else 64)
        self.num_workers = num_workers
        self.seed = seed
        self.augmentation: Augmentation = augmentation
        self.storage = storage
        self.verbose = verbose if distributed.is_main() else 0

    @functools.cached_property
    def runner(self) -> nn.Module:
        """The frozen, BN-folded copy that runs the backbone (made on first use)."""
        return prepare_backbone(self.backbone, self.device)

    @functools.cached_property
    def cache(self) -> FeatureCache | None:
        """The feature cache of this backbone (its parameters hashed on first use)."""
        if not self.use_cache:
            return None
        return feature_cache(self.backbone, self.precision, self.cache_dir, self.storage)

    def for_backbone(
        self, backbone: FeatureExtractor, storage: torch.dtype = torch.float32
    ) -> ImagePipeline:
        """The same settings over another backbone (a frozen front, a fine-tuned one).

        Args:
            backbone: The other feature extractor.
            storage: The dtype its outputs are kept in: ``torch.float16`` halves the
                memory and disk of a frozen front's layer outputs.

        Returns:
            A new pipeline with its own prepared copy and cache namespace.
        """
        other = copy.copy(self)
        other.backbone = backbone
        other.storage = storage
        for lazy in ("runner", "cache"):  # made again, for the other backbone
            other.__dict__.pop(lazy, None)
        return other

    @staticmethod
    def test_views(tta: bool) -> list[View]:
        """The views evaluation and prediction average: the centre crop, and its mirror."""
        return [CENTER, MIRROR] if tta else [CENTER]

    def features(
        self,
        images: Sequence[ImageInput],
        labels: Sequence[int] | None = None,
        *,
        unreadable: Unreadable,
        views: Sequence[View] = (CENTER,),
        desc: str = "features",
        use_cache: bool = True,
        quiet: bool = False,
    ) -> Features:
        """Backbone outputs of ``images``, one pass per view, cached where possible.

        Under ``torchrun`` each rank computes its shard and every rank gets all rows (in
        rank order, with their labels).

        Args:
            images: File paths or in-memory images.
            labels: One label per image; positions in ``images`` when ``None``.
            unreadable: What to do with an unreadable file.
            views: The renderings to compute; with several, rows are stacked ``(V, N, D)``.
            desc: Label of the progress output.
            use_cache: ``False`` skips the feature cache for this call (predictions).
            quiet: No progress output for this call.

        Returns:
            Rows of the readable images, their labels, positions and the unreadable ones.
        """
        world = distributed.world_size()
        if world > 1:
            desc = f"{desc} (rank 0's share of {world})"
            rank = distributed.rank()
            labels = list(labels) if labels is not None else list(range(len(images)))
            images, labels = distributed.shard(images), distributed.shard(labels)
        results = [
            extract_features(
                self.runner,
                images,
                labels,
                preprocessing=self.backbone.preprocessing,
                device=self.device,
                unreadable=unreadable,
                batch_size=self.batch_size,
                num_workers=self.num_workers,
                precision=self.precision,
                cache=self.cache if use_cache else None,
                view=view,
                seed=self.seed,
                augmentation=self.augmentation,
                storage=self.storage,
                desc=desc if len(views) == 1 else f"{desc} ({view.label})",
                verbose=0 if quiet else self.verbose,
            )
            for view in views
        ]
        if world > 1:
            results = [
                Features(
                    torch.cat(distributed.gather([r.features])),
                    torch.cat(distributed.gather([r.labels])),
                    torch.cat(distributed.gather([r.positions * world + rank])),
                    distributed.gather(r.skipped),
                )
                for r in results
            ]
        first = results[0]
        if len(results) == 1:
            return first
        return Features(
            torch.stack([r.features for r in results]), first.labels, first.positions, first.skipped
        )

    def outputs(
        self,
        head: nn.Module,
        calibration: Calibration,
        images: Sequence[ImageInput],
        *,
        unreadable: Unreadable,
        tta: bool,
    ) -> tuple[HeadOutput, torch.Tensor]:
        """What the head says of images never seen before (no cache, no progress).

        Args:
            head: Maps this backbone's features to log-probabilities.
            calibration: The temperature, novelty score and threshold to apply.
            images: File paths or in-memory images.
            unreadable: What to do with an unreadable file.
            tta: Average the centre crop and its mirror.

        Returns:
            Calibrated log-probabilities, novelty and unknown flags of the readable images,
            and their ``(N,)`` positions.
        """
        views = self.test_views(tta)
        feats = self.features(
            images, unreadable=unreadable, views=views, use_cache=False, quiet=True
        )
        return calibration.outputs(head, feats.features, self.device), feats.positions
