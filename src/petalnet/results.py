"""Typed results: one top-k prediction, and evaluation metrics computed from log-probabilities."""

from __future__ import annotations

import html
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, TypedDict, overload

import numpy as np
import torch

from petalnet.calibration import ReliabilityBin, calibration_metrics, reliability_bins
from petalnet.images import ImageInput

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PathArg = str | os.PathLike[str] | None

__all__ = [
    "EvaluationReport",
    "ImagePrediction",
    "Misclassified",
    "Prediction",
    "ReliabilityBin",
    "TopK",
    "check_topk",
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

    def __repr__(self) -> str:
        return (
            f"Prediction({self.label!r}, {self.probability:.2%}, class_id={self.class_id!r}, "
            f"index={self.index})"
        )


class TopK(list[Prediction]):
    """The top-k predictions for one image, most likely first, and whether it is unknown.

    A plain ``list`` of :class:`Prediction` (so code written before it still works) with two
    more attributes.

    Attributes:
        unknown: The photo looks like none of the known flowers: its novelty score is above
            the threshold chosen on the validation split (see docs/unknown.md). The
            predictions are then the closest known classes, not an identification.
        novelty: The novelty score (higher: less like any known class; ``nan`` if none).
    """

    def __init__(
        self,
        predictions: Iterable[Prediction] = (),
        *,
        unknown: bool = False,
        novelty: float = math.nan,
        image: ImageInput | None = None,
    ) -> None:
        super().__init__(predictions)
        self.unknown = unknown
        self.novelty = novelty
        self.image = image
        """The image predicted on, where it was given as a file (drawn by :meth:`plot`)."""

    def __repr__(self) -> str:
        shown = ", ".join(f"{p.label!r} {p.probability:.1%}" for p in self)
        flag = ", unknown" if self.unknown else ""
        return f"TopK([{shown}]{flag}, novelty={self.novelty:.3g})"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(p.label)}</td><td>{html.escape(p.class_id)}</td>"
            f"<td style='text-align:right'>{p.probability:.1%}</td>"
            f"<td><div style='background:#4c9a6a;height:0.8em;width:{100 * p.probability:.0f}px'>"
            "</div></td></tr>"
            for p in self
        )
        note = (
            "<p><b>unknown flower?</b> these are the closest known classes.</p>"
            if self.unknown
            else ""
        )
        return (
            f"{note}<table><tr><th>flower</th><th>class</th><th>probability</th><th></th></tr>"
            f"{rows}</table>"
        )

    def plot(self, image: Any = None, *, path: PathArg = None) -> Figure:
        """The image beside a bar chart of these predictions (see :func:`petalnet.plot.prediction`).

        Args:
            image: The image to draw; ``None``: the file predicted on, or bars alone.
            path: Also write a PNG here.

        Returns:
            The matplotlib figure (a notebook shows it).

        Raises:
            PetalnetError: matplotlib is not installed.
        """
        from petalnet import plot

        return plot.prediction(self.image if image is None else image, self, path=path)


@dataclass(frozen=True)
class ImagePrediction:
    """The outcome for one image of :meth:`~petalnet.FlowerClassifier.iter_predictions`.

    Attributes:
        image: The image as given.
        predictions: Its top-k predictions (a :class:`TopK`); empty when it could not be read.
        error: Why it could not be read (naming the file), else ``None``.
    """

    image: ImageInput
    predictions: list[Prediction]
    error: str | None = None

    @property
    def unknown(self) -> bool:
        """Whether the photo looks like none of the known flowers (see :class:`TopK`)."""
        return bool(getattr(self.predictions, "unknown", False))

    @property
    def novelty(self) -> float:
        """The novelty score (``nan`` for an unreadable image)."""
        return float(getattr(self.predictions, "novelty", math.nan))


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


