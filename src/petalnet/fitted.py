"""What ``fit`` learned: the :class:`FittedModel` every module passes around.

The estimator holds one in ``model_``; the checkpoint format (:mod:`petalnet.checkpoint`)
writes and reads it, exports and the predictor read it. :class:`FittedAttribute` exposes
its fields as the estimator's attributes ending in ``_``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar, overload

from torch import nn

from petalnet.backbones.base import FeatureExtractor
from petalnet.calibration import Calibration
from petalnet.callbacks import EpochRecord, TrainingState
from petalnet.data import HeldOut

__all__ = ["FittedAttribute", "FittedModel", "HoldsModel"]


@dataclass
class FittedModel:
    """What ``fit`` learned (or ``load`` read): everything needed to predict, and to resume.

    Attributes:
        backbone: The feature extractor (fine-tuned when ``meta.source == "trained"``).
        head: The classifier on its features; outputs log-probabilities.
        hidden_units: The head's hidden-layer widths.
        dropout: The head's dropout probability.
        classes: Class folder names; ``classes[i]`` is output ``i``.
        category_names: Class folder name to flower name, if known.
        training: History, best epoch and what a resumed run continues from.
        n_train: Readable training images used.
        n_valid: Readable validation images used.
        skipped: One message per unreadable image left out while fitting.
        selection_history: With ``refit=True``: the history of the run whose validation
            split chose the epoch count (``training`` is then the refit's).
        calibration: Temperature, novelty score and unknown threshold (identity and never
            unknown until :func:`~petalnet.calibration.fit_calibration` sets them).
        held_out: How the validation split was carved from the training folder (``None``
            when it was a ``valid/`` folder), so that ``evaluate`` there scores only it.
    """

    backbone: FeatureExtractor
    head: nn.Module
    hidden_units: list[int]
    dropout: float
    classes: list[str]
    category_names: dict[str, str] | None
    training: TrainingState = field(default_factory=TrainingState)
    n_train: int = 0
    n_valid: int = 0
    skipped: list[str] = field(default_factory=list)
    selection_history: list[EpochRecord] = field(default_factory=list)
    calibration: Calibration = field(default_factory=lambda: Calibration(score="msp"))
    held_out: HeldOut | None = None

    @property
    def validated_history(self) -> list[EpochRecord]:
        """The epochs that were validated.

        With ``refit=True``, the run that chose the epoch count (the refit has no
        validation split); else the run itself.
        """
        return self.selection_history or self.training.history

    @property
    def class_to_idx(self) -> dict[str, int]:
        """Class folder name to output index."""
        return {c: i for i, c in enumerate(self.classes)}

    def facts(self) -> list[tuple[str, str]]:
        """What a notebook shows of it: ``(what, value)`` rows."""
        meta = self.backbone.meta
        rows = [
            ("backbone", f"{meta.name} ({meta.weights}, {meta.source})"),
            ("classes", str(len(self.classes))),
            ("training images", f"{self.n_train} (+{self.n_valid} validation)"),
        ]
        chose = self.validated_history
        if chose:
            kept = chose[min(max(self.training.best_epoch, 1), len(chose)) - 1]
            refit = ", then refitted on every labelled image" if self.selection_history else ""
            rows.append(
                (
                    "kept epoch",
                    f"{self.training.best_epoch} of {len(chose)}: valid accuracy "
                    f"{kept['valid_accuracy']:.2%}{refit}",
                )
            )
        if self.skipped:
            rows.append(("unreadable images skipped", str(len(self.skipped))))
        return rows


T = TypeVar("T")


class HoldsModel(Protocol):
    """Something that holds a :class:`FittedModel` once fitted (the estimator)."""

    def fitted_model(self) -> FittedModel:
        """The model; raises :class:`~petalnet.NotFittedError` before ``fit``/``load``."""
        ...


class FittedAttribute(Generic[T]):
    """An attribute of the estimator (``classes_``, ...) read from its fitted model.

    Args:
        get: Reads the value from the fitted model.
        settable: The :class:`FittedModel` field that assigning to the attribute sets;
            read-only when empty.
    """

    def __init__(self, get: Callable[[FittedModel], T], settable: str = "") -> None:
        self.get = get
        self.settable = settable

    def __set__(self, obj: HoldsModel, value: T) -> None:
        """Set the model's field, where the attribute is settable."""
        if not self.settable:
            raise AttributeError("a fitted attribute is read-only; it comes from fit or load")
        setattr(obj.fitted_model(), self.settable, value)

    @overload
    def __get__(self, obj: None, owner: type) -> FittedAttribute[T]: ...
    @overload
    def __get__(self, obj: HoldsModel, owner: type) -> T: ...
    def __get__(self, obj: HoldsModel | None, owner: type) -> FittedAttribute[T] | T:
        """The value, from ``obj``'s fitted model."""
        return self if obj is None else self.get(obj.fitted_model())
