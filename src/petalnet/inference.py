"""Using a fitted classifier: probabilities, top-k predictions, novelty, evaluation.

:class:`Inference` is the part of :class:`~petalnet.FlowerClassifier` that reads a fitted
model: every method here sends images through the one image pipeline and the
calibration (:class:`~petalnet.calibration.Calibration`) of the model.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

import numpy as np
import torch

from petalnet import results
from petalnet.checkpoint import FittedModel
from petalnet.data import list_samples, resolve_eval_folder
from petalnet.images import FileOrArray, ImageInput, Unreadable, as_image_list
from petalnet.pipeline import ImagePipeline, Scored
from petalnet.results import EvaluationReport, ImagePrediction, TopK

__all__ = ["Inference"]


class Inference:
    """Prediction and evaluation for an estimator that holds a fitted model."""

    tta: bool
    strict: bool

    def fitted_model(self) -> FittedModel:
        """The fitted model (the estimator's; raises ``NotFittedError`` before fit)."""
        raise NotImplementedError

    def _pipeline(self) -> ImagePipeline:
        raise NotImplementedError

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
        result: np.ndarray = self._outputs(as_image_list(images)[0]).head.log_probs.exp().numpy()
        return result

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
        result: np.ndarray = self._outputs(as_image_list(images)[0]).head.novelty.numpy()
        return result

    def _outputs(self, batch: Sequence[ImageInput], unreadable: Unreadable | None = None) -> Scored:
        model = self.fitted_model()
        return self._pipeline().outputs(
            model.head,
            model.calibration,
            batch,
            unreadable=unreadable or Unreadable("raise"),
            tta=self.tta,
        )

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
            ValueError: ``topk`` is below 1.
        """
        if int(topk) < 1:
            raise ValueError(f"topk must be at least 1, got {topk}.")
        batch, single = as_image_list(images)
        out, model = self._outputs(batch).head, self.fitted_model()
        preds = results.top_predictions(
            out.log_probs, topk, model.classes, model.category_names, out.novelty, out.unknown
        )
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
            ValueError: ``topk`` is below 1.
        """
        if int(topk) < 1:
            raise ValueError(f"topk must be at least 1, got {topk}.")
        model, source = self.fitted_model(), iter(images)
        while chunk := list(itertools.islice(source, chunk_size)):
            got = self._outputs(chunk, Unreadable("collect"))
            out = got.head
            yield from results.image_predictions(
                chunk,
                out.log_probs,
                got.positions,
                got.skipped,
                topk,
                model.classes,
                model.category_names,
                out.novelty,
                out.unknown,
            )

    def evaluate(self, path: str | os.PathLike[str]) -> EvaluationReport:
        """Measure the classifier on a labelled folder.

        Args:
            path: Class folders, or a root holding ``test/`` (used first) or ``valid/``.

        Returns:
            The metrics (see :class:`~petalnet.EvaluationReport`).

        Raises:
            NotFittedError: Called before ``fit``/``load``.
            DataError: The folder is missing, empty, or has classes the model does not know.
        """
        model, pipe = self.fitted_model(), self._pipeline()
        folder = resolve_eval_folder(path)
        paths, labels = zip(*list_samples(folder, model.class_to_idx), strict=True)
        got = pipe.outputs(
            model.head,
            model.calibration,
            paths,
            labels,
            unreadable=Unreadable.for_training(self.strict),
            tta=self.tta,
            use_cache=True,
            desc="evaluate",
            quiet=False,
        )
        files = [str(paths[i]) for i in got.positions.tolist()]
        return results.evaluation_report(
            got.head.log_probs,
            got.labels,
            model.classes,
            str(folder),
            [u.message for u in got.skipped],
            files,
            got.head.unknown,
        )
