"""Fine-tuning strategies: which part of the backbone trains, and what is computed once.

``"freeze"`` trains the head on cached features. ``"freeze_unfreeze"`` trains the head
first, then the last blocks of the backbone with it: the frozen front of the backbone runs
once per image (its output is cached like features are), so only the unfrozen blocks run
every epoch, which is what makes partial fine-tuning affordable on a CPU. ``"full"`` (or
unfreezing every block) trains the whole backbone from decoded, freshly augmented images.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import get_args

import torch
from torch import nn

from petalnet import calibration, distributed
from petalnet._types import Strategy
from petalnet.backbones.base import FeatureExtractor
from petalnet.batches import Batches, ImageBatches, TensorBatches
from petalnet.calibration import sample_rows
from petalnet.data import TrainingData
from petalnet.errors import PetalnetError
from petalnet.features import View
from petalnet.images import Unreadable
from petalnet.pipeline import ImagePipeline

__all__ = [
    "STRATEGIES",
    "Strategy",
    "TrainingPlan",
    "calibration_rows",
    "plan_training",
    "training_batches",
]

STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)
LAYER_OUTPUT_STORAGE = torch.float16
"""How a frozen front's layer outputs are kept (memory and cache): half of float32's
bytes; the loop computes in float32 (or its autocast dtype) all the same."""


@dataclass
class TrainingPlan:
    """How one ``fit`` splits the work.

    Attributes:
        front: Runs once per image (cached) to make the rows training learns from; ``None``
            when images are decoded every epoch because training reaches the first layer.
        back: Backbone layers trained with the head, mapping ``front``'s rows (or images)
            to features; ``None`` when the whole backbone stays frozen.
        freeze_epochs: Epochs at the start during which ``back`` stays frozen.
    """

    front: FeatureExtractor | None
    back: nn.Module | None
    freeze_epochs: int


def plan_training(
    backbone: FeatureExtractor,
    strategy: Strategy,
    *,
    unfreeze_blocks: int | None,
    freeze_epochs: int | None,
    epochs: int,
    name: str,
) -> TrainingPlan:
    """Decide what runs once and what trains, for ``strategy`` on ``backbone``.

    Args:
        backbone: The feature extractor (its blocks: :attr:`FeatureExtractor.num_blocks`).
        strategy: One of :data:`STRATEGIES`.
        unfreeze_blocks: For ``"freeze_unfreeze"``: how many blocks, from the end, train
            after the head-only epochs; ``None`` (or at least the number of blocks) for all.
        freeze_epochs: Head-only epochs; ``None`` means half of ``epochs`` for
            ``"freeze_unfreeze"`` and 0 for ``"full"``.
        epochs: Epochs of the whole run.
        name: The backbone's registered name, for messages.

    Returns:
        The plan.

    Raises:
        PetalnetError: Unknown strategy, or blocks asked of a backbone that declares none.
    """
    if strategy not in STRATEGIES:
        raise PetalnetError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}.")
    if strategy == "freeze":
        return TrainingPlan(front=backbone, back=None, freeze_epochs=0)
    if strategy == "full":
        return TrainingPlan(front=None, back=backbone, freeze_epochs=int(freeze_epochs or 0))
    head_only = epochs // 2 if freeze_epochs is None else int(freeze_epochs)
    total = backbone.num_blocks
    if unfreeze_blocks is None or (total and unfreeze_blocks >= total):
        return TrainingPlan(front=None, back=backbone, freeze_epochs=head_only)
    if not total:
        raise PetalnetError(
            f"Backbone {name!r} declares no blocks (its body is not an nn.Sequential of "
            "blocks), so it cannot unfreeze some of them: pass unfreeze_blocks=None to "
            "fine-tune it whole, or use strategy='freeze'."
        )
    front, back = backbone.split(int(unfreeze_blocks))
    return TrainingPlan(front=front, back=back, freeze_epochs=head_only)


def training_batches(
    plan: TrainingPlan,
    pipeline: ImagePipeline,
    data: TrainingData,
    unreadable: Unreadable,
    *,
    augment_views: int,
) -> tuple[Batches, Batches]:
    """What the training loop iterates over, for ``plan``.

    Rows computed once through ``pipeline`` (features, or the frozen front's output, cached
    on disk; ``augment_views`` augmented views of each training image take turns by
    epoch), or, when training reaches the first layer, images decoded and freshly
    augmented every epoch.

    Args:
        plan: From :func:`plan_training`.
        pipeline: The image pipeline of the whole backbone.
        data: The training and validation samples.
        unreadable: What to do with an unreadable image.
        augment_views: Cached augmented views per training image (0: the centre crop).

    Returns:
        ``(train, valid)`` sources on the pipeline's device (under ``torchrun``: this
        rank's share of each).
    """
    device = pipeline.device
    if plan.front is None:
        seed = pipeline.seed if pipeline.seed is not None else int(torch.randint(2**62, ()))
        train_images, valid_images = (
            ImageBatches(
                samples,
                pipeline.backbone.preprocessing,
                device,
                unreadable,
                augment=augment,
                seed=seed,
                augmentation=pipeline.augmentation,
                num_workers=pipeline.num_workers,
            )
            # under torchrun each rank decodes its share, as rows are extracted by share
            for samples, augment in (
                (distributed.shard(data.train), True),
                (distributed.shard(data.valid), False),
            )
        )
        return train_images, valid_images
    source, what = _row_source(plan.front, pipeline)
    rows = []
    for split, samples, views in (
        ("train", data.train, View.augmented(augment_views)),
        ("valid", data.valid, [View()]),
    ):
        paths, labels = [p for p, _ in samples], [t for _, t in samples]
        got = source.features(
            paths, labels, unreadable=unreadable, views=views, desc=f"{split} {what}"
        )
        rows.append(TensorBatches(got.features, got.labels, device))
    return rows[0], rows[1]


def _row_source(front: FeatureExtractor, pipeline: ImagePipeline) -> tuple[ImagePipeline, str]:
    """The pipeline whose rows training learns from, and what progress output calls them."""
    if front is not pipeline.backbone:  # the frozen front of a partly trained backbone
        return pipeline.for_backbone(front, storage=LAYER_OUTPUT_STORAGE), "frozen-layer outputs"
    return pipeline, "features"


def calibration_rows(
    plan: TrainingPlan,
    pipeline: ImagePipeline,
    data: TrainingData,
    unreadable: Unreadable,
    valid: Batches,
    views: Sequence[View],
    size: int | None = None,
) -> list[Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """The rows calibration fits on: at most ``size`` validation images, under each view.

    Calibration fits the temperature and the unknown threshold on what ``evaluate`` and
    ``predict`` answer: with test-time augmentation, the average over the views. Only
    the images calibrated on get their further views computed (stored like other rows:
    ``evaluate`` on the same images then reads them), so a split of any size costs at
    most ``size`` images' views and holds at most ``size`` images' rows in memory.

    Args:
        plan: From :func:`plan_training`.
        pipeline: The image pipeline of the whole backbone.
        data: The training and validation samples.
        unreadable: What to do with an unreadable image.
        valid: The validation rows the training loop scored (:func:`training_batches`).
        views: The test-time views (:meth:`ImagePipeline.test_views`), the centre crop first.
        size: The most validation images to calibrate on (evenly spaced over the split);
            ``None``: :data:`~petalnet.calibration.CALIBRATION_SIZE`.

    Returns:
        One iterator of ``(rows, labels)`` batches per view, the centre crop first, over
        the same images in the same order (this rank's share under ``torchrun``); only the
        centre crop when images are decoded every epoch (training reaches the first layer)
        or there are no further views.
    """
    n, size = len(data.valid), calibration.CALIBRATION_SIZE if size is None else size
    if plan.front is None or len(views) < 2 or not n:
        return [valid.batches(sample_rows(len(valid.labels), size), 256, 1)]
    source, what = _row_source(plan.front, pipeline)
    spread = torch.linspace(0, n - 1, size).long().tolist() if n > size else range(n)
    picked = [data.valid[i] for i in spread]  # (of the whole split: each rank takes its share)
    paths, labels = [p for p, _ in picked], [t for _, t in picked]
    if n <= size:  # every validation image: their centre rows are ``valid`` itself
        centre = valid
    else:  # a sample: its centre rows are looked up in the row store (stored by training)
        got = source.features(paths, labels, unreadable=unreadable, desc=f"valid {what}")
        centre = TensorBatches(got.features, got.labels, pipeline.device)
    more = source.features(
        paths, labels, unreadable=unreadable, views=views[1:], desc=f"valid {what}"
    )
    rows = more.features if len(views) > 2 else more.features.unsqueeze(0)  # (V, N, D)
    sources = [centre, *(TensorBatches(r, more.labels, pipeline.device) for r in rows)]
    return [s.batches(torch.arange(len(s.labels)), 256, 1) for s in sources]
