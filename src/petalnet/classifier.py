"""``FlowerClassifier``: the estimator that orchestrates data, backbone, head and checkpoint.

It follows scikit-learn's conventions: ``__init__`` only stores parameters, ``fit`` learns
and sets attributes ending in ``_``, and methods that need a trained model raise
:class:`~petalnet.NotFittedError` before ``fit`` or ``load``.
"""

from __future__ import annotations

import inspect
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from petalnet import distributed
from petalnet._device import resolve_device
from petalnet._version import __version__
from petalnet.backbones.base import FeatureExtractor, WeightsArg
from petalnet.backbones.registry import build_backbone
from petalnet.batches import Batches, ImageBatches, TensorBatches
from petalnet.cache import FeatureCache
from petalnet.checkpoint import read_checkpoint, write_checkpoint
from petalnet.data import (
    ImageInput,
    Sample,
    TrainingData,
    image_to_tensor,
    list_samples,
    load_category_names,
    load_training_data,
    resolve_eval_folder,
)
from petalnet.errors import (
    CheckpointError,
    DataError,
    NotFittedError,
    PetalnetError,
    PetalnetWarning,
)
from petalnet.features import (
    VIEW_FLIP,
    Features,
    extract_features,
    feature_cache,
    prepare_backbone,
    resolve_precision,
    run_backbone,
)
from petalnet.head import build_head, normalize_hidden_units
from petalnet.preprocessing import AUGMENTATIONS, Preprocessing
from petalnet.results import Prediction, evaluation_report, top_predictions
from petalnet.strategy import STRATEGIES, TrainingPlan, plan_training
from petalnet.training import (
    SCHEDULES,
    Callback,
    EarlyStopping,
    EpochLogger,
    TrainResult,
    seeded,
    train_head,
)

__all__ = ["FlowerClassifier", "ImageInput"]


