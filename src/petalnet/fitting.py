"""How one ``fit`` runs: parameters and a folder in, a :class:`FittedModel` out.

folder -> samples (:mod:`~petalnet.data`) -> plan (:mod:`~petalnet.strategy`) -> rows
(:mod:`~petalnet.pipeline`) -> head -> :class:`~petalnet.training.Trainer`. This module also
turns parameters into the runtime objects they describe (the image pipeline, the trainer),
so that each parameter is read in one place.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from petalnet import distributed
from petalnet._device import resolve_device
from petalnet.backbones.base import FeatureExtractor
from petalnet.backbones.registry import auto_int8, build_backbone, int8_float
from petalnet.batches import Batches, ImageBatches
from petalnet.calibration import Calibration, fit_calibration, sample_rows
from petalnet.callbacks import TrainingState
from petalnet.checkpoint import read_checkpoint, resume_state
from petalnet.data import (
    DataSource,
    GroupsOf,
    TrainingData,
    load_category_names,
    load_training_data,
)
from petalnet.errors import DataError, PetalnetError
from petalnet.features import prepare_backbone
from petalnet.fitted import FittedModel
from petalnet.head import build_head, normalize_hidden_units
from petalnet.images import Unreadable
from petalnet.params import ClassifierParams, param_specs
from petalnet.pipeline import ImagePipeline
from petalnet.precision import resolve_precision
from petalnet.quantize import (
    Int8Scales,
    calibrate_int8,
    calibration_images,
    require_int8,
    resolve_quantize,
)
from petalnet.strategy import TrainingPlan, calibration_rows, plan_training, training_batches
from petalnet.training import Trainer, seeded

__all__ = [
    "PIPELINE_PARAMS",
    "RESUME_KEEPS",
    "fit_model",
    "make_pipeline",
    "make_trainer",
    "restore_params",
]

PIPELINE_PARAMS = (
    "device",
    "amp",
    "cache",
    "cache_dir",
    "extract_batch_size",
    "num_workers",
    "random_state",
    "augmentation",
    "verbose",
)
"""The parameters :func:`make_pipeline` reads: a change to one means a new pipeline."""


def make_pipeline(params: ClassifierParams, backbone: FeatureExtractor) -> ImagePipeline:
    """The image pipeline ``params`` describe, over ``backbone``.

    Args:
        params: The classifier's parameters (device, amp, cache, batch size, ...).
        backbone: The feature extractor.

    Returns:
        The pipeline, on this process's device (its own GPU under ``torchrun``).

    Raises:
        PetalnetError: The device asked for is not available here.
    """
    int8 = backbone.meta.int8 is not None  # an int8 graph computes in int8, never autocast
    # and on the CPU only: there "auto" finds it (fast-cpu's model loaded on a GPU machine)
    wanted = "cpu" if int8 and params.device in (None, "auto") else params.device
    device = distributed.local_device(resolve_device(wanted))
    return ImagePipeline(
        backbone,
        device=device,
        precision=torch.float32 if int8 else resolve_precision(params.amp, device),
        cache_dir=params.cache_dir,
        use_cache=params.cache,
        batch_size=params.extract_batch_size,
        num_workers=params.num_workers,
        seed=params.random_state,
        augmentation=params.augmentation,
        verbose=params.verbose,
    )


def make_trainer(params: ClassifierParams, device: torch.device, freeze_epochs: int) -> Trainer:
    """The trainer ``params`` describe.

    Args:
        params: The classifier's parameters.
        device: Where training computes.
        freeze_epochs: Head-only epochs, as the strategy planned them.

    Returns:
        The trainer.
    """
    return Trainer(
        epochs=params.epochs,
        learning_rate=params.learning_rate,
        batch_size=params.batch_size,
        device=device,
        seed=params.random_state,
        weight_decay=params.weight_decay,
        label_smoothing=params.label_smoothing,
        schedule=params.lr_schedule,
        warmup_epochs=params.warmup_epochs,
        class_weight=params.class_weight,
        monitor=params.monitor,
        early_stopping=params.early_stopping,
        backbone_lr_scale=params.backbone_lr_scale,
        freeze_epochs=freeze_epochs,
        ema=params.ema,
        mixup=params.mixup,
        callbacks=list(params.callbacks or []),
        verbose=params.verbose,
        # validation during training sees the centre crop; evaluate and predict use tta
        accuracy_note="centre crop; with tta, evaluate averages more views" if params.tta else "",
    )


def fit_model(
    params: ClassifierParams,
    data_dir: DataSource,
    *,
    pipeline_for: Callable[[FeatureExtractor], ImagePipeline],
    keep: Callable[[FittedModel], None],
    resume_from: str | os.PathLike[str] | None = None,
    groups: GroupsOf | None = None,
) -> FittedModel:
    """Train a classifier on a folder, as ``params`` say.

    ``keep`` receives the model as soon as it exists, before the first epoch: if training
    then fails (NaN loss, Ctrl-C before the end is handled by the trainer), the caller
    still holds the model, with the best epoch's weights so far.

    Args:
        params: Validated parameters.
        data_dir: A root with ``train/`` (and ``valid/``) class folders, or one folder of
            class folders.
        pipeline_for: Gives the image pipeline for a backbone (the caller keeps it for
            evaluation and prediction).
        keep: Called with the model before training starts.
        resume_from: A checkpoint of an earlier, shorter or interrupted run to continue;
            its parameters fill every one of ``params`` left at its default
            (:func:`restore_params`).
        groups: Groups of copies and siblings a carved validation split keeps together
            (:func:`petalnet.splits.split_groups`); ``None``: per class at random.

    Returns:
        The fitted model (fine-tuned backbone, head, classes, names, history).

    Raises:
        DataError: No usable training images.
        CheckpointError: ``resume_from`` is unreadable or does not match this run.
        PetalnetError: The plan cannot be made, or the loss became NaN.
    """
    resume = read_checkpoint(resume_from) if resume_from is not None else None
    if resume is not None:
        restore_params(params, resume.get("params", {}))
    if resume is not None and params.refit:
        raise ValueError("refit=True cannot resume a run; resume it with refit=False first.")
    data = load_training_data(
        data_dir, valid_fraction=params.valid_fraction, seed=params.random_state, groups=groups
    )
    names_file = params.category_names
    names_file = names_file if names_file is not None else data.category_names_file
    names = load_category_names(names_file) if names_file is not None else None
    unreadable = Unreadable.for_training(params.strict)
    run = _Run(params, data, names, unreadable, pipeline_for, keep)
    model = run.train(resume, str(resume_from))
    if not params.refit or not model.training.best_epoch:
        return model
    # refit: the kept epoch's count, on every labelled image, the last epoch kept
    chosen, selection = model.training.best_epoch, model.training.history
    shorter = {
        name: min(value, chosen)
        for name in ("freeze_epochs", "warmup_epochs")
        if (value := getattr(params, name)) is not None
    }
    refit = dataclasses.replace(
        params, epochs=chosen, monitor="last", early_stopping=None, **shorter
    )
    held = data.held_out and dataclasses.replace(data.held_out, fraction=0.0)  # none held out
    everything = dataclasses.replace(data, train=data.train + data.valid, valid=[], held_out=held)
    # the refit has no validation split of its own: it keeps the calibration of the run
    # that chose the epoch count (exact for a frozen backbone, close for a fine-tuned one)
    chosen_by = model.calibration
    # a frozen backbone is the same network again: the refit keeps it (and its pipeline, its
    # prepared copy and, with quantize="int8", its scales and lowered int8 graph)
    frozen = model.backbone if params.strategy == "freeze" else None
    model = _Run(refit, everything, names, unreadable, pipeline_for, keep, frozen).train(None, "")
    model.selection_history = selection
    model.calibration = chosen_by
    return model


RESUME_KEEPS = ("device", "verbose", "callbacks", "cache", "cache_dir", "num_workers")
"""Parameters of where and how loudly this process runs: a resumed run never takes them
from the checkpoint."""


def restore_params(params: ClassifierParams, saved: Mapping[str, Any]) -> None:
    """Give a resumed run the parameters of the run it continues.

    Every parameter still at its default takes the checkpoint's value (backbone, preset
    values, epochs, schedule, ...); one set to anything else wins, as a flag does on the
    command line.

    Args:
        params: This run's parameters (changed in place).
        saved: The checkpoint's ``params``.
    """
    restored = {
        spec.name: saved[spec.name]
        for spec in param_specs()
        if spec.name in saved
        and spec.name not in RESUME_KEEPS
        and getattr(params, spec.name) == spec.default
    }
    params.set_params(**restored)


@dataclasses.dataclass
class _Run:
    """One training pass: a fresh backbone and head, trained on ``data`` as ``params`` say."""

    params: ClassifierParams
    data: TrainingData
    names: dict[str, str] | None
    unreadable: Unreadable
    pipeline_for: Callable[[FeatureExtractor], ImagePipeline]
    keep: Callable[[FittedModel], None]
    backbone: FeatureExtractor | None = None  # a frozen one to reuse (a refit), else built

    def train(self, resume: Mapping[str, Any] | None, resume_path: str) -> FittedModel:
        params, data = self.params, self.data
        hidden = normalize_hidden_units(params.hidden_units)
        backbone = self.backbone
        device = distributed.local_device(resolve_device(params.device))
        parts = None
        if backbone is None:
            backbone = build_backbone(params.backbone, params.weights)
            parts = resolve_quantize(
                params.quantize,
                params.strategy,
                device,
                auto_int8(params.backbone),
                resolve_precision(params.amp, device),
                int8_float(params.backbone),
            )
            if parts is not None and params.strategy == "freeze":
                backbone = backbone.derive(int8=self.calibrate_int8(backbone, device, parts))
        plan = plan_training(
            backbone,
            params.strategy,
            unfreeze_blocks=params.unfreeze_blocks,
            freeze_epochs=params.freeze_epochs,
            epochs=params.epochs,
            name=params.backbone,
        )
        if parts is not None and params.strategy != "freeze":  # the frozen front in int8
            backbone = self.quantise_front(plan, backbone, device)
        pipeline = self.pipeline_for(backbone)
        train, valid = training_batches(
            plan, pipeline, data, self.unreadable, augment_views=params.augment_views
        )
        n_train, n_valid = _readable(train), _readable(valid)
        if n_train == 0:
            raise DataError(
                f"None of the {len(data.train)} training images under {str(data.root)!r} "
                "could be read; see the warnings above."
            )
        with seeded(params.random_state):
            head = build_head(backbone.feature_dim, len(data.classes), hidden, params.dropout)
        trained: nn.Module = head.to(pipeline.device)
        if plan.back is not None:  # fine-tuned backbone layers run before the head
            plan.back.to(pipeline.device).to(memory_format=torch.channels_last)
            trained = nn.Sequential(plan.back, head)
        state = TrainingState()
        if resume is not None:
            state = resume_state(
                resume, resume_path, trained, classes=data.classes, backbone=params.backbone
            )
        model = FittedModel(
            backbone,
            head,
            hidden,
            params.dropout,
            list(data.classes),
            self.names,
            state,
            n_train=n_train,
            n_valid=n_valid,
            skipped=self.unreadable.messages,
            held_out=data.held_out,
        )
        self.keep(model)
        trainer = make_trainer(params, pipeline.device, plan.freeze_epochs)
        try:
            trainer.fit(
                trained, train, valid, n_classes=len(data.classes), backbone=plan.back, state=state
            )
        finally:  # also after an error: the model holds the best epoch so far
            model.n_train, model.n_valid = _readable(train), _readable(valid)
            if plan.back is not None and state.history:  # fine-tuned: a new backbone
                model.backbone = backbone.derive(source="trained")
        if not state.interrupted:
            views = calibration_rows(
                plan, pipeline, data, self.unreadable, valid, pipeline.test_views(params.tta)
            )
            model.calibration = self.calibrate(trained, head, plan.back, train, views)
        return model

    def quantise_front(
        self, plan: TrainingPlan, backbone: FeatureExtractor, device: torch.device
    ) -> FeatureExtractor:
        """Put the frozen front of a partly fine-tuned backbone in int8 (``plan`` changes).

        Returns:
            ``backbone`` with the front's scales (:attr:`Int8Scales.front`): what predicts
            runs the front in int8 and the fine-tuned blocks after it in float.
        """
        if plan.front is None and self.params.quantize == "auto":
            return backbone  # nothing stays frozen: all of it trains in float
        if plan.front is None:
            raise PetalnetError(
                f"quantize={self.params.quantize!r} puts the frozen front of the backbone in "
                f"int8, but unfreeze_blocks={self.params.unfreeze_blocks!r} leaves nothing "
                "frozen: unfreeze fewer blocks, or pass quantize=None."
            )
        body = plan.front.body
        if not isinstance(body, nn.Sequential):  # a fused backbone's frozen side
            raise PetalnetError(
                f"quantize={self.params.quantize!r} cannot put the frozen side of the fused "
                f"backbone {self.params.backbone!r} in int8 while its first part fine-tunes: "
                "pass quantize=None (or 'auto'), or strategy='freeze'."
            )
        cut = len(list(body.children()))
        scales = self.calibrate_int8(plan.front, device, front=cut)
        plan.front = plan.front.derive(int8=scales)
        return backbone.derive(int8=scales)

    def calibrate_int8(
        self,
        backbone: FeatureExtractor,
        device: torch.device,
        parts: tuple[int, ...] = (),
        front: int = 0,
    ) -> Int8Scales:
        """The int8 scales of ``backbone``, or of its ``parts`` or ``front`` children.

        They are observed on training images evenly spaced over the training list. Under
        ``torchrun`` rank 0 calibrates and every rank runs with its scales.
        """
        require_int8(device)  # before any image is read
        scales = None
        if distributed.is_main():
            paths = [path for path, _ in self.data.train]
            images = calibration_images(paths, backbone.preprocessing)
            runner, floats = prepare_backbone(backbone, device), int8_float(self.params.backbone)
            scales = calibrate_int8(runner, images, parts, front, floats)
        scales = distributed.from_main(scales)
        if scales is None:  # pragma: no cover - rank 0 always sends them
            raise RuntimeError("rank 0 sent no int8 scales")
        return scales

    def calibrate(
        self,
        trained: nn.Module,
        head: nn.Module,
        back: nn.Module | None,
        train: Batches,
        views: Sequence[Iterable[tuple[torch.Tensor, torch.Tensor]]],
    ) -> Calibration:
        """Temperature, knn bank and unknown threshold of the trained model.

        On the validation images of :func:`~petalnet.strategy.calibration_rows` (``views``:
        the centre crop first); with test-time augmentation, on their views' average, which
        is what ``evaluate`` and ``predict`` answer.
        """
        params = self.params
        trained.eval()
        embed = back if back is not None else nn.Identity()
        calibration = fit_calibration(
            head,
            embed,
            train.batches(sample_rows(len(train.labels)), 256, 1),
            views[0],
            score=params.novelty,
            target_recall=params.known_recall or 0.95,
            calibrate=params.calibrate,
            views=views[1:],
        )
        if params.known_recall is None:
            calibration.threshold = None
        return calibration


def _readable(rows: Batches) -> int:
    """Rows used, over every rank: streamed images found unreadable do not count."""
    skipped = len(rows.skipped_rows) if isinstance(rows, ImageBatches) else 0
    return int(distributed.all_reduce_sum([len(rows.labels) - skipped])[0])
