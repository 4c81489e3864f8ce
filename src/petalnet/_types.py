"""The choices and aliases of petalnet's parameters, in a module that imports no torch.

Each ``Literal`` type here is the one declaration of a parameter's allowed values; the
modules that act on them (``strategy``, ``training``, ``preprocessing``, ``precision``,
``export``) re-export them. Keeping them torch-free lets ``petalnet --help`` start fast.
"""

from __future__ import annotations

import os
from typing import Literal

__all__ = [
    "Amp",
    "Augmentation",
    "ClassWeight",
    "ExportFormat",
    "Monitor",
    "NoveltyScore",
    "Quantize",
    "Schedule",
    "Split",
    "Strategy",
    "TestViews",
    "WeightsArg",
]

WeightsArg = str | os.PathLike[str] | None
"""What a ``weights`` argument may be: a named set (``"DEFAULT"``), a file path, or ``None``."""

Amp = bool | Literal["auto"]
"""What an ``amp`` parameter may be."""

TestViews = Literal["flip", "crops", "crops+flip"]
"""The views test-time augmentation averages (``tta=True`` is ``"flip"``): the centre crop
and its mirror; the centre crop and the crops at both ends of the image's longer side; or
those three and their mirrors."""

Augmentation = Literal["classic", "trivialaugment"]
"""Training augmentation policies (see ``Preprocessing.augment_transform``)."""

Strategy = Literal["freeze", "freeze_unfreeze", "full"]
"""What trains: the head only, the head then the last backbone blocks, or everything."""

Schedule = Literal["constant", "cosine", "onecycle"]
"""Learning-rate schedules: the classic recipe's constant rate, cosine decay to 0, or one-cycle."""

Monitor = Literal["valid_loss", "valid_accuracy", "last"]
"""What picks the epoch whose weights are kept: the lowest validation loss, the highest
validation accuracy, or the last epoch (the validation split then only reports)."""

Split = Literal["grouped", "stratified"]
"""How ``fit`` carves a validation split from a folder without ``valid/``: keeping each group of
copies and other shots of one plant on one side (the data doctor's groups), or per class at
random."""

Quantize = Literal["int8", "auto"]
"""How a frozen backbone (or the frozen front of a partly fine-tuned one, with ``"int8"``)
may be quantised (``None``: it runs in floating point; ``"auto"``: int8 where the CPU runs
oneDNN's int8 kernels and torchao is installed, for the backbones registered with
``auto_int8`` (with ``"freeze_unfreeze"``: their frozen front, where the float path is
float32), else ``None``: :func:`petalnet.quantize.resolve_quantize`)."""

ClassWeight = Literal["balanced"]
"""Class weighting of the loss: ``"balanced"`` (or ``None`` for none)."""

ExportFormat = Literal["pt2", "onnx"]
"""Formats ``FlowerClassifier.export`` writes."""

NoveltyScore = Literal["combined", "rmaha", "knn", "energy", "max_logit", "msp"]
"""How unlike every known class a photo is: the head's doubt plus the features' distance
(combined), the relative Mahalanobis distance of the features, the distance to the nearest
training features, the energy or the largest logit of the head, or one minus its largest
probability."""