class _Metrics(TypedDict):
    """The keys of an :class:`EvaluationReport`."""

    accuracy: float
    """Top-1 accuracy (``nan`` without readable images)."""
    top5_accuracy: float
    """Share of images whose class is among the five most likely."""
    loss: float
    """Mean negative log-likelihood (the calibration metrics' ``nll``: one name per number)."""
    ece: float
    """Expected calibration error (15 equal-width confidence bins)."""
    brier: float
    """Brier score: mean squared distance of the probabilities to the one-hot truth."""
    unknown_rate: float
    """Share of these (known-class) images reported unknown."""
    reliability: list[ReliabilityBin]
    """Confidence against accuracy in 15 bins (the reliability diagram's data)."""
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
    held_out: bool
    """Only the images held out for validation when the model was fitted on this folder
    (the rest were trained on, so they are not scored)."""
    n_skipped: int
    """Unreadable images left out."""
    skipped: list[str]
    """One message per unreadable image, naming it."""
    misclassified: list[Misclassified]
    """The images got wrong, most confident mistake first."""


_FloatKey = Literal["accuracy", "top5_accuracy", "loss", "ece", "brier", "unknown_rate"]
_HEADLINE = ("accuracy", "top5_accuracy", "loss", "ece", "unknown_rate")


class EvaluationReport(dict[str, Any]):
    """What :meth:`~petalnet.FlowerClassifier.evaluate` returns: a ``dict`` of metrics.

    It is a plain ``dict`` (``json.dumps`` it, index it: ``report["accuracy"]``, typed per key)
    whose keys are those of :class:`_Metrics`: ``accuracy``, ``top5_accuracy``, ``loss``,
    ``ece``, ``brier``, ``unknown_rate``, ``reliability``, ``n_images``,
    ``per_class_accuracy``, ``per_class_count``, ``confusion_matrix``, ``folder``,
    ``held_out``, ``n_skipped``, ``skipped`` and ``misclassified``. Beyond a dict: a
    one-line ``repr``, a table in notebooks, and its plots.

    Args:
        metrics: The metrics.
        classes: Class folder names by output index (the confusion matrix's order).
        names: Class folder name to flower name, where known.
    """

    def __init__(
        self,
        metrics: Mapping[str, Any] = {},  # read only
        classes: Sequence[str] = (),
        names: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(metrics)
        self.classes = list(classes)
        self.names = dict(names or {})

    if TYPE_CHECKING:  # each key's type, as the TypedDict it replaces gave it

        @overload
        def __getitem__(self, key: _FloatKey) -> float: ...
        @overload
        def __getitem__(self, key: Literal["n_images", "n_skipped"]) -> int: ...
        @overload
        def __getitem__(self, key: Literal["folder"]) -> str: ...
        @overload
        def __getitem__(self, key: Literal["held_out"]) -> bool: ...
        @overload
        def __getitem__(self, key: Literal["reliability"]) -> list[ReliabilityBin]: ...
        @overload
        def __getitem__(self, key: Literal["per_class_accuracy"]) -> dict[str, float]: ...
        @overload
        def __getitem__(self, key: Literal["per_class_count"]) -> dict[str, int]: ...
        @overload
        def __getitem__(self, key: Literal["confusion_matrix"]) -> list[list[int]]: ...
        @overload
        def __getitem__(self, key: Literal["skipped"]) -> list[str]: ...
        @overload
        def __getitem__(self, key: Literal["misclassified"]) -> list[Misclassified]: ...
        @overload
        def __getitem__(self, key: str) -> Any: ...
        def __getitem__(self, key: str) -> Any: ...

    def __repr__(self) -> str:
        if not self:
            return "EvaluationReport({})"
        shown = [
            f"{k}={self[k]:.2%}" if k != "loss" else f"loss={self[k]:.4f}"
            for k in _HEADLINE
            if k in self
        ]
        shown += [
            f"n_images={self.get('n_images')}",
            f"misclassified={len(self.get('misclassified', []))}",
            f"folder={self.get('folder')!r}",
        ]
        return f"EvaluationReport({', '.join(shown)})"

    def _name(self, class_id: str) -> str:
        name = self.names.get(class_id)
        return f"{name} ({class_id})" if name else class_id

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{k}</td><td style='text-align:right'>{self[k]:.4f}</td></tr>"
            if k == "loss"
            else f"<tr><td>{k}</td><td style='text-align:right'>{self[k]:.2%}</td></tr>"
            for k in _HEADLINE
            if k in self
        )
        worst = sorted(self.get("per_class_accuracy", {}).items(), key=lambda kv: kv[1])[:5]
        counts = self.get("per_class_count", {})
        hardest = "".join(
            f"<tr><td>{html.escape(self._name(c))}</td><td style='text-align:right'>"
            f"{acc:.0%} of {counts.get(c, 0)}</td></tr>"
            for c, acc in worst
        )
        held = " (the split held out when fitting)" if self.get("held_out") else ""
        return (
            f"<p><b>{html.escape(str(self.get('folder')))}</b>{held}: "
            f"{self.get('n_images')} images, {self.get('n_skipped', 0)} unreadable skipped</p>"
            f"<table>{rows}</table><p>hardest classes</p><table>{hardest}</table>"
        )

    def plot_confusion(self, *, top_confused: int = 10, path: PathArg = None) -> Figure:
        """The confusion matrix, its most confused pairs listed beside it.

        Args:
            top_confused: How many confused pairs to list beside it.
            path: Also write a PNG here.

        Returns:
            The matplotlib figure.

        Raises:
            PetalnetError: matplotlib is not installed.
        """
        from petalnet import plot

        classes = self.classes or [str(i) for i in range(len(self["confusion_matrix"]))]
        return plot.confusion_matrix(
            self["confusion_matrix"],
            [self.names.get(c, c) for c in classes],
            class_ids=classes,
            top_confused=top_confused,
            path=path,
        )

    def plot_reliability(self, *, path: PathArg = None) -> Figure:
        """Confidence against accuracy (:func:`petalnet.plot.reliability`).

        Args:
            path: Also write a PNG here.

        Returns:
            The matplotlib figure.

        Raises:
            PetalnetError: matplotlib is not installed.
        """
        from petalnet import plot

        return plot.reliability(self["reliability"], ece=self["ece"], path=path)

    def plot_misclassified(self, *, max_images: int = 24, path: PathArg = None) -> Figure:
        """The images got wrong, most confident first (:func:`petalnet.plot.misclassified`).

        Args:
            max_images: Show at most this many.
            path: Also write a PNG here.

        Returns:
            The matplotlib figure.

        Raises:
            PetalnetError: matplotlib is not installed.
        """
        from petalnet import plot

        return plot.misclassified(
            self["misclassified"], self.names, max_images=max_images, path=path
        )