class FlowerClassifier:
    """A flower-photo classifier trained by transfer learning on an ImageNet backbone.

    The default is the classic recipe: a frozen, ImageNet-pretrained VGG16, a new classifier
    (hidden layers with ReLU and dropout, ending in LogSoftmax) trained with NLLLoss and Adam
    on the classifier's parameters only, validated after every epoch, keeping the best
    epoch's weights. Because the backbone is frozen, each image's features are computed
    once and reused by every epoch.

    Args:
        backbone: Registered backbone name (see :func:`petalnet.list_backbones`).
        weights: ``"DEFAULT"`` (ImageNet), another named weights set of the backbone, a path
            to a local weights file, or ``None`` for a random initialisation.
        hidden_units: Width of the classifier's hidden layer, a list of widths for several,
            or ``None``/``[]`` for a linear classifier.
        dropout: Dropout probability in the classifier.
        learning_rate: Adam's learning rate.
        epochs: Passes over the training images.
        batch_size: Feature vectors per training step.
        device: ``"auto"`` (cuda, then mps, then cpu), or a device such as ``"cpu"``.
        category_names: Class folder name to flower name: a JSON file path or a dict. When
            ``None``, ``fit`` uses ``cat_to_name.json`` in the data root if there is one.
        random_state: Seed for the validation split, the classifier's initialisation and the
            batch order; ``None`` for fresh randomness.
        valid_fraction: Share of each class held out for validation when the data has no
            ``valid/`` folder.
        extract_batch_size: Images per backbone pass (feature extraction, evaluation and
            prediction). ``None`` means 8 on a CPU, where small batches stay in cache and ran
            fastest in our measurements, and ``batch_size`` on GPUs.
        num_workers: Image-decoding worker processes; ``None`` picks a default for this
            machine.
        amp: Compute backbone features in mixed precision: ``True``, ``False``, or
            ``"auto"`` (float16 on CUDA, bfloat16 on CPUs with native bfloat16 support,
            float32 elsewhere).
        augment_views: Train on this many randomly augmented views of each training image
            (random resized crop, flip, rotation), one per epoch in turn, instead of the
            centre crop. Each view costs one backbone pass, once: views are cached.
        augmentation: The random augmentation of those views (and of every epoch with
            ``strategy="full"``): ``"seed"`` (the classic rotation, random resized crop and
            flip) or ``"trivialaugment"`` (those plus torchvision's ``TrivialAugmentWide``).
        cache: Keep backbone features on disk, so a later ``fit``/``evaluate`` on the same
            files with the same backbone, weights and preprocessing skips the backbone.
        cache_dir: Folder of that cache; ``None`` means ``$PETALNET_CACHE_DIR``, else
            ``$XDG_CACHE_HOME/petalnet``, else ``~/.cache/petalnet``.
        weight_decay: Decoupled weight decay of the classifier (AdamW); 0 is the seed's Adam.
        label_smoothing: Share of each target's probability spread over all classes.
        lr_schedule: ``"constant"`` (the seed's), ``"cosine"`` (decays to 0 by the end) or
            ``"onecycle"`` (torch's ``OneCycleLR``: rises to ``learning_rate``, then anneals
            to nearly 0, with Adam's momentum cycling the opposite way).
        warmup_epochs: Linear learning-rate warm-up over this many epochs (for
            ``"onecycle"``, its rising part; 30 % of the run when 0).
        early_stopping: Stop after this many epochs without a lower validation loss
            (``None``: run all ``epochs``). The best epoch is kept either way.
        class_weight: ``"balanced"`` weighs each class's loss inversely to its number of
            training images; ``None`` weighs all alike.
        monitor: What picks the epoch whose weights are kept: ``"valid_loss"`` (lowest) or
            ``"valid_accuracy"`` (highest; better with label smoothing).
        strategy: What trains. ``"freeze"`` (the seed's): the head only, on cached
            features. ``"freeze_unfreeze"``: the head alone for ``freeze_epochs``, then the
            last ``unfreeze_blocks`` blocks of the backbone with it; the frozen blocks'
            output is computed once per image (and view) and cached, so only the unfrozen
            blocks run every epoch. ``"full"``: the whole backbone with the head from the
            first epoch, on images decoded and freshly augmented every epoch (slow on a CPU).
        unfreeze_blocks: Blocks unfrozen by ``"freeze_unfreeze"``, counted from the end
            (see ``petalnet backbones``); ``None`` for the whole backbone (then trained on
            freshly augmented images, as ``"full"``).
        freeze_epochs: Head-only epochs before unfreezing; ``None`` means half of
            ``epochs`` for ``"freeze_unfreeze"`` and 0 for ``"full"``.
        backbone_lr_scale: Fine-tuned backbone layers learn at ``learning_rate`` times this
            (their own parameter group; the schedule applies to both).
        callbacks: Extra :class:`~petalnet.training.Callback` objects called during
            training (not saved in checkpoints).
        tta: Test-time augmentation for ``evaluate``, ``predict`` and ``predict_proba``:
            average the probabilities of the centre crop and its mirror image (two backbone
            passes per image; validation during ``fit`` stays single-view).
        strict: Stop at the first unreadable image (corrupt, truncated, not an image) with
            an error naming it. By default such files are skipped with one warning each and
            listed in ``skipped_`` / the evaluation report.
        verbose: ``0`` silent, ``1`` progress bars and one line per epoch.
    """

    def __init__(
        self,
        backbone: str = "vgg16",
        *,
        weights: WeightsArg = "DEFAULT",
        hidden_units: int | Sequence[int] | None = 512,
        dropout: float = 0.2,
        learning_rate: float = 1e-3,
        epochs: int = 10,
        batch_size: int = 64,
        device: str | torch.device = "auto",
        category_names: str | os.PathLike[str] | Mapping[str, str] | None = None,
        random_state: int | None = None,
        valid_fraction: float = 0.2,
        extract_batch_size: int | None = None,
        num_workers: int | None = None,
        amp: bool | str = "auto",
        augment_views: int = 0,
        augmentation: str = "seed",
        cache: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        weight_decay: float = 0.0,
        label_smoothing: float = 0.0,
        lr_schedule: str = "constant",
        warmup_epochs: int = 0,
        early_stopping: int | None = None,
        class_weight: str | None = None,
        monitor: str = "valid_loss",
        strategy: str = "freeze",
        unfreeze_blocks: int | None = 2,
        freeze_epochs: int | None = None,
        backbone_lr_scale: float = 0.1,
        callbacks: Sequence[Callback] | None = None,
        tta: bool = False,
        strict: bool = False,
        verbose: int = 1,
    ) -> None:
        self.backbone = backbone
        self.weights = weights
        self.hidden_units = hidden_units
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.device = device
        self.category_names = category_names
        self.random_state = random_state
        self.valid_fraction = valid_fraction
        self.extract_batch_size = extract_batch_size
        self.num_workers = num_workers
        self.amp = amp
        self.augment_views = augment_views
        self.augmentation = augmentation
        self.cache = cache
        self.cache_dir = cache_dir
        self.weight_decay = weight_decay
        self.label_smoothing = label_smoothing
        self.lr_schedule = lr_schedule
        self.warmup_epochs = warmup_epochs
        self.early_stopping = early_stopping
        self.class_weight = class_weight
        self.monitor = monitor
        self.strategy = strategy
        self.unfreeze_blocks = unfreeze_blocks
        self.freeze_epochs = freeze_epochs
        self.backbone_lr_scale = backbone_lr_scale
        self.callbacks = callbacks
        self.tta = tta
        self.strict = strict
        self.verbose = verbose

    # ------------------------------------------------------------------ parameters
    def get_params(self) -> dict[str, Any]:
        """Return the constructor parameters as a dict (scikit-learn style)."""
        names = list(inspect.signature(type(self).__init__).parameters)[1:]
        return {name: getattr(self, name) for name in names}

    def __repr__(self) -> str:
        defaults = {
            n: p.default for n, p in inspect.signature(type(self).__init__).parameters.items()
        }
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if v != defaults.get(k)]
        return f"{type(self).__name__}({', '.join(changed)})"

    def _validate_params(self) -> list[int]:
        hidden = normalize_hidden_units(self.hidden_units)
        checks = [
            ("dropout", 0.0 <= float(self.dropout) < 1.0, "in [0, 1)"),
            ("learning_rate", float(self.learning_rate) > 0, "positive"),
            ("epochs", int(self.epochs) >= 1, "at least 1"),
            ("batch_size", int(self.batch_size) >= 1, "at least 1"),
            ("valid_fraction", 0.0 <= float(self.valid_fraction) < 1.0, "in [0, 1)"),
            ("augment_views", int(self.augment_views) >= 0, "0 or more"),
            ("augmentation", self.augmentation in AUGMENTATIONS, f"one of {AUGMENTATIONS}"),
            ("weight_decay", float(self.weight_decay) >= 0, "0 or more"),
            ("label_smoothing", 0.0 <= float(self.label_smoothing) < 1.0, "in [0, 1)"),
            ("lr_schedule", self.lr_schedule in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
            ("strategy", self.strategy in STRATEGIES, f"one of {', '.join(STRATEGIES)}"),
            (
                "unfreeze_blocks",
                self.unfreeze_blocks is None or int(self.unfreeze_blocks) >= 1,
                "at least 1 or None",
            ),
            (
                "freeze_epochs",
                self.freeze_epochs is None or 0 <= int(self.freeze_epochs) <= int(self.epochs),
                "in [0, epochs] or None",
            ),
            ("backbone_lr_scale", float(self.backbone_lr_scale) > 0, "positive"),
            ("warmup_epochs", 0 <= int(self.warmup_epochs) <= int(self.epochs), "in [0, epochs]"),
            (
                "early_stopping",
                self.early_stopping is None or int(self.early_stopping) >= 1,
                "at least 1 or None",
            ),
            ("class_weight", self.class_weight in (None, "balanced"), "None or 'balanced'"),
            (
                "monitor",
                self.monitor in ("valid_loss", "valid_accuracy"),
                "'valid_loss' or 'valid_accuracy'",
            ),
            (
                "extract_batch_size",
                self.extract_batch_size is None or int(self.extract_batch_size) >= 1,
                "at least 1 or None",
            ),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"{name} must be {rule}; got {getattr(self, name)!r}.")
        return hidden

    def _reset(self) -> None:
        """Forget a previous fit, so a failed refit never mixes old and new parts."""
        for name in [n for n in vars(self) if n.endswith("_") or n.startswith("_")]:
            delattr(self, name)

    # ------------------------------------------------------------------ training
    def fit(
        self,
        data_dir: str | os.PathLike[str],
        *,
        resume_from: str | os.PathLike[str] | None = None,
    ) -> FlowerClassifier:
        """Train the classifier on a folder of flower photos.

        Args:
            data_dir: A root holding ``train/`` and ``valid/`` (and maybe ``test/``) class
                folders, or one folder of class folders from which ``valid_fraction`` of
                each class is held out.
            resume_from: A checkpoint saved by an earlier, shorter or interrupted ``fit``
                with the same data and settings: training continues after its last epoch
                up to ``epochs`` in all, with its optimizer, schedule and random state, so
                2 epochs + resume to 4 equals 4 epochs in one go (on the CPU).

        Returns:
            ``self``, fitted: ``classes_``, ``class_to_idx_``, ``category_names_``,
            ``history_``, ``best_epoch_``, ``backbone_``, ``head_``, ``device_``,
            ``n_train_``, ``n_valid_`` (readable images used) and ``skipped_`` (one message
            per unreadable image left out) are set. After fine-tuning (``strategy`` other
            than ``"freeze"``), ``backbone_`` holds the fine-tuned weights.

        Raises:
            DataError: The folder is missing, holds fewer than two classes, or no readable
                training image.
            PetalnetError: ``unfreeze_blocks`` asks for blocks of a backbone that declares
                none.
            ImageReadError: With ``strict=True``, an image cannot be read.
            BackboneNotFoundError: ``backbone`` is not registered.
            WeightsUnavailableError: The pretrained weights cannot be found or downloaded.
            ValueError: A parameter is out of range.
            CheckpointError: ``resume_from`` is unreadable or does not match this run.
        """
        hidden = self._validate_params()
        resume = read_checkpoint(resume_from) if resume_from is not None else None
        self._reset()
        data = load_training_data(
            data_dir, valid_fraction=float(self.valid_fraction), seed=self.random_state
        )
        if self.category_names is not None:
            names: dict[str, str] | None = load_category_names(self.category_names)
        elif data.category_names_file is not None:
            names = load_category_names(data.category_names_file)
        else:
            names = None
        device = distributed.local_device(resolve_device(self.device))
        distributed.init(device)  # under torchrun: join the process group
        precision = resolve_precision(self.amp, device)
        backbone = build_backbone(self.backbone, self.weights)
        plan = plan_training(
            backbone,
            str(self.strategy),
            unfreeze_blocks=self.unfreeze_blocks,
            freeze_epochs=self.freeze_epochs,
            epochs=int(self.epochs),
            name=self.backbone,
        )
        # the backbone that predicts; after fine-tuning it is prepared again, trained
        self._setup(backbone, prepare_backbone(backbone, device), device, precision)
        train, valid, skipped = self._training_data(plan, data)
        if len(train.labels) == 0:
            raise DataError(
                f"None of the {len(data.train)} training images under {str(data_dir)!r} could "
                "be read; see the warnings above."
            )
        with seeded(self.random_state):
            head = build_head(backbone.feature_dim, len(data.classes), hidden, float(self.dropout))
        head.to(device)
        model: nn.Module = head  # what trains: the head, with backbone layers if fine-tuning
        if plan.back is not None:
            plan.back.to(device=device, memory_format=torch.channels_last)
            model = nn.Sequential(plan.back, head)

        self.classes_ = list(data.classes)
        self.class_to_idx_ = dict(data.class_to_idx)
        self.category_names_ = names
        self.head_ = head
        self.n_train_, self.n_valid_ = len(train.labels), len(valid.labels)
        self.skipped_ = skipped
        result = TrainResult()
        if resume is not None:
            result = self._resume_state(resume, model, data.classes, str(resume_from))
        self.history_ = result.history
        self._train_state = result
        callbacks: list[Callback] = [EpochLogger()] if self._verbosity() > 0 else []
        if self.early_stopping is not None:
            callbacks.append(EarlyStopping(int(self.early_stopping)))
        callbacks += list(self.callbacks or [])
        class_weights = None
        if self.class_weight == "balanced":
            counts = torch.bincount(train.labels, minlength=len(data.classes)).float()
            class_weights = len(train.labels) / (len(data.classes) * counts.clamp(min=1))
        try:
            train_head(
                model,
                train,
                valid,
                epochs=int(self.epochs),
                learning_rate=float(self.learning_rate),
                batch_size=int(self.batch_size),
                device=device,
                seed=self.random_state,
                weight_decay=float(self.weight_decay),
                label_smoothing=float(self.label_smoothing),
                schedule=str(self.lr_schedule),
                warmup_epochs=int(self.warmup_epochs),
                class_weights=class_weights,
                callbacks=callbacks,
                monitor=str(self.monitor),
                result=result,
                backbone=plan.back,
                backbone_lr_scale=float(self.backbone_lr_scale),
                freeze_epochs=plan.freeze_epochs,
            )
        except KeyboardInterrupt:
            if not result.history:
                raise
            warnings.warn(
                f"Training interrupted after {len(result.history)} epoch(s); keeping the best "
                f"epoch ({result.best_epoch}). Call save(path) to keep it.",
                PetalnetWarning,
                stacklevel=2,
            )
        finally:  # also after an error: the model holds the best epoch so far, save() works
            self.best_epoch_ = result.best_epoch
            self.optimizer_state_ = result.optimizer_state
            if isinstance(train, ImageBatches):  # streamed: unreadable images found on the way
                self.skipped_ = train.skipped + valid.skipped
                self.n_train_ -= len(train.skipped)
                self.n_valid_ -= len(valid.skipped)
            if plan.back is not None and result.history:
                # the backbone's weights are now the fine-tuned ones: store them on save,
                # and run (and cache) the new backbone for evaluate and predict
                backbone.restorable = False
                self._setup(backbone, prepare_backbone(backbone, device), device, precision)
        return self

    def _training_data(
        self, plan: TrainingPlan, data: TrainingData
    ) -> tuple[Batches, Batches, list[str]]:
        """What the training loop iterates over, per ``plan``, and unreadable images so far.

        Rows computed once (features, or the frozen front's output, cached on disk), or,
        when training reaches the first layer, images decoded and augmented every epoch.
        """
        device = self.device_
        if plan.front is None:
            seed = self.random_state
            if seed is None:
                seed = int(torch.randint(2**62, ()))
            streams = [
                ImageBatches(
                    samples,
                    self.backbone_.preprocessing,
                    device,
                    augment=augment,
                    seed=seed,
                    augmentation=str(self.augmentation),
                    num_workers=self.num_workers,
                    strict=bool(self.strict),
                )
                for samples, augment in ((data.train, True), (data.valid, False))
            ]
            return streams[0], streams[1], []
        source = None
        if plan.front is not self.backbone_:  # the frozen front of a partly trained backbone
            front_cache = None
            if self.cache:
                front_cache = feature_cache(plan.front, self._precision, self.cache_dir)
            source = (prepare_backbone(plan.front, device), front_cache)
        views = int(self.augment_views)
        what = "train features" if plan.back is None else "train frozen-layer outputs"
        train = self._extract(data.train, what, range(1, views + 1) or [0], source=source)
        valid = self._extract(data.valid, what.replace("train", "valid"), source=source)
        return (
            TensorBatches(train.features, train.labels, device),
            TensorBatches(valid.features, valid.labels, device),
            train.skipped + valid.skipped,
        )

    def _resume_state(
        self, ckpt: dict[str, Any], model: nn.Module, classes: Sequence[str], path: str
    ) -> TrainResult:
        """Load the last epoch into ``model`` and return the state training continues from."""
        training = ckpt.get("training") or {}
        if list(ckpt["classes"]) != list(classes) or ckpt["backbone"]["name"] != self.backbone:
            raise CheckpointError(
                f"Cannot resume from {path!r}: it was trained with backbone "
                f"{ckpt['backbone']['name']!r} on {len(ckpt['classes'])} classes, this run uses "
                f"{self.backbone!r} on {len(classes)}."
            )
        if "last_state" not in training:
            raise CheckpointError(f"{path!r} holds no training state to resume from.")
        try:
            model.load_state_dict(training["last_state"])
        except RuntimeError:
            raise CheckpointError(
                f"Cannot resume from {path!r}: its classifier has other layer sizes or "
                "trains other layers; use the same hidden_units, strategy and unfreeze_blocks "
                "as the run that wrote it."
            ) from None
        return TrainResult(
            history=[dict(r) for r in ckpt.get("history", [])],
            best_epoch=int(ckpt.get("best_epoch", 0)),
            optimizer_state=ckpt.get("optimizer", {}),
            best_state=training.get("best_state", ckpt["head"]["state_dict"]),
            rng_state=training.get("rng_state"),
        )

    # ------------------------------------------------------------------ fitted use
    def _setup(
        self,
        backbone: FeatureExtractor,
        runner: nn.Module,
        device: torch.device,
        precision: torch.dtype,
    ) -> None:
        """Attach the backbone, the module that runs it, and where and how it runs."""
        self.backbone_ = backbone
        self.device_ = device
        self._runner = runner
        self._precision = precision
        self._cache = feature_cache(backbone, precision, self.cache_dir) if self.cache else None

    def _extract(
        self,
        samples: Sequence[Sample],
        desc: str,
        views: Sequence[int] = (0,),
        *,
        source: tuple[nn.Module, FeatureCache | None] | None = None,
    ) -> Features:
        """Features of ``samples`` (stacked ``(V, N, D)`` for several views), labels, skips.

        ``source`` is ``(module, cache)`` to run instead of the backbone (a frozen front).
        Under ``torchrun`` each rank extracts its shard and every rank gets all of them.
        """
        runner, cache = source if source is not None else (self._runner, self._cache)
        sharded = distributed.world_size() > 1
        if sharded:
            desc = f"{desc} (rank 0's share of {distributed.world_size()})"
        results = [
            extract_features(
                runner,
                distributed.shard(samples) if sharded else samples,
                device=self.device_,
                batch_size=self._extract_batch(),
                num_workers=self.num_workers,
                precision=self._precision,
                cache=cache,
                view=v,
                seed=self.random_state,
                augmentation=str(self.augmentation),
                strict=bool(self.strict),
                verbose=self._verbosity(),
                desc=desc if len(views) == 1 else f"{desc} (view {v})",
            )
            for v in views
        ]
        if sharded:
            results = [
                Features(
                    torch.cat(distributed.gather([r.features])),
                    torch.cat(distributed.gather([r.labels])),
                    distributed.gather(r.skipped),
                )
                for r in results
            ]
        if len(results) == 1:
            return results[0]
        first = results[0]
        return Features(torch.stack([r.features for r in results]), first.labels, first.skipped)

    def _verbosity(self) -> int:
        """``verbose``, on rank 0 only under ``torchrun``."""
        return int(self.verbose) if distributed.is_main() else 0

    def _extract_batch(self) -> int:
        """Images per backbone pass: the parameter, else 8 on a CPU, else ``batch_size``."""
        if self.extract_batch_size is not None:
            return int(self.extract_batch_size)
        return 8 if self.device_.type == "cpu" else int(self.batch_size)

    def _check_fitted(self) -> None:
        if not hasattr(self, "head_"):
            raise NotFittedError(
                f"This {type(self).__name__} is not fitted yet: call fit(data_dir) first, "
                f"or load a saved one with {type(self).__name__}.load(path)."
            )

    def _head_log_probs(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        """Log of the mean probability over views of the same images (one view: plain)."""
        self.head_.eval()
        with torch.inference_mode():
            logps = torch.stack([self.head_(f.to(self.device_)).float().cpu() for f in views])
        return logps[0] if len(views) == 1 else logps.logsumexp(0) - math.log(len(views))

    def _log_probs(self, batch: torch.Tensor) -> torch.Tensor:
        batches = [batch, batch.flip(-1)] if self.tta else [batch]
        return self._head_log_probs(
            [run_backbone(self._runner, b, self.device_, self._precision) for b in batches]
        )

    def predict_proba(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """Return class probabilities for one image or a list of images.

        Args:
            images: One image (path, ``PIL.Image``, HxWxC uint8 array, CxHxW tensor) or a list.

        Returns:
            ``(N, n_classes)`` float32 probabilities; column ``i`` is ``classes_[i]``.

        Raises:
            NotFittedError: Called before ``fit``/``load``.
            ImageReadError: An image file cannot be read.
        """
        self._check_fitted()
        batch = self._as_list(images)
        return self._predict_log_probs(batch).exp().numpy()

    @staticmethod
    def _as_list(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
        if isinstance(images, (list, tuple)):
            return list(images)
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            return list(images)
        return [images]  # type: ignore[list-item]

    def _predict_log_probs(self, images: Sequence[ImageInput]) -> torch.Tensor:
        transform = self.backbone_.preprocessing.transform()
        draft = self.backbone_.preprocessing.resize_size
        out = [torch.empty(0, len(self.classes_))]
        step = self._extract_batch()
        for i in range(0, len(images), step):
            chunk = images[i : i + step]
            batch = torch.stack([image_to_tensor(im, transform, draft) for im in chunk])
            out.append(self._log_probs(batch))
        return torch.cat(out)

    def predict(
        self, images: ImageInput | Sequence[ImageInput], topk: int = 5
    ) -> list[Prediction] | list[list[Prediction]]:
        """Predict the ``topk`` most likely flowers for one image or a list of images.

        Args:
            images: One image (path, ``PIL.Image``, HxWxC uint8 array, CxHxW tensor) or a list
                (a 4-D tensor counts as a list).
            topk: Number of classes to return per image.

        Returns:
            For one image, a list of :class:`~petalnet.Prediction` sorted by probability; for
            a list, one such list per image.

        Raises:
            NotFittedError: Called before ``fit``/``load``.
            ImageReadError: An image file cannot be read.
            ValueError: ``topk`` is below 1.
        """
        self._check_fitted()
        if int(topk) < 1:
            raise ValueError(f"topk must be at least 1, got {topk}.")
        batch = self._as_list(images)
        preds = top_predictions(
            self._predict_log_probs(batch), int(topk), self.classes_, self.category_names_
        )
        single = not isinstance(images, (list, tuple)) and not (
            isinstance(images, torch.Tensor) and images.ndim == 4
        )
        return preds[0] if single else preds

    def evaluate(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Measure the classifier on a labelled folder.

        Args:
            path: A folder of class folders, or a root holding ``test/`` (used first) or
                ``valid/``.

        Returns:
            ``accuracy``, ``top5_accuracy``, ``loss`` (mean NLL), ``n_images``,
            ``per_class_accuracy`` and ``per_class_count`` (keyed by class folder name),
            ``confusion_matrix`` (nested lists, rows true classes, columns predictions, in
            ``classes_`` order), ``folder`` (the folder evaluated), and ``n_skipped`` /
            ``skipped`` (unreadable images left out, one message each).

        Raises:
            NotFittedError: Called before ``fit``/``load``.
            DataError: The folder is missing, empty, or has classes the model does not know.
        """
        self._check_fitted()
        folder = resolve_eval_folder(path)
        samples = list_samples(folder, self.class_to_idx_)
        feats, labels, skipped = self._extract(samples, "evaluate")
        views = [feats]
        if self.tta:
            views.append(self._extract(samples, "evaluate (mirror)", views=[VIEW_FLIP]).features)
        log_probs = self._head_log_probs(views)
        report = evaluation_report(log_probs, labels, self.classes_)
        report["folder"] = str(folder)
        report["n_skipped"] = len(skipped)
        report["skipped"] = skipped
        return report

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str], *, include_backbone: bool | None = None) -> Path:
        """Save everything needed to predict elsewhere into one file.

        The file holds the backbone's name and weights id, the classifier's weights, the
        class list, category names, preprocessing, parameters, training history and
        optimizer state, as tensors and plain values only.

        Args:
            path: Target file (``.pt`` by convention); written atomically.
            include_backbone: Also store the backbone's parameters. ``None`` does so only
                when they cannot be rebuilt from their name (random init, a local file);
                ``True`` makes the file usable offline without the pretrained weights.

        Returns:
            The path written (under ``torchrun``, only rank 0 writes it).

        Raises:
            NotFittedError: Called before ``fit``/``load``.
            CheckpointError: The file cannot be written.
        """
        self._check_fitted()
        if not distributed.is_main():  # under torchrun only rank 0 writes
            return Path(path)
        backbone: dict[str, Any] = {
            "name": self.backbone,
            "weights": self.backbone_.weights,
            "feature_dim": self.backbone_.feature_dim,
        }
        if include_backbone or (include_backbone is None and not self.backbone_.restorable):
            backbone["state_dict"] = self.backbone_.state_dict()
        params = self.get_params()
        params.pop("callbacks")  # code, not data: never stored
        for key in ("weights", "category_names", "device", "cache_dir"):
            value = params[key]
            if value is not None and not isinstance(value, Mapping):
                params[key] = str(value)
        if isinstance(self.hidden_units, (list, tuple)):
            params["hidden_units"] = [int(h) for h in self.hidden_units]
        payload = {
            "petalnet_version": __version__,
            "params": params,
            "backbone": backbone,
            "preprocessing": self.backbone_.preprocessing.to_dict(),
            "head": {
                "hidden_units": normalize_hidden_units(self.hidden_units),
                "dropout": float(self.dropout),
                "state_dict": self.head_.state_dict(),
            },
            "classes": list(self.classes_),
            "category_names": self.category_names_,
            "history": [dict(r) for r in self.history_],
            "best_epoch": int(getattr(self, "best_epoch_", 0)),
            "optimizer": getattr(self, "optimizer_state_", {}),
        }
        state = getattr(self, "_train_state", None)
        if state is not None and state.last_state is not None:
            payload["training"] = {"last_state": state.last_state, "rng_state": state.rng_state}
            if self.strategy != "freeze" and state.best_state is not None:
                # fine-tuned layers and head together, as the training loop holds them
                payload["training"]["best_state"] = state.best_state
        return write_checkpoint(payload, path)

    def export(self, path: str | os.PathLike[str], format: str = "torchscript") -> Path:
        """Export for deployment: a model from preprocessed images to class probabilities.

        Args:
            path: Target file; ``<path>.json`` next to it gets classes, names and
                preprocessing (also stored inside the file).
            format: ``"torchscript"`` or ``"onnx"`` (ONNX needs the ``onnx`` extra to embed
                the metadata, ``onnxruntime`` to run it).

        Returns:
            The model's path.

        Raises:
            NotFittedError: Called before ``fit``/``load``.
            PetalnetError: Unknown format or a failed export.
        """
        from petalnet.export import export_classifier

        self._check_fitted()
        return export_classifier(self, path, format)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], device: str | torch.device | None = None
    ) -> FlowerClassifier:
        """Load a classifier saved with :meth:`save`; no code from the file is executed.

        Args:
            path: The checkpoint file.
            device: Where to run it; ``None`` picks the best device of this machine, so a
                GPU-trained file loads on a CPU-only one.

        Returns:
            A fitted classifier.

        Raises:
            CheckpointError: The file is missing, damaged, unsafe or not a petalnet checkpoint.
            BackboneNotFoundError: Its backbone is not registered in this process.
            WeightsUnavailableError: Its pretrained backbone weights are not available here
                (save with ``include_backbone=True`` to avoid needing them).
        """
        data = read_checkpoint(path)
        try:
            return cls._from_checkpoint(data, device)
        except PetalnetError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"Checkpoint {str(path)!r} is damaged or inconsistent "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})."
            ) from None

    @classmethod
    def _from_checkpoint(
        cls, data: dict[str, Any], device: str | torch.device | None
    ) -> FlowerClassifier:
        known = set(inspect.signature(cls.__init__).parameters) - {"self"}
        params = {k: v for k, v in dict(data.get("params", {})).items() if k in known}
        params["device"] = "auto" if device is None else device
        clf = cls(**params)
        spec = data["backbone"]
        stored = spec.get("state_dict")
        if stored is not None:
            extractor: FeatureExtractor = build_backbone(spec["name"], weights=None)
            extractor.load_state_dict(stored)
            extractor.weights, extractor.restorable = spec.get("weights"), False
        else:
            extractor = build_backbone(spec["name"], weights=spec["weights"])
        if extractor.feature_dim != int(spec["feature_dim"]):
            raise CheckpointError(
                f"Backbone {spec['name']!r} now gives {extractor.feature_dim} features but the "
                f"checkpoint was trained on {spec['feature_dim']}; the backbone changed."
            )
        extractor.preprocessing = Preprocessing.from_dict(data["preprocessing"])
        classes = [str(c) for c in data["classes"]]
        head_spec = data["head"]
        head = build_head(
            extractor.feature_dim,
            len(classes),
            list(head_spec["hidden_units"]),
            float(head_spec["dropout"]),
        )
        head.load_state_dict(head_spec["state_dict"])
        device = resolve_device(clf.device)
        clf._setup(
            extractor,
            prepare_backbone(extractor, device),
            device,
            resolve_precision(clf.amp, device),
        )
        clf.head_ = head.to(clf.device_).eval()
        clf.classes_ = classes
        clf.class_to_idx_ = {c: i for i, c in enumerate(classes)}
        names = data.get("category_names")
        clf.category_names_ = dict(names) if names is not None else None
        clf.history_ = [dict(r) for r in data.get("history", [])]
        clf.best_epoch_ = int(data.get("best_epoch", 0))
        clf.optimizer_state_ = data.get("optimizer", {})
        training = data.get("training") or {}
        clf._train_state = TrainResult(
            last_state=training.get("last_state"), rng_state=training.get("rng_state")
        )
        return clf
