"""Typed results: one top-k prediction, and evaluation metrics computed from log-probabilities."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypedDict

import torch
from torch import nn

from petalnet.images import ImageInput

__all__ = [
    "EvaluationReport",
    "ImagePrediction",
    "Misclassified",
    "Prediction",
    "evaluation_report",
    "image_predictions",
    "top_predictions",
]


@dataclass(frozen=True)
class Prediction:
    """One of the top-k guesses for an image.

    Attributes:
        label: Display name (from the category names, else the class folder name).
        class_id: The class folder name, e.g. ``"73"``.
        probability: Probability in ``[0, 1]``.
        index: Output index of the class in the model.
    """

    label: str
    class_id: str
    probability: float
    index: int

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a plain dict."""
        return asdict(self)


@dataclass(frozen=True)
class ImagePrediction:
    """The outcome for one image of :meth:`~petalnet.FlowerClassifier.iter_predictions`.

    Attributes:
        image: The image as given.
        predictions: Its top-k predictions; empty when it could not be read.
        error: Why it could not be read (naming the file), else ``None``.
    """

    image: ImageInput
    predictions: list[Prediction]
    error: str | None = None


class Misclassified(TypedDict):
    """One image :meth:`~petalnet.FlowerClassifier.evaluate` got wrong."""

    image: str
    """Its file."""
    true: str
    """Its class folder name."""
    predicted: str
    """The class folder name predicted."""
    probability: float
    """The probability given to the predicted class."""


class EvaluationReport(TypedDict):
    """What :meth:`~petalnet.FlowerClassifier.evaluate` returns."""

    accuracy: float
    """Top-1 accuracy (``nan`` without readable images)."""
    top5_accuracy: float
    """Share of images whose class is among the five most likely."""
    loss: float
    """Mean negative log-likelihood."""
    n_images: int
    """Readable images evaluated."""
    per_class_accuracy: dict[str, float]
    """Top-1 accuracy per class folder name (classes with images only)."""
    per_class_count: dict[str, int]
    """Images per class folder name."""
    confusion_matrix: list[list[int]]
    """Counts; rows true classes, columns predictions, in ``classes_`` order."""
    folder: str
    """The folder evaluated."""
    n_skipped: int
    """Unreadable images left out."""
    skipped: list[str]
    """One message per unreadable image, naming it."""
    misclassified: list[Misclassified]
    """The images got wrong, most confident mistake first."""


def top_predictions(
    log_probs: torch.Tensor,
    topk: int,
    classes: Sequence[str],
    names: Mapping[str, str] | None,
) -> list[list[Prediction]]:
    """Turn a ``(N, C)`` batch of log-probabilities into ``N`` lists of top-k predictions.

    Args:
        log_probs: Model outputs.
        topk: How many classes per image (capped at ``C``).
        classes: Class folder names by output index.
        names: Class folder name to display name; missing entries show the folder name.

    Returns:
        One list per image, sorted by decreasing probability.
    """
    k = min(int(topk), log_probs.shape[1])
    probs, idx = log_probs.float().exp().topk(k, dim=1)
    names = names or {}
    return [
        [
            Prediction(
                label=names.get(classes[i], classes[i]),
                class_id=classes[i],
                probability=float(p),
                index=int(i),
            )
            for p, i in zip(row_p.tolist(), row_i.tolist(), strict=True)
        ]
        for row_p, row_i in zip(probs, idx, strict=True)
    ]


def image_predictions(
    images: Sequence[ImageInput],
    log_probs: torch.Tensor,
    positions: torch.Tensor,
    errors: Sequence[str],
    topk: int,
    classes: Sequence[str],
    names: Mapping[str, str] | None,
) -> list[ImagePrediction]:
    """One :class:`ImagePrediction` per image, for images of which some could not be read.

    Args:
        images: The images, in order.
        log_probs: ``(N, C)`` outputs for the readable ones.
        positions: ``(N,)`` their positions in ``images``.
        errors: One message per unreadable image, in the order of ``images``.
        topk: How many classes per image.
        classes: Class folder names by output index.
        names: Class folder name to display name.

    Returns:
        The outcomes, in the order of ``images``.
    """
    found = dict(
        zip(positions.tolist(), top_predictions(log_probs, topk, classes, names), strict=True)
    )
    unread = iter(errors)
    return [
        ImagePrediction(image, found[i]) if i in found else ImagePrediction(image, [], next(unread))
        for i, image in enumerate(images)
    ]


def evaluation_report(
    log_probs: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[str],
    folder: str = "",
    skipped: Sequence[str] = (),
    images: Sequence[str] | None = None,
) -> EvaluationReport:
    """Compute the metrics :meth:`FlowerClassifier.evaluate` returns.

    Args:
        log_probs: ``(N, C)`` model outputs.
        labels: ``(N,)`` true class indices.
        classes: Class folder names by output index.
        folder: The folder evaluated.
        skipped: Messages of the unreadable images left out.
        images: The file of each row, to list the misclassified ones.

    Returns:
        ``accuracy``, ``top5_accuracy``, ``loss`` (mean NLL), ``n_images``,
        ``per_class_accuracy`` / ``per_class_count`` keyed by class folder name (classes
        without images are left out), and ``confusion_matrix``: ``C x C`` counts as nested
        lists, rows true classes and columns predictions, in ``classes`` order; and
        ``folder``, ``n_skipped``, ``skipped``, ``misclassified``.
    """
    n = len(labels)
    if n == 0:
        nan = float("nan")
        return {
            "accuracy": nan,
            "top5_accuracy": nan,
            "loss": nan,
            "n_images": 0,
            "per_class_accuracy": {},
            "per_class_count": {},
            "confusion_matrix": [[0] * len(classes) for _ in classes],
            "folder": folder,
            "n_skipped": len(skipped),
            "skipped": list(skipped),
            "misclassified": [],
        }
    confidence, pred = log_probs.max(1)
    wrong = (pred != labels).nonzero().flatten().tolist() if images is not None else []
    misclassified: list[Misclassified] = [
        {
            "image": str(images[i]),
            "true": classes[int(labels[i])],
            "predicted": classes[int(pred[i])],
            "probability": float(confidence[i].exp()),
        }
        for i in wrong
        if images is not None
    ]
    misclassified.sort(key=lambda m: -m["probability"])
    top5 = log_probs.topk(min(5, log_probs.shape[1]), dim=1).indices
    correct = pred == labels
    per_acc: dict[str, float] = {}
    per_count: dict[str, int] = {}
    for i in sorted(set(labels.tolist())):
        mask = labels == i
        per_acc[classes[i]] = float(correct[mask].float().mean())
        per_count[classes[i]] = int(mask.sum())
    return {
        "accuracy": float(correct.float().mean()),
        "top5_accuracy": float((top5 == labels[:, None]).any(1).float().mean()),
        "loss": float(nn.functional.nll_loss(log_probs.float(), labels)),
        "n_images": n,
        "per_class_accuracy": per_acc,
        "per_class_count": per_count,
        "confusion_matrix": torch.bincount(
            labels * len(classes) + pred, minlength=len(classes) ** 2
        )
        .reshape(len(classes), len(classes))
        .tolist(),
        "folder": folder,
        "n_skipped": len(skipped),
        "skipped": list(skipped),
        "misclassified": misclassified,
    }