def check_topk(topk: object, most: int | None = None) -> int:
    """``topk`` as a whole number from 1 (to ``most``): the one check every door makes.

    Args:
        topk: What the caller asked for (a number, or a query string's text).
        most: The largest allowed, if any.

    Returns:
        The number.

    Raises:
        ValueError: Not a whole number, or out of range (the message says which).
    """
    if isinstance(topk, str) and topk.strip().lstrip("-").isdigit():
        topk = int(topk)
    if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)):
        raise ValueError(f"topk must be a whole number; got {topk!r}.")
    if most is not None and not 1 <= topk <= most:
        raise ValueError(f"topk must be between 1 and {most}; got {topk}.")
    if topk < 1:
        raise ValueError(f"topk must be at least 1; got {topk}.")
    return int(topk)


def top_predictions(
    log_probs: torch.Tensor,
    topk: int,
    classes: Sequence[str],
    names: Mapping[str, str] | None,
    novelty: torch.Tensor | None = None,
    unknown: torch.Tensor | None = None,
) -> list[TopK]:
    """Turn a ``(N, C)`` batch of log-probabilities into ``N`` lists of top-k predictions.

    Args:
        log_probs: Model outputs.
        topk: How many classes per image (capped at ``C``).
        classes: Class folder names by output index.
        names: Class folder name to display name; missing entries show the folder name.
        novelty: ``(N,)`` novelty scores.
        unknown: ``(N,)`` unknown flags.

    Returns:
        One list per image, sorted by decreasing probability.
    """
    n = len(log_probs)
    scores = novelty.tolist() if novelty is not None else [math.nan] * n
    flags = unknown.tolist() if unknown is not None else [False] * n
    k = min(int(topk), log_probs.shape[1])
    probs, idx = log_probs.float().exp().topk(k, dim=1)
    names = names or {}
    return [
        TopK(
            (
                Prediction(
                    label=names.get(classes[i], classes[i]),
                    class_id=classes[i],
                    probability=float(p),
                    index=int(i),
                )
                for p, i in zip(row_p.tolist(), row_i.tolist(), strict=True)
            ),
            unknown=bool(flag),
            novelty=float(score),
        )
        for row_p, row_i, score, flag in zip(probs, idx, scores, flags, strict=True)
    ]


