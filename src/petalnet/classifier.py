"""``FlowerClassifier``: the estimator. It orchestrates; each step has its own module.

See docs/architecture.md for the data path and which module owns what.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import torch
from typing_extensions import Self

from petalnet import checkpoint, distributed
from petalnet._types import Amp
from petalnet.backbones.base import FeatureExtractor
from petalnet.callbacks import EpochRecord
from petalnet.data import DataSource
from petalnet.errors import NotFittedError
from petalnet.export import ExportFormat, export_model
from petalnet.fitted import FittedAttribute, FittedModel
from petalnet.fitting import PIPELINE_PARAMS, fit_model, make_pipeline
from petalnet.images import FileOrArray, ImageInput, as_image_list
from petalnet.params import ClassifierParams, params_docstring
from petalnet.pipeline import ImagePipeline
from petalnet.predictor import Predictor
from petalnet.results import EvaluationReport, ImagePrediction, TopK
from petalnet.splits import split_groups

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["FlowerClassifier"]


class FlowerClassifier(ClassifierParams):
    """A flower-photo classifier trained by transfer learning on an ImageNet backbone.

    The default is the classic recipe: a frozen, ImageNet-pretrained VGG16, a new classifier
    (hidden layers with ReLU and dropout, ending in LogSoftmax) trained with NLLLoss and Adam
    on the classifier's parameters only, validated after every epoch, keeping the best
    epoch's weights. ``__init__`` only stores parameters; ``fit`` validates them, sets ``model_``.
    """

    model_: FittedModel  # set by fit or load; the attributes below read from it
    classes_ = FittedAttribute(lambda m: m.classes)
    class_to_idx_ = FittedAttribute(lambda m: m.class_to_idx)
    history_: FittedAttribute[list[EpochRecord]] = FittedAttribute(lambda m: m.training.history)
    best_epoch_ = FittedAttribute(lambda m: m.training.best_epoch)
    optimizer_state_ = FittedAttribute(lambda m: m.training.optimizer_state)
    backbone_ = FittedAttribute(lambda m: m.backbone)
    head_ = FittedAttribute(lambda m: m.head)
    n_train_ = FittedAttribute(lambda m: m.n_train)
    n_valid_ = FittedAttribute(lambda m: m.n_valid)
    skipped_ = FittedAttribute(lambda m: m.skipped)
    selection_history_ = FittedAttribute(lambda m: m.selection_history)
    category_names_ = FittedAttribute(lambda m: m.category_names, "category_names")

    @property
    def device_(self) -> torch.device:
        """Where the fitted model computes (``device`` resolved on this machine)."""
        return self._pipeline().device

    @property
    def pipeline_(self) -> ImagePipeline:
        """The image pipeline of ``evaluate`` and ``predict`` (features of any images)."""
        return self._pipeline()

    def plot_history(self, *, path: str | os.PathLike[str] | None = None) -> Figure:
        """Loss and validation accuracy per epoch, the kept epoch marked.

        Args:
            path: Also write a PNG here.

        Returns:
            The matplotlib figure (:func:`petalnet.plot.training_curves`).

        Raises:
            NotFittedError: Before ``fit`` or ``load``.
            PetalnetError: matplotlib is not installed.
        """
        from petalnet import plot

        return plot.training_curves(self.history_, kept=self.best_epoch_, path=path)

    def _repr_html_(self) -> str:
        import html

        model = self.__dict__.get("model_")
        rows = model.facts() if model is not None else [("state", "not fitted: call fit")]
        cells = "".join(f"<tr><td>{k}</td><td>{html.escape(v)}</td></tr>" for k, v in rows)
        return f"<p><code>{html.escape(repr(self))}</code></p><table>{cells}</table>"

    def fitted_model(self) -> FittedModel:
        """``model_``; raises :class:`~petalnet.NotFittedError` before ``fit``/``load``."""
        model: FittedModel | None = self.__dict__.get("model_")
        if model is None:
            raise NotFittedError(
                f"This {type(self).__name__} is not fitted yet: call fit(data_dir) first, "
                f"or load a saved one with {type(self).__name__}.load(path)."
            )
        return model

    def _pipeline(self, backbone: FeatureExtractor | None = None) -> ImagePipeline:
        """The image pipeline for the current backbone and parameters (rebuilt on change)."""
        backbone = backbone or self.fitted_model().backbone
        key = (id(backbone), *(repr(getattr(self, name)) for name in PIPELINE_PARAMS))
        cached: tuple[tuple[Any, ...], ImagePipeline] | None = self.__dict__.get("_pipe")
        if cached is None or cached[0] != key:
            cached = key, make_pipeline(self, backbone)
            self.__dict__["_pipe"] = cached
        return cached[1]

    @property
    def predictor_(self) -> Predictor:
        """What answers about images: the fitted model, its pipeline, ``tta``, ``strict``."""
        model, pipe = self.fitted_model(), self._pipeline()
        held: Predictor | None = self.__dict__.get("_predictor")
        wanted = (model, pipe, self.tta, self.strict)
        if held is None or (held.model, held.pipeline, held.tta, held.strict) != wanted:
            held = Predictor(model, pipe, tta=self.tta, strict=self.strict)
            self.__dict__["_predictor"] = held
        return held

    def predict_proba(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """Return class probabilities for one image or a list of images.

        Args:
            images: One image (path, ``PIL.Image``, HxWxC array, CxHxW tensor) or a list.

        Returns:
            ``(N, n_classes)`` float32 probabilities; column ``i`` is ``classes_[i]``.

        Raises:
            NotFittedError: Called before ``fit``/``load``.
            ImageReadError: An image file cannot be read (the message names it).
        """
        return self.predictor_.predict_proba(images)

    def novelty_score(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """How unlike every known flower each image is (docs/unknown.md).

        Args:
            images: One image (path, ``PIL.Image``, HxWxC array, CxHxW tensor) or a list.

        Returns:
            ``(N,)`` float32 scores, higher meaning less like any known class; above
            ``model_.calibration.threshold`` an image is reported unknown.

        Raises:
            NotFittedError: Called before ``fit``/``load``.
            ImageReadError: An image file cannot be read (the message names it).
        """
        return self.predictor_.novelty_score(images)

    @overload  # str is a Sequence too; this first overload wins for it, as at run time
    def predict(self, images: FileOrArray, topk: int = 5) -> TopK: ...  # type: ignore[overload-overlap]
    @overload
    def predict(self, images: torch.Tensor, topk: int = 5) -> TopK | list[TopK]: ...
    @overload
    def predict(self, images: Sequence[ImageInput], topk: int = 5) -> list[TopK]: ...
    def predict(
        self, images: ImageInput | Sequence[ImageInput], topk: int = 5
    ) -> TopK | list[TopK]:
        """Predict the ``topk`` most likely flowers for one image or a list of images.

        Args:
            images: One image (path, ``PIL.Image``, HxWxC array, CxHxW tensor) or a list
                (a 4-D tensor counts as a list).
            topk: Number of classes to return per image.

        Returns:
            One image: its :class:`~petalnet.TopK` list of :class:`~petalnet.Prediction`,
            most likely first, with ``unknown`` and ``novelty``; a list of images: one each.

        Raises:
            NotFittedError: Called before ``fit``/``load``.
            ImageReadError: An image file cannot be read (the message names it).
            ValueError: ``topk`` is not a whole number from 1.
        """
        batch, single = as_image_list(images)
        preds = self.predictor_.top_k(batch, topk)
        return preds[0] if single else preds

    def iter_predictions(
        self, images: Iterable[ImageInput], topk: int = 5, *, chunk_size: int = 64
    ) -> Iterator[ImagePrediction]:
        """Predict many images in bounded memory, carrying on past unreadable files.

        Args:
            images: Paths or in-memory images (any iterable, ``chunk_size`` at a time).
            topk: Number of classes to return per image.
            chunk_size: Images held in memory at once.

        Yields:
            One :class:`~petalnet.ImagePrediction` per image, in order (an unreadable one:
            no predictions, an ``error`` naming it).

        Raises:
            NotFittedError: Called before ``fit``/``load``.
            ValueError: ``topk`` is not a whole number from 1.
        """
        return self.predictor_.iter_predictions(images, topk, chunk_size=chunk_size)

    def evaluate(self, path: DataSource) -> EvaluationReport:
        """Measure the classifier on labelled images it never trained on.

        Args:
            path: Class folders, a root holding ``test/`` (used first) or ``valid/``, or a
                labels table; the folder ``fit`` held a split out of: that split only.

        Returns:
            The metrics (see :class:`~petalnet.EvaluationReport`).

        Raises:
            NotFittedError: Called before ``fit``/``load``.
            DataError: The folder is missing, empty, or has classes the model does not know.
        """
        return self.predictor_.evaluate(path)

    def fit(
        self, data_dir: DataSource, *, resume_from: str | os.PathLike[str] | None = None
    ) -> Self:
        """Train the classifier on a folder of flower photos.

        Args:
            data_dir: A root with ``train/`` and ``valid/`` (and maybe ``test/``) class
                folders, one folder of class folders (``valid_fraction`` held out), or a
                labels table: a ``.csv`` (``path,label[,split]``), ``(path, label)`` pairs
                or a DataFrame.
            resume_from: A checkpoint of an earlier, shorter or interrupted ``fit`` on the
                same data: training goes on exactly as if it had not stopped, with its
                settings wherever this estimator's are at their defaults.

        Returns:
            ``self``, with ``model_`` and the attributes ending in ``_`` set.

        Raises:
            ValueError: A parameter is out of range (the message names it).
            DataError: The folder is missing, has fewer than two classes or no readable image.
            ImageReadError: With ``strict=True``, an image cannot be read.
            PetalnetError: A plan the backbone cannot follow, or a NaN loss (best epoch kept).
            BackboneNotFoundError: ``backbone`` is not registered.
            WeightsUnavailableError: The pretrained weights cannot be found or downloaded.
            CheckpointError: ``resume_from`` is unreadable or does not match this run.
        """
        self.validate()
        self.__dict__.pop("model_", None)  # a failed refit never mixes old and new parts
        # the model is kept before training starts, so a failed run keeps its best epoch
        keep = lambda model: setattr(self, "model_", model)  # noqa: E731
        fit_model(
            self,
            data_dir,
            pipeline_for=self._pipeline,
            keep=keep,
            resume_from=resume_from,
            groups=split_groups(self),
        )
        return self

    def save(self, path: str | os.PathLike[str], *, include_backbone: bool | None = None) -> Path:
        """Save everything needed to predict elsewhere into one file (tensors and plain values).

        Args:
            path: Target file (``.pt`` by convention); written atomically.
            include_backbone: Also store the backbone's parameters; ``None``: only when its
                name cannot rebuild them (random init, a file, fine-tuned).

        Returns:
            The path written (under ``torchrun``, only rank 0 writes it).

        Raises:
            NotFittedError: Called before ``fit``/``load``.
            CheckpointError: The file cannot be written.
        """
        payload = checkpoint.to_payload(
            self.fitted_model(), self.get_params(), include_backbone=include_backbone
        )
        return checkpoint.write_checkpoint(payload, path) if distributed.is_main() else Path(path)

    def export(
        self, path: str | os.PathLike[str], format: ExportFormat = "pt2", *, amp: Amp = False
    ) -> Path:
        """Export for deployment: preprocessed images in, calibrated probabilities out.

        Args:
            path: Target file; ``<path>.json`` next to it gets classes, names and preprocessing.
            format: ``"pt2"`` (a ``torch.export`` program) or ``"onnx"`` (``[onnx]`` extra).
            amp: ``True``: a ``pt2`` program in bfloat16; ``"auto"``: so where this CPU
                has native bfloat16 and the format allows it; ``False``: float32.

        Returns:
            The model's path.

        Raises:
            NotFittedError: Called before ``fit``/``load``.
            ExportOptionsError: Unknown format, or bfloat16 ONNX.
            PetalnetError: The export failed.
        """
        return export_model(self.fitted_model(), path, format, amp=amp)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], device: str | torch.device | None = None, **params: Any
    ) -> Self:
        """Load a classifier saved with :meth:`save`; no code from the file is executed.

        Args:
            path: The checkpoint file.
            device: Where to run it; ``None``: this machine's best device.
            **params: Saved parameters to change (e.g. ``amp=False``, ``tta=True``).

        Returns:
            A fitted classifier.

        Raises:
            CheckpointError: The file is missing, damaged, unsafe or not a checkpoint.
            BackboneNotFoundError: Its backbone is not registered in this process.
            WeightsUnavailableError: Its pretrained weights are not available here.
            ValueError: An unknown or invalid name in ``params``.
        """
        saved, model = checkpoint.load_model(path)
        clf = cls(**saved).set_params(device="auto" if device is None else device, **params)
        clf.validate()
        clf.model_ = model
        clf.predictor_  # noqa: B018  # resolve the device now; the head moves there
        return clf


FlowerClassifier.__doc__ = (FlowerClassifier.__doc__ or "") + params_docstring()
