"""The one object behind every door: a fitted model ready to answer about images.

A :class:`Predictor` is the fitted model, its image pipeline, test-time augmentation, the
precision (in the pipeline) and the unknown-flower policy (in the model's calibration).
It owns probabilities, top-k predictions, novelty and evaluation.
:class:`~petalnet.FlowerClassifier` delegates to it, ``petalnet predict``/``evaluate`` and
``petalnet serve`` hold one, and the export checks compare against it, so Python, the
command line, HTTP and an exported program give the same answer for the same photo.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from petalnet import results
from petalnet._types import TestViews
from petalnet.data import DataSource, evaluation_samples
from petalnet.fitted import FittedModel
from petalnet.images import ImageInput, Unreadable, as_image_list
from petalnet.pipeline import ImagePipeline, Scored
from petalnet.results import EvaluationReport, ImagePrediction, TopK, check_topk

__all__ = ["Predictor"]


class Predictor:
    """Answers about images from a fitted model.

    Args:
        model: What ``fit`` learned (or ``load`` read).
        pipeline: The image pipeline over ``model.backbone`` (device, precision, store).
        tta: The views to average (:meth:`ImagePipeline.test_views`): ``False``, ``True``
            (the centre crop and its mirror), ``"crops"`` or ``"crops+flip"``.
        strict: ``evaluate`` stops at the first unreadable image instead of skipping it.
    """

    def __init__(
        self,
        model: FittedModel,
        pipeline: ImagePipeline,
        *,
        tta: bool | TestViews = False,
        strict: bool = False,
    ) -> None:
        self.model = model
        self.pipeline = pipeline
        self.tta = tta
        self.strict = strict
        model.head.to(pipeline.device)

    def outputs(self, images: Sequence[ImageInput], unreadable: Unreadable | None = None) -> Scored:
        """Calibrated outputs of ``images``, in input order.

        Args:
            images: Paths, bytes, open files or in-memory images.
            unreadable: What to do with an unreadable one (default: raise).

        Returns:
            The outputs of the readable images with their positions, and the unreadable ones.

        Raises:
            ImageReadError: An image cannot be read and ``unreadable`` raises.
        """
        return self.pipeline.outputs(
            self.model.head,
            self.model.calibration,
            images,
            unreadable=unreadable or Unreadable("raise"),
            tta=self.tta,
        )

    def predict_proba(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """``(N, n_classes)`` float32 probabilities; see :meth:`FlowerClassifier.predict_proba`."""
        result: np.ndarray = self.outputs(as_image_list(images)[0]).head.log_probs.exp().numpy()
        return result

    def novelty_score(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """``(N,)`` novelty scores; see :meth:`FlowerClassifier.novelty_score`."""
        result: np.ndarray = self.outputs(as_image_list(images)[0]).head.novelty.numpy()
        return result

    def top_k(self, images: Sequence[ImageInput], topk: int = 5) -> list[TopK]:
        """The ``topk`` most likely flowers of each image, most likely first.

        Args:
            images: Paths, bytes, open files or in-memory images.
            topk: Number of classes per image.

        Returns:
            One :class:`~petalnet.TopK` per image, with ``unknown`` and ``novelty``.

        Raises:
            ImageReadError: An image cannot be read (the message names it).
            ValueError: ``topk`` is not a whole number from 1.
        """
        k = check_topk(topk)
        out, model = self.outputs(images).head, self.model
        tops = results.top_predictions(
            out.log_probs, k, model.classes, model.category_names, out.novelty, out.unknown
        )
        for top, image in zip(tops, images, strict=True):  # what TopK.plot draws
            top.image = image if isinstance(image, (str, os.PathLike, Image.Image)) else None
        return tops

    def iter_predictions(
        self, images: Iterable[ImageInput], topk: int = 5, *, chunk_size: int = 64
    ) -> Iterator[ImagePrediction]:
        """One outcome per image, in order; see :meth:`FlowerClassifier.iter_predictions`."""
        k, model, source = check_topk(topk), self.model, iter(images)
        while chunk := list(itertools.islice(source, chunk_size)):
            got = self.outputs(chunk, Unreadable("collect"))
            yield from results.image_predictions(
                chunk,
                got.head.log_probs,
                got.positions,
                got.skipped,
                k,
                model.classes,
                model.category_names,
                got.head.novelty,
                got.head.unknown,
            )

    def evaluate(self, path: DataSource) -> EvaluationReport:
        """Metrics on a labelled folder; see :meth:`FlowerClassifier.evaluate`."""
        model = self.model
        name, samples, held = evaluation_samples(path, model.class_to_idx, model.held_out)
        paths, labels = zip(*samples, strict=True)
        got = self.pipeline.outputs(
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
        return results.evaluation_report(
            got.head.log_probs,
            got.labels,
            model.classes,
            name,
            [u.message for u in got.skipped],
            [str(paths[i]) for i in got.positions.tolist()],
            got.head.unknown,
            held_out=held,
            names=model.category_names,
        )
