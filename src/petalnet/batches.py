"""What the training loop iterates over: rows held in memory, or image files streamed.

With a frozen backbone (or a frozen front part of it) the loop learns from rows computed
once: feature vectors, or the cached output of the frozen layers. When training reaches the
first layer (``strategy="full"``) there is nothing to precompute, and images are decoded and
freshly augmented every epoch instead. Both sources answer the same two questions: which
labels they hold, and the batches of a given order of their rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import torch

from petalnet.data import Sample
from petalnet.features import sample_seed
from petalnet.images import Unreadable, image_loader
from petalnet.preprocessing import Augmentation, Preprocessing

__all__ = ["Batches", "ImageBatches", "TensorBatches"]


class Batches(Protocol):
    """A labelled data source for :class:`~petalnet.training.Trainer`."""

    labels: torch.Tensor
    """``(N,)`` class indices of the rows, on the training device."""

    def batches(
        self, order: torch.Tensor, batch_size: int, epoch: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(inputs, labels)`` on the training device, rows taken in ``order``."""
        ...


class TensorBatches:
    """Rows computed once: ``(N, D)``, or ``(V, N, D)`` for ``V`` cached views per image.

    The rows stay where extraction wrote them (memory, or a memory-mapped file for many
    rows: see :mod:`petalnet.rows`); each batch is gathered from them by index and moved
    to the device, so memory holds a batch, not the rows. Epoch ``e`` uses view
    ``(e - 1) % V``, so cached augmentations take turns. Rows kept in a smaller dtype
    (float16 frozen-layer outputs) are yielded as float32.

    Args:
        inputs: The rows (features or frozen-layer outputs), on the CPU.
        labels: ``(N,)`` class indices.
        device: Where the loop computes.
    """

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor, device: torch.device) -> None:
        self.inputs = inputs
        self.labels = labels.to(device)
        self.device = device
        self.views = inputs.ndim == 3  # rows are flat, so a third dimension is the views

    def batches(
        self, order: torch.Tensor, batch_size: int, epoch: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(rows, labels)`` slices of ``order``, from the view epoch ``epoch`` uses."""
        x = self.inputs[(epoch - 1) % len(self.inputs)] if self.views else self.inputs
        order = order.cpu()
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            rows = x[idx].to(self.device, non_blocking=True).float()
            yield rows, self.labels[idx.to(self.labels.device)]


class ImageBatches:
    """Image files decoded per epoch: freshly augmented for training, centre-cropped otherwise.

    Every (image, epoch) pair has its own augmentation seed, so a run is reproducible and a
    resumed run draws what the uninterrupted one would have. An unreadable image goes to
    ``unreadable`` (once per file across epochs) and its row to ``skipped_rows``.

    Args:
        samples: ``(path, class index)`` pairs.
        preprocessing: The backbone's preprocessing (and augmentation).
        device: Where the loop computes.
        unreadable: What to do with an unreadable image.
        augment: Random augmentation (training) instead of the centre crop (validation).
        seed: Seed of the augmentations.
        augmentation: The augmentation policy (see
            :meth:`~petalnet.Preprocessing.augment_transform`).
        num_workers: DataLoader workers; ``None`` picks a default for this machine.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        preprocessing: Preprocessing,
        device: torch.device,
        unreadable: Unreadable,
        *,
        augment: bool,
        seed: int,
        augmentation: Augmentation = "classic",
        num_workers: int | None = None,
    ) -> None:
        self.samples = list(samples)
        self.preprocessing = preprocessing
        self.device = device
        self.labels = torch.tensor([int(t) for _, t in self.samples], device=device)
        self.augment = augment
        self.seed = int(seed)
        self.augmentation = augmentation
        self.num_workers = num_workers
        self.unreadable = unreadable
        self.skipped_rows: set[int] = set()

    def batches(
        self, order: torch.Tensor, batch_size: int, epoch: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Decode the images in ``order`` and yield ``(images, labels)`` batches."""
        pre = self.preprocessing
        idx = [int(i) for i in order]
        chosen = [self.samples[i] for i in idx]
        seeds = None
        if self.augment:
            seeds = [sample_seed(path, f"epoch{epoch}", self.seed) for path, _ in chosen]
        loader = image_loader(
            [path for path, _ in chosen],
            pre.augment_transform(self.augmentation) if self.augment else pre.transform(),
            draft_size=pre.resize_size,
            seeds=seeds,
            batch_size=batch_size,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        for images, positions, errors in loader:
            for position, error in errors:
                self.unreadable(error)
                self.skipped_rows.add(idx[position])
            if images is None:
                continue
            x = images.to(self.device, non_blocking=True)
            rows = torch.tensor([idx[p] for p in positions], device=self.device)
            yield x.contiguous(memory_format=torch.channels_last), self.labels[rows]
