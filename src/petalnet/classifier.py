"""``FlowerClassifier``: the estimator. It orchestrates; every step lives in its own module.

folder -> samples (``data``) -> features (``pipeline``) -> trainer (``training``, as
``strategy`` plans) -> head -> checkpoint (``checkpoint``) -> prediction (``results``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

import numpy as np
import torch
from PIL import Image
from torch import nn
from typing_extensions import Self

from petalnet import distributed
from petalnet._device import resolve_device
from petalnet.backbones.base import FeatureExtractor
from petalnet.backbones.registry import build_backbone
from petalnet.batches import ImageBatches
from petalnet.callbacks import EpochRecord, TrainingState
from petalnet.checkpoint import (
    FittedModel,
    from_payload,
    read_checkpoint,
    resume_state,
    to_payload,
    write_checkpoint,
)
from petalnet.data import list_samples, load_category_names, load_training_data, resolve_eval_folder
from petalnet.errors import CheckpointError, DataError, NotFittedError, PetalnetError
from petalnet.export import ExportFormat, export_model
from petalnet.head import build_head, normalize_hidden_units
from petalnet.images import ImageInput, Unreadable
from petalnet.params import ClassifierParams, param_specs, params_docstring
from petalnet.pipeline import ImagePipeline, head_log_probs
from petalnet.precision import resolve_precision
from petalnet.results import (
    EvaluationReport,
    ImagePrediction,
    Prediction,
    evaluation_report,
    top_predictions,
)
from petalnet.strategy import plan_training, training_batches
from petalnet.training import Trainer, seeded

__all__ = ["FlowerClassifier"]

T = TypeVar("T")
OneImage = str | os.PathLike[str] | Image.Image | np.ndarray


class _Fitted(Generic[T]):
    """A fitted attribute (``classes_``, ...): read from ``model_``, NotFittedError before."""

    def __init__(self, get: Callable[[FittedModel], T]) -> None:
        self.get = get

    @overload
    def __get__(self, obj: None, owner: type) -> _Fitted[T]: ...
    @overload
    def __get__(self, obj: FlowerClassifier, owner: type) -> T: ...
    def __get__(self, obj: FlowerClassifier | None, owner: type) -> _Fitted[T] | T:
        return self if obj is None else self.get(obj._model())


class FlowerClassifier(ClassifierParams):
    """A flower-photo classifier trained by transfer learning on an ImageNet backbone.

    The default is the classic recipe: a frozen, ImageNet-pretrained VGG16, a new classifier
    (hidden layers with ReLU and dropout, ending in LogSoftmax) trained with NLLLoss and Adam
    on the classifier's parameters only, validated after every epoch, keeping the best
    epoch's weights. ``__init__`` only stores the parameters (scikit-learn style); ``fit``
    validates them and sets ``model_`` and the attributes ending in ``_``.
    """

    classes_ = _Fitted(lambda m: m.classes)
    class_to_idx_ = _Fitted(lambda m: m.class_to_idx)
    history_: _Fitted[list[EpochRecord]] = _Fitted(lambda m: m.training.history)
    best_epoch_ = _Fitted(lambda m: m.training.best_epoch)
    optimizer_state_ = _Fitted(lambda m: m.training.optimizer_state)
    backbone_ = _Fitted(lambda m: m.backbone)
    head_ = _Fitted(lambda m: m.head)
    n_train_ = _Fitted(lambda m: m.n_train)
    n_valid_ = _Fitted(lambda m: m.n_valid)
    skipped_ = _Fitted(lambda m: m.skipped)

    @property
    def category_names_(self) -> dict[str, str] | None:
        """Class folder name to flower name used in predictions (settable)."""
        return self._model().category_names

    @category_names_.setter
    def category_names_(self, names: dict[str, str] | None) -> None:
        self._model().category_names = names

    @property
    def device_(self) -> torch.device:
        """Where the fitted model computes (``device`` resolved on this machine)."""
        return self._pipeline().device

    @property
    def pipeline_(self) -> ImagePipeline:
        """The image pipeline ``evaluate`` and ``predict`` use (features of any images)."""
        return self._pipeline()

    def _model(self) -> FittedModel:
        model: FittedModel | None = self.__dict__.get("model_")
        if model is None:
            raise NotFittedError(
                f"This {type(self).__name__} is not fitted yet: call fit(data_dir) first, "
                f"or load a saved one with {type(self).__name__}.load(path)."
            )
        return model

    def _pipeline(self, backbone: FeatureExtractor | None = None) -> ImagePipeline:
        """The image pipeline for the current backbone and parameters (rebuilt on change)."""
        backbone = backbone or self._model().backbone
        names = ("device", "amp", "cache", "cache_dir", "extract_batch_size", "num_workers")
        key = (id(backbone), *(str(getattr(self, n)) for n in names), self.random_state)
        cached: tuple[Any, ImagePipeline] | None = self.__dict__.get("_pipe")
        if cached is None or cached[0] != (*key, self.augmentation, self.verbose):
            device = distributed.local_device(resolve_device(self.device))
            pipe = ImagePipeline(
                backbone,
                device=device,
                precision=resolve_precision(self.amp, device),
                cache_dir=self.cache_dir,
                use_cache=self.cache,
                batch_size=self.extract_batch_size,
                num_workers=self.num_workers,
                seed=self.random_state,
                augmentation=self.augmentation,
                verbose=self.verbose,
            )
            cached = ((*key, self.augmentation, self.verbose), pipe)
            self.__dict__["_pipe"] = cached
            if "model_" in self.__dict__:
                self.model_.head.to(device)
        return cached[1]

    def fit(
        self, data_dir: str | os.PathLike[str], *, resume_from: str | os.PathLike[str] | None = None
    ) -> Self:
        """Train the classifier on a folder of flower photos.

        Args:
            data_dir: A root holding ``train/`` and ``valid/`` (and maybe ``test/``) class
                folders, or one folder of class folders from which ``valid_fraction`` of
                each class is held out.
            resume_from: A checkpoint saved by an earlier, shorter or interrupted ``fit``
                with the same data and settings: training continues after its last epoch
                up to ``epochs`` in all, exactly as if it had not stopped.

        Returns:
            ``self``, fitted: ``model_`` and ``classes_``, ``class_to_idx_``,
            ``category_names_``, ``history_``, ``best_epoch_``, ``backbone_``, ``head_``,
            ``device_``, ``n_train_``, ``n_valid_``, ``skipped_`` are set. After
            fine-tuning, ``backbone_`` holds the fine-tuned weights.

        Raises:
            ValueError: A parameter is out of range (the message names it).
            DataError: The folder is missing, holds fewer than two classes, or no readable
                training image.
            ImageReadError: With ``strict=True``, an image cannot be read.
            PetalnetError: ``unfreeze_blocks`` asks for blocks of a backbone without any,
                or the loss became NaN (the best epoch so far is kept).
            BackboneNotFoundError: ``backbone`` is not registered.
            WeightsUnavailableError: The pretrained weights cannot be found or downloaded.
            CheckpointError: ``resume_from`` is unreadable or does not match this run.
        """
        self.validate()
        hidden = normalize_hidden_units(self.hidden_units)
        resume = read_checkpoint(resume_from) if resume_from is not None else None
        self.__dict__.pop("model_", None)  # a failed refit never mixes old and new parts
        data = load_training_data(
            data_dir, valid_fraction=self.valid_fraction, seed=self.random_state
        )
        names_file = (
            self.category_names if self.category_names is not None else data.category_names_file
        )
        names = load_category_names(names_file) if names_file is not None else None
        distributed.init(distributed.local_device(resolve_device(self.device)))
        backbone = build_backbone(self.backbone, self.weights)
        plan = plan_training(
            backbone,
            self.strategy,
            unfreeze_blocks=self.unfreeze_blocks,
            freeze_epochs=self.freeze_epochs,
            epochs=self.epochs,
            name=self.backbone,
        )
        pipeline = self._pipeline(backbone)
        unreadable = Unreadable.for_training(self.strict)
        train, valid = training_batches(
            plan, pipeline, data, unreadable, augment_views=self.augment_views
        )
        if len(train.labels) == 0:
            raise DataError(
                f"None of the {len(data.train)} training images under {str(data_dir)!r} could "
                "be read; see the warnings above."
            )
        with seeded(self.random_state):
            head = build_head(backbone.feature_dim, len(data.classes), hidden, self.dropout)
        trained: nn.Module = head.to(pipeline.device)
        if plan.back is not None:  # fine-tuned backbone layers run before the head
            plan.back.to(pipeline.device).to(memory_format=torch.channels_last)
            trained = nn.Sequential(plan.back, head)
        state = TrainingState()
        if resume is not None:
            state = resume_state(
                resume, str(resume_from), trained, classes=data.classes, backbone=self.backbone
            )
        self.model_ = FittedModel(
            backbone,
            head,
            hidden,
            self.dropout,
            list(data.classes),
            names,
            state,
            len(train.labels),
            len(valid.labels),
            unreadable.messages,
        )
        trainer = Trainer(
            epochs=self.epochs,
            learning_rate=self.learning_rate,
            batch_size=self.batch_size,
            device=pipeline.device,
            seed=self.random_state,
            weight_decay=self.weight_decay,
            label_smoothing=self.label_smoothing,
            schedule=self.lr_schedule,
            warmup_epochs=self.warmup_epochs,
            class_weight=self.class_weight,
            monitor=self.monitor,
            early_stopping=self.early_stopping,
            backbone_lr_scale=self.backbone_lr_scale,
            freeze_epochs=plan.freeze_epochs,
            callbacks=list(self.callbacks or []),
            verbose=self.verbose,
        )
        try:
            trainer.fit(
                trained, train, valid, n_classes=len(data.classes), backbone=plan.back, state=state
            )
        finally:  # also after an error: the model holds the best epoch so far, save() works
            for split, batches in (("n_train", train), ("n_valid", valid)):
                if isinstance(
                    batches, ImageBatches
                ):  # streamed: unreadable images found on the way
                    setattr(self.model_, split, len(batches.labels) - len(batches.skipped_rows))
            if plan.back is not None and state.history:  # fine-tuned: a new backbone
                self.model_.backbone = backbone.derive(source="trained")
        return self

    def _log_probs(
        self, images: Sequence[ImageInput], unreadable: Unreadable
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities of the readable ``images`` and their positions."""
        pipe = self._pipeline()
        feats = pipe.features(
            images,
            unreadable=unreadable,
            views=pipe.test_views(self.tta),
            use_cache=False,
            quiet=True,
        )
        return head_log_probs(self._model().head, feats.features, pipe.device), feats.positions

    @staticmethod
    def _as_list(images: ImageInput | Sequence[ImageInput]) -> tuple[list[ImageInput], bool]:
        """The images as a list, and whether a single image was given."""
        if isinstance(images, (list, tuple)) or (
            isinstance(images, torch.Tensor) and images.ndim == 4
        ):
            return list(images), False
        return [images], True  # type: ignore[list-item]  # a single image of ImageInput

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
        batch, _ = self._as_list(images)
        result: np.ndarray = self._log_probs(batch, Unreadable("raise"))[0].exp().numpy()
        return result

    @overload  # str is a Sequence too; this first overload wins for it, as at run time
    def predict(self, images: OneImage, topk: int = 5) -> list[Prediction]: ...  # type: ignore[overload-overlap]
    @overload
    def predict(
        self, images: torch.Tensor, topk: int = 5
    ) -> list[Prediction] | list[list[Prediction]]: ...
    @overload
    def predict(self, images: Sequence[ImageInput], topk: int = 5) -> list[list[Prediction]]: ...
    def predict(
        self, images: ImageInput | Sequence[ImageInput], topk: int = 5
    ) -> list[Prediction] | list[list[Prediction]]:
        """Predict the ``topk`` most likely flowers for one image or a list of images.

        Args:
            images: One image (path, ``PIL.Image``, HxWxC array, CxHxW tensor) or a list
                (a 4-D tensor counts as a list).
            topk: Number of classes to return per image.

        Returns:
            For one image, a list of :class:`~petalnet.Prediction` sorted by probability; for
            a list, one such list per image.

        Raises:
            NotFittedError: Called before ``fit``/``load``.
            ImageReadError: An image file cannot be read (the message names it).
            ValueError: ``topk`` is below 1.
        """
        if int(topk) < 1:
            raise ValueError(f"topk must be at least 1, got {topk}.")
        batch, single = self._as_list(images)
        model = self._model()
        preds = top_predictions(
            self._log_probs(batch, Unreadable("raise"))[0],
            topk,
            model.classes,
            model.category_names,
        )
        return preds[0] if single else preds

    def iter_predictions(
        self, images: Iterable[ImageInput], topk: int = 5, *, chunk_size: int = 64
    ) -> Iterator[ImagePrediction]:
        """Predict many images in bounded memory, carrying on past unreadable files.

        Args:
            images: Paths or in-memory images (any iterable, consumed ``chunk_size`` at a time).
            topk: Number of classes to return per image.
            chunk_size: Images held in memory at once.

        Yields:
            One :class:`~petalnet.results.ImagePrediction` per image, in order; an unreadable
            one has no predictions and an ``error`` naming it.

        Raises:
            NotFittedError: Called before ``fit``/``load``.
            ValueError: ``topk`` is below 1.
        """
        if int(topk) < 1:
            raise ValueError(f"topk must be at least 1, got {topk}.")
        model, chunk, source = self._model(), [], iter(images)
        while chunk := [im for _, im in zip(range(chunk_size), source, strict=False)]:
            unreadable = Unreadable("collect")
            log_probs, index = self._log_probs(chunk, unreadable)
            preds = dict(
                zip(
                    index.tolist(),
                    top_predictions(log_probs, topk, model.classes, model.category_names),
                    strict=True,
                )
            )
            errors = iter(unreadable.messages)  # in input order, like the missing positions
            for i, image in enumerate(chunk):
                yield (
                    ImagePrediction(image, preds[i])
                    if i in preds
                    else ImagePrediction(image, [], next(errors, "unreadable"))
                )

    def evaluate(self, path: str | os.PathLike[str]) -> EvaluationReport:
        """Measure the classifier on a labelled folder.

        Args:
            path: A folder of class folders, or a root holding ``test/`` (used first) or
                ``valid/``.

        Returns:
            The metrics (see :class:`~petalnet.results.EvaluationReport`).

        Raises:
            NotFittedError: Called before ``fit``/``load``.
            DataError: The folder is missing, empty, or has classes the model does not know.
        """
        model, pipe = self._model(), self._pipeline()
        folder = resolve_eval_folder(path)
        samples = list_samples(folder, model.class_to_idx)
        feats = pipe.features(
            [p for p, _ in samples],
            [t for _, t in samples],
            unreadable=Unreadable.for_training(self.strict),
            views=pipe.test_views(self.tta),
            desc="evaluate",
        )
        log_probs = head_log_probs(model.head, feats.features, pipe.device)
        return evaluation_report(
            log_probs, feats.labels, model.classes, folder=str(folder), skipped=feats.skipped
        )

    def save(self, path: str | os.PathLike[str], *, include_backbone: bool | None = None) -> Path:
        """Save everything needed to predict elsewhere into one file (tensors and plain values).

        Args:
            path: Target file (``.pt`` by convention); written atomically.
            include_backbone: Also store the backbone's parameters. ``None`` does so only
                when they cannot be rebuilt from their name (random init, a local file,
                fine-tuned); ``True`` makes the file usable offline without the weights.

        Returns:
            The path written (under ``torchrun``, only rank 0 writes it).

        Raises:
            NotFittedError: Called before ``fit``/``load``.
            CheckpointError: The file cannot be written.
        """
        payload = to_payload(self._model(), self.get_params(), include_backbone=include_backbone)
        return write_checkpoint(payload, path) if distributed.is_main() else Path(path)

    def export(self, path: str | os.PathLike[str], format: ExportFormat = "torchscript") -> Path:
        """Export for deployment: a float32 model from preprocessed images to probabilities.

        Args:
            path: Target file; ``<path>.json`` next to it gets classes, names and preprocessing.
            format: ``"torchscript"`` or ``"onnx"`` (ONNX metadata needs the ``onnx`` extra).

        Returns:
            The model's path.

        Raises:
            NotFittedError: Called before ``fit``/``load``.
            PetalnetError: Unknown format or a failed export.
        """
        return export_model(self._model(), path, format)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], device: str | torch.device | None = None, **params: Any
    ) -> Self:
        """Load a classifier saved with :meth:`save`; no code from the file is executed.

        Args:
            path: The checkpoint file.
            device: Where to run it; ``None`` picks the best device of this machine, so a
                GPU-trained file loads on a CPU-only one.
            **params: Parameters to change from the saved ones (e.g. ``amp=False``, ``tta=True``).

        Returns:
            A fitted classifier.

        Raises:
            CheckpointError: The file is missing, damaged, unsafe or not a petalnet checkpoint.
            BackboneNotFoundError: Its backbone is not registered in this process.
            WeightsUnavailableError: Its pretrained weights are not available here.
            ValueError: ``params`` holds an unknown name or an invalid value.
        """
        data = read_checkpoint(path)
        try:
            saved, model = from_payload(data)
        except PetalnetError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"Checkpoint {str(path)!r} is damaged or inconsistent "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})."
            ) from None
        known = {s.name for s in param_specs()}
        clf = cls(**{k: v for k, v in saved.items() if k in known})
        clf.set_params(device="auto" if device is None else device, **params)
        clf.validate()
        clf.model_ = model
        clf._pipeline()  # resolve the device now; the head moves there
        return clf


FlowerClassifier.__doc__ = (FlowerClassifier.__doc__ or "") + params_docstring()
