"""The one image pipeline: images to backbone outputs, for fit, evaluate, predict alike.

An :class:`ImagePipeline` holds a prepared backbone and every decision about running it:
the device, the precision, the feature cache, the batch size, test-time augmentation views
and sharding under ``torchrun``. Unreadable files go to the
:class:`~petalnet.images.Unreadable` policy the caller passes.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from petalnet import distributed
from petalnet._allocator import keep_cpu_buffers
from petalnet._types import TestViews
from petalnet.backbones.base import FeatureExtractor
from petalnet.calibration import Calibration, HeadOutput
from petalnet.features import (
    CENTER,
    MIRROR,
    Features,
    Unread,
    View,
    as_labels,
    feature_cache,
    fill_rows,
    prepare_backbone,
    readable_rows,
)
from petalnet.images import ImageInput, Unreadable
from petalnet.onednn import onednn_available, pack_convolutions
from petalnet.preprocessing import Augmentation
from petalnet.rows import empty_rows
from petalnet.rowstore import RowStore

__all__ = ["ImagePipeline", "Scored", "describe_tta"]

_TTA_WORDS = {
    "flip": "centre crop and mirror",
    "crops": "centre crop and the crops at both ends of the longer side",
    "crops+flip": "centre crop, the crops at both ends of the longer side and their mirrors",
}


def describe_tta(tta: bool | TestViews) -> str:
    """What output says of ``tta``, e.g. ``"TTA on (centre crop and mirror averaged)"``."""
    if tta is False:
        return "TTA off"
    return f"TTA on ({_TTA_WORDS['flip' if tta is True else tta]} averaged)"


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
        distributed.init(device)  # under torchrun: join the process group, pick the GPU
        if device.type == "cpu":
            keep_cpu_buffers()  # reuse batch-sized buffers instead of page-faulting them anew
        self.verbose = verbose if distributed.is_main() else 0

    @functools.cached_property
    def runner(self) -> nn.Module:
        """The frozen, BN-folded copy that runs the backbone (made on first use).

        On the CPU its convolutions run as prepacked oneDNN calls with their activations
        fused (:func:`~petalnet.onednn.pack_convolutions`; not those of an int8 graph, which
        is lowered to oneDNN int8 calls: :func:`~petalnet.onednn.lower_int8_graph`; the
        float parts of a partly quantised fused backbone, and the fine-tuned blocks after an
        int8 front, are packed).
        """
        runner = prepare_backbone(self.backbone, self.device)
        int8 = self.backbone.meta.int8
        whole_int8 = int8 is not None and not int8.parts and not int8.front
        if self.device.type == "cpu" and not whole_int8 and onednn_available():
            # packing changes the module in place: never the backbone itself (it is saved)
            runner = pack_convolutions(copy.deepcopy(runner) if runner is self.backbone else runner)
        return runner

    @functools.cached_property
    def cache(self) -> RowStore | None:
        """The row store of this backbone (its parameters hashed on first use)."""
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
    def test_views(tta: bool | TestViews) -> list[View]:
        """The views evaluation and prediction average (the one place that decides them).

        Args:
            tta: ``False``: the centre crop; ``True`` or ``"flip"``: it and its mirror;
                ``"crops"``: it and the crops at both ends of the image's longer side, which
                see what the centre crop cuts off; ``"crops+flip"``: those three and their
                mirrors.

        Returns:
            The views, the centre crop first.

        Raises:
            ValueError: ``tta`` is none of those.
        """
        if tta is False:
            return [CENTER]
        if tta is True or tta == "flip":
            return [CENTER, MIRROR]
        if tta not in ("crops", "crops+flip"):
            raise ValueError(
                f"tta must be False, True, 'flip', 'crops' or 'crops+flip'; got {tta!r}."
            )
        crops = [CENTER, View("side", 1), View("side", 2)]
        if tta == "crops":
            return crops
        return crops + [dataclasses.replace(v, mirrored=True) for v in crops]

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
        """Backbone outputs of ``images`` under each view, stored where possible.

        Unaugmented views (test-time crops and mirrors) are rendered from one decode of
        each image; augmented views, each drawn from its own seed, take a pass each.

        Every batch is written into its slot of one array (memory-mapped when large, see
        :mod:`petalnet.rows`), so memory does not grow with the number of images. Under
        ``torchrun`` each rank computes and keeps only its share, every ``world``-th image
        from its rank; positions are always those in the whole ``images`` list.

        Args:
            images: File paths or in-memory images.
            labels: One label per image; positions in ``images`` when ``None``.
            unreadable: What to do with an unreadable file.
            views: The renderings to compute; with several, rows are ``(V, N, D)``.
            desc: Label of the progress output.
            use_cache: ``False`` skips the row store for this call (predictions).
            quiet: No progress output for this call.

        Returns:
            Rows of the readable images (this rank's share), their labels, positions and
            the unreadable ones.
        """
        world, me = distributed.world_size(), distributed.rank()
        targets = as_labels(labels, len(images))
        if world > 1:
            desc = f"{desc} (rank {me}'s share of {world})"
            images, targets = distributed.shard(images), targets[me::world]
        n, dim = len(images), self.backbone.feature_dim
        rows = empty_rows((len(views), n, dim) if len(views) > 1 else (n, dim), self.storage)
        skipped: dict[int, Unread] = {}
        if len(views) > 1 and all(view.kind != "augmented" for view in views):
            calls = [(list(views), rows)]  # crops and mirrors of one decode
        else:  # each augmented view is drawn from its own seed: one pass each
            calls = [([view], rows[v] if len(views) > 1 else rows) for v, view in enumerate(views)]
        for group, out in calls:
            labels_of = ", ".join(view.label for view in group)
            for bad in fill_rows(
                self.runner,
                images,
                out,
                preprocessing=self.backbone.preprocessing,
                device=self.device,
                unreadable=unreadable,
                batch_size=self.batch_size,
                num_workers=self.num_workers,
                precision=self.precision,
                cache=self.cache if use_cache else None,
                views=group,
                seed=self.seed,
                augmentation=self.augmentation,
                desc=desc if len(views) == 1 else f"{desc} ({labels_of})",
                verbose=0 if quiet else self.verbose,
            ):
                skipped.setdefault(bad.position, bad)
        got = readable_rows(rows, targets, sorted(skipped.values()))
        if world == 1:
            return got
        return Features(
            got.features,
            got.labels,
            got.positions * world + me,
            [Unread(u.position * world + me, u.message) for u in got.skipped],
        )

    def outputs(
        self,
        head: nn.Module,
        calibration: Calibration,
        images: Sequence[ImageInput],
        labels: Sequence[int] | None = None,
        *,
        unreadable: Unreadable,
        tta: bool | TestViews,
        use_cache: bool = False,
        desc: str = "predict",
        quiet: bool = True,
    ) -> Scored:
        """What the head says of images, in input order (under ``torchrun`` on every rank).

        Args:
            head: Maps this backbone's features to log-probabilities.
            calibration: The temperature, novelty score and threshold to apply.
            images: File paths or in-memory images.
            labels: Their labels (evaluation), or ``None``.
            unreadable: What to do with an unreadable file.
            tta: Which views to average (see :meth:`test_views`).
            use_cache: Read and fill the row store (evaluation of files seen again).
            desc: Label of the progress output.
            quiet: No progress output.

        Returns:
            The calibrated outputs of the readable images with their labels and positions,
            and the unreadable ones, all in input order.
        """
        feats = self.features(
            images,
            labels,
            unreadable=unreadable,
            views=self.test_views(tta),
            desc=desc,
            use_cache=use_cache,
            quiet=quiet,
        )
        out = calibration.outputs(head, feats.features, self.device)
        if distributed.world_size() == 1:
            return Scored(out, feats.labels, feats.positions, feats.skipped)
        # only the outputs travel: every rank gets all of them, put back in input order
        positions = distributed.gather_tensor(feats.positions)
        order = positions.argsort()
        gathered = [distributed.gather_tensor(t)[order] for t in (*out, feats.labels)]
        skipped = sorted(distributed.gather_objects(feats.skipped))
        return Scored(HeadOutput(*gathered[:3]), gathered[3], positions[order], skipped)


class Scored(NamedTuple):
    """What :meth:`ImagePipeline.outputs` returns.

    Attributes:
        head: Calibrated log-probabilities, novelty and unknown flags of the readable images.
        labels: ``(N,)`` their labels (positions when none were given).
        positions: ``(N,)`` their positions in the input list, ascending.
        skipped: Each unreadable input with its position, in input order.
    """

    head: HeadOutput
    labels: torch.Tensor
    positions: torch.Tensor
    skipped: list[Unread]