def image_predictions(
    images: Sequence[ImageInput],
    log_probs: torch.Tensor,
    positions: torch.Tensor,
    errors: Sequence[tuple[int, str]],
    topk: int,
    classes: Sequence[str],
    names: Mapping[str, str] | None,
    novelty: torch.Tensor | None = None,
    unknown: torch.Tensor | None = None,
) -> list[ImagePrediction]:
    """One :class:`ImagePrediction` per image, for images of which some could not be read.

    Args:
        images: The images, in order.
        log_probs: ``(N, C)`` outputs for the readable ones.
        positions: ``(N,)`` their positions in ``images``.
        errors: ``(position, message)`` of each unreadable image (a repeated file is
            named at each of its positions).
        topk: How many classes per image.
        classes: Class folder names by output index.
        names: Class folder name to display name.
        novelty: ``(N,)`` novelty scores of the readable ones.
        unknown: ``(N,)`` their unknown flags.

    Returns:
        The outcomes, in the order of ``images``.
    """
    tops = top_predictions(log_probs, topk, classes, names, novelty, unknown)
    found = dict(zip(positions.tolist(), tops, strict=True))
    unread = dict(errors)
    return [
        ImagePrediction(image, found[i]) if i in found else ImagePrediction(image, [], unread[i])
        for i, image in enumerate(images)
    ]


def evaluation_report(
    log_probs: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[str],
    folder: str = "",
    skipped: Sequence[str] = (),
    images: Sequence[str] | None = None,
    unknown: torch.Tensor | None = None,
    *,
    held_out: bool = False,
    names: Mapping[str, str] | None = None,
) -> EvaluationReport:
    """Compute the metrics :meth:`FlowerClassifier.evaluate` returns.

    Args:
        log_probs: ``(N, C)`` model outputs.
        labels: ``(N,)`` true class indices.
        classes: Class folder names by output index.
        folder: The folder evaluated.
        skipped: Messages of the unreadable images left out.
        images: The file of each row, to list the misclassified ones.
        unknown: ``(N,)`` unknown flags of the rows.
        held_out: The images are a fitted folder's held-out validation split.
        names: Class folder name to flower name (for the report's tables and plots).

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
        empty: _Metrics = {
            "accuracy": nan,
            "top5_accuracy": nan,
            "loss": nan,
            "ece": nan,
            "brier": nan,
            "unknown_rate": nan,
            "reliability": [],
            "n_images": 0,
            "per_class_accuracy": {},
            "per_class_count": {},
            "confusion_matrix": [[0] * len(classes) for _ in classes],
            "folder": folder,
            "held_out": held_out,
            "n_skipped": len(skipped),
            "skipped": list(skipped),
            "misclassified": [],
        }
        return EvaluationReport(empty, classes, names)
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
    calibration = calibration_metrics(log_probs.float().exp(), labels)
    metrics: _Metrics = {
        "accuracy": float(correct.float().mean()),
        "top5_accuracy": float((top5 == labels[:, None]).any(1).float().mean()),
        "loss": calibration["nll"],
        "ece": calibration["ece"],
        "brier": calibration["brier"],
        "unknown_rate": float(unknown.float().mean()) if unknown is not None else 0.0,
        "reliability": reliability_bins(log_probs.float().exp(), labels),
        "n_images": n,
        "per_class_accuracy": per_acc,
        "per_class_count": per_count,
        "confusion_matrix": torch.bincount(
            labels * len(classes) + pred, minlength=len(classes) ** 2
        )
        .reshape(len(classes), len(classes))
        .tolist(),
        "folder": folder,
        "held_out": held_out,
        "n_skipped": len(skipped),
        "skipped": list(skipped),
        "misclassified": misclassified,
    }
    return EvaluationReport(metrics, classes, names)
