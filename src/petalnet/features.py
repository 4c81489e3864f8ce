"""Running a frozen backbone over images: batched, gradient-free, device-agnostic.

With a frozen backbone its output never changes, so ``fit`` computes each image's features
once here and trains the head on them for every epoch.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from petalnet.backbones.base import FeatureExtractor
from petalnet.data import ImageDataset, Sample

__all__ = ["default_num_workers", "extract_features", "prepare_backbone", "run_backbone"]


def default_num_workers() -> int:
    """Data-loading worker processes: none on machines with two cores or fewer."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return 0 if (cpus or 1) <= 2 else min(4, (cpus or 1) // 2)


def _conv_bn_pairs(module: nn.Module) -> list[tuple[nn.Sequential, int]]:
    """Find ``Conv2d`` layers directly followed by a ``BatchNorm2d`` inside ``Sequential``s."""
    pairs = []
    for seq in module.modules():
        if isinstance(seq, nn.Sequential):
            kids = list(seq)
            pairs += [
                (seq, i)
                for i in range(len(kids) - 1)
                if isinstance(kids[i], nn.Conv2d)
                and isinstance(kids[i + 1], nn.BatchNorm2d)
                and kids[i].out_channels == kids[i + 1].num_features
            ]
    return pairs


def prepare_backbone(backbone: FeatureExtractor, device: torch.device) -> FeatureExtractor:
    """Freeze ``backbone`` and return the module to run it with, for inference only.

    ``backbone`` is frozen and put in eval mode. Where it has convolutions followed by batch
    norm, the returned module is a copy with each pair folded into one convolution (the same
    function, 1.3-1.6x faster on a CPU); otherwise it is ``backbone`` itself. Either way it
    sits on ``device`` in channels-last layout. Keep ``backbone`` for saving: the copy's
    parameters no longer match the architecture's.

    Args:
        backbone: The feature extractor.
        device: Where to compute.

    Returns:
        The module to compute features with.
    """
    backbone.requires_grad_(False)
    backbone.eval()
    fast = backbone
    if _conv_bn_pairs(backbone):
        fast = copy.deepcopy(backbone)
        for seq, i in _conv_bn_pairs(fast):
            seq[i] = fuse_conv_bn_eval(seq[i], seq[i + 1])
            seq[i + 1] = nn.Identity()
    return fast.to(device=device, memory_format=torch.channels_last)


def _autocast(device: torch.device, enabled: bool) -> AbstractContextManager[Any]:
    if not enabled:
        return nullcontext()
    dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def run_backbone(
    backbone: FeatureExtractor, batch: torch.Tensor, device: torch.device, amp: bool = False
) -> torch.Tensor:
    """Compute features of one preprocessed batch, returned as float32 on ``device``.

    Args:
        backbone: A prepared (frozen, eval-mode) backbone on ``device``.
        batch: ``(N, 3, H, W)`` normalised images.
        device: Where to compute.
        amp: Use mixed precision (bfloat16 on CPU, float16 on GPUs).

    Returns:
        ``(N, D)`` features.
    """
    x = batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), _autocast(device, amp):
        return backbone(x).float()


def extract_features(
    backbone: FeatureExtractor,
    samples: Sequence[Sample],
    *,
    device: torch.device,
    batch_size: int = 32,
    num_workers: int | None = None,
    amp: bool = False,
    desc: str = "features",
    verbose: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``backbone`` over image files.

    Args:
        backbone: A prepared (frozen, eval-mode) backbone on ``device``.
        samples: ``(path, class index)`` pairs, preprocessed with ``backbone.preprocessing``.
        device: Where to compute.
        batch_size: Images per forward pass.
        num_workers: DataLoader workers; ``None`` picks :func:`default_num_workers`.
        amp: Use mixed precision.
        desc: Label of the progress bar.
        verbose: ``0`` silences the progress bar.

    Returns:
        ``(features, labels)``: float32 ``(N, D)`` on the CPU and int64 ``(N,)``.

    Raises:
        ImageReadError: An image cannot be read (the message names it).
    """
    workers = default_num_workers() if num_workers is None else num_workers
    pre = backbone.preprocessing
    loader = DataLoader(
        ImageDataset(samples, pre.transform(), draft_size=pre.resize_size),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    start = time.perf_counter()
    with tqdm(total=len(samples), desc=desc, unit="img", disable=verbose <= 0, leave=False) as bar:
        for images, targets in loader:
            feats.append(run_backbone(backbone, images, device, amp).cpu())
            labels.append(targets)
            bar.update(len(targets))
    elapsed = time.perf_counter() - start
    if verbose > 0 and samples:
        rate = len(samples) / elapsed
        print(f"{desc}: {len(samples)} images in {elapsed:.1f}s ({rate:.1f} img/s)")
    if not feats:
        return torch.empty(0, backbone.feature_dim), torch.empty(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels)
