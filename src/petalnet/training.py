"""The trainer: minibatch NLL loss + Adam, validation every epoch, the best epoch kept.

:class:`Trainer` trains a model (the head, or fine-tuned backbone layers followed by the
head) on a :class:`~petalnet.batches.Batches` source. It owns the loop, the callbacks
(epoch lines, early stopping, the user's), class weights, the learning-rate schedule,
Ctrl-C, and the state a resumed run continues from (:class:`~petalnet.TrainingState`).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import nn

from petalnet import distributed
from petalnet._types import Monitor, Schedule
from petalnet.batches import Batches
from petalnet.callbacks import Callback, EarlyStopping, EpochLogger, EpochRecord, TrainingState
from petalnet.errors import PetalnetError, PetalnetWarning

__all__ = [
    "SCHEDULES",
    "Monitor",
    "Schedule",
    "Trainer",
    "evaluate_model",
    "seeded",
]

SCHEDULES: tuple[Schedule, ...] = get_args(Schedule)


@contextmanager
def seeded(seed: int | None, device: torch.device | None = None) -> Iterator[None]:
    """Run a block with torch's random generators seeded, restoring them afterwards.

    Args:
        seed: The seed; ``None`` leaves the generators alone (fresh randomness).
        device: The device whose generator is also forked (CUDA only; others share the CPU's).

    Yields:
        Nothing.
    """
    if seed is None:
        yield
        return
    cuda = [device.index or 0] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(int(seed))
        yield


@torch.inference_mode()
def evaluate_model(
    model: nn.Module, data: Batches, order: torch.Tensor | None = None, batch_size: int = 1024
) -> tuple[float, float]:
    """Return mean NLL loss and accuracy of ``model`` (in eval mode) on labelled data.

    Args:
        model: A module returning log-probabilities.
        data: The labelled rows or images.
        order: Which rows to use (default all).
        batch_size: Rows per forward pass.

    Returns:
        ``(loss, accuracy)``; ``(nan, nan)`` when there are no rows.
    """
    if order is None:
        order = torch.arange(len(data.labels))
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for x, y in data.batches(order, batch_size, 1):
        logp = model(x)
        loss_sum += nn.functional.nll_loss(logp, y, reduction="sum").item()
        correct += int((logp.argmax(1) == y).sum())
        count += len(y)
    model.train(was_training)
    if not count:
        return float("nan"), float("nan")
    return loss_sum / count, correct / count


def _averaged(
    model: nn.Module, decay: float | None, saved: dict[str, torch.Tensor] | None
) -> torch.optim.swa_utils.AveragedModel | None:
    """The exponential moving average of ``model``'s weights (restored from ``saved``)."""
    if decay is None:
        return None
    average = torch.optim.swa_utils.AveragedModel(
        model,
        multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay),  # type: ignore[no-untyped-call]
        use_buffers=True,
    )
    if saved is not None:
        average.load_state_dict(saved)
    return average


def _lr_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    *,
    total_steps: int,
    warmup_steps: int,
    done_steps: int,
) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-step learning-rate schedule, positioned after ``done_steps`` steps."""
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=max(total_steps, 2),
            pct_start=min(0.99, warmup_steps / total_steps) if warmup_steps else 0.3,
            last_epoch=done_steps - 1,
        )

    def lr_factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "cosine":
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    # on resume, initial_lr is in the restored optimizer state and the schedule continues
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor, last_epoch=done_steps - 1)


@dataclass(kw_only=True)
class Trainer:
    """Trains a model returning log-probabilities; keeps the best validation epoch.

    The loss is the negative log-likelihood of the model's log-probabilities (the classic recipe's
    ``NLLLoss``), optionally with label smoothing and class weights. The best epoch is the
    one with the lowest validation loss (ties: higher accuracy), a finer and steadier signal
    than accuracy on small validation sets; ``monitor="valid_accuracy"`` picks the most
    accurate epoch instead (ties: lower loss), which suits label smoothing. With
    ``monitor="last"`` (an epoch count chosen beforehand on other data) or without
    validation data the last epoch is kept; validation is then only reported.

    Its options have no defaults here: :func:`petalnet.fitting.make_trainer` fills them
    from the classifier's parameters, where the defaults are declared.

    Args:
        epochs: Epochs of the whole run (a resumed run counts the earlier ones).
        learning_rate: Adam's (peak) learning rate.
        batch_size: Rows per optimisation step.
        device: Where to compute.
        seed: Seed of the shuffling order and dropout (``None``: not reproducible).
        weight_decay: Decoupled weight decay (AdamW) when positive; plain Adam at 0.
        label_smoothing: Share of each target's probability spread over all classes.
        schedule: See :data:`Schedule`; stepped per batch.
        warmup_epochs: Linear warm-up over these epochs (for ``"onecycle"``: its rising
            part; 30 % of the steps when 0).
        class_weight: ``"balanced"`` weighs each class's loss inversely to its count.
        monitor: What picks the kept epoch (see :data:`Monitor`).
        early_stopping: Stop after this many epochs without a lower validation loss.
        backbone_lr_scale: Fine-tuned backbone layers learn at ``learning_rate`` times this.
        freeze_epochs: Epochs at the start during which fine-tuned layers stay frozen.
        ema: Decay per step of an exponential moving average of the weights
            (``torch.optim.swa_utils.AveragedModel``, buffers included); when set, the
            average is what is validated, kept and returned. ``None``: off.
        mixup: Mixup's ``alpha``: each training batch is blended with a shuffled copy of
            itself, ``lam * x + (1 - lam) * x[perm]`` with ``lam ~ Beta(alpha, alpha)``,
            and the loss is blended the same way (Zhang et al. 2018; on cached rows it is
            manifold mixup). 0: off.
        callbacks: The user's callbacks, called after petalnet's own (epoch lines when
            ``verbose``, early stopping).
        verbose: ``0`` prints nothing; ``1`` one line per epoch (rank 0 under torchrun).
        accuracy_note: Said after the accuracy in those lines (which view it is of).
    """

    epochs: int
    learning_rate: float
    batch_size: int
    device: torch.device
    seed: int | None
    weight_decay: float
    label_smoothing: float
    schedule: Schedule
    warmup_epochs: int
    class_weight: Literal["balanced"] | None
    monitor: Monitor
    early_stopping: int | None
    backbone_lr_scale: float
    freeze_epochs: int
    ema: float | None = None
    mixup: float = 0.0
    callbacks: Sequence[Callback] = ()
    verbose: int = 0
    accuracy_note: str = ""

    def __post_init__(self) -> None:
        own: list[Callback] = []
        if self.verbose > 0 and distributed.is_main():
            own.append(EpochLogger(self.accuracy_note))
        if self.early_stopping is not None:
            own.append(EarlyStopping(self.early_stopping))
        self.callbacks = [*own, *self.callbacks]

    def _optimizer(self, model: nn.Module, backbone: nn.Module | None) -> torch.optim.Optimizer:
        """Adam (AdamW with weight decay), fused where torch can; fine-tuned layers apart."""
        tuned = {id(p) for p in backbone.parameters()} if backbone is not None else set()
        groups: list[dict[str, Any]] = [
            {
                "params": [p for p in model.parameters() if id(p) not in tuned],
                "lr": self.learning_rate,
            }
        ]
        if backbone is not None:
            lr = self.learning_rate * self.backbone_lr_scale
            groups.append({"params": list(backbone.parameters()), "lr": lr})
        # one fused kernel per step where torch has one: the same algorithm, rounded apart;
        # fast-cpu's head step 4.8 -> 3.7 ms on 2 cores (benchmarks/train_step_levers.py)
        fused = True if self.device.type in ("cpu", "cuda") else None
        if self.weight_decay > 0:
            return torch.optim.AdamW(
                groups, lr=self.learning_rate, weight_decay=self.weight_decay, fused=fused
            )
        return torch.optim.Adam(groups, lr=self.learning_rate, fused=fused)

    def _class_weights(self, train: Batches, n_classes: int) -> torch.Tensor | None:
        if self.class_weight != "balanced":
            return None
        local = torch.bincount(train.labels.cpu(), minlength=n_classes).tolist()
        counts = torch.tensor(distributed.all_reduce_sum(local))  # over every rank's share
        return (counts.sum() / (n_classes * counts.clamp(min=1))).float().to(self.device)

    def fit(
        self,
        model: nn.Module,
        train: Batches,
        valid: Batches,
        *,
        n_classes: int,
        backbone: nn.Module | None = None,
        state: TrainingState | None = None,
    ) -> TrainingState:
        """Train ``model`` in place; leave it holding the best epoch's weights, in eval mode.

        Ctrl-C after at least one finished epoch ends training with a warning and
        ``state.interrupted`` set; before that it propagates. On any error the model still
        ends holding the best epoch so far.

        Args:
            model: Returns log-probabilities; on the trainer's device.
            train: The rows or images to learn from.
            valid: The ones to validate on after every epoch (may be empty).
            n_classes: Number of classes (for class weights).
            backbone: The backbone layers inside ``model`` to fine-tune, if any.
            state: To **resume**: the state of an earlier run (history, best epoch and
                weights, optimizer and random state), with ``model`` holding its last
                epoch's weights; training goes on from epoch ``len(history) + 1`` exactly
                as if it had not stopped. A new state is made if omitted.

        Returns:
            The state after training (the same object as ``state`` when given).

        Raises:
            PetalnetError: The loss became NaN or infinite.
            KeyboardInterrupt: Ctrl-C before the first epoch finished.
        """
        state = TrainingState() if state is None else state
        try:
            self._loop(model, train, valid, n_classes, backbone, state)
        except KeyboardInterrupt:
            if not state.history:
                raise
            state.interrupted = True
            warnings.warn(
                f"Training interrupted after {len(state.history)} epoch(s); keeping the best "
                f"epoch ({state.best_epoch}).",
                PetalnetWarning,
                stacklevel=2,
            )
        return state

    def _loop(
        self,
        model: nn.Module,
        train: Batches,
        valid: Batches,
        n_classes: int,
        backbone: nn.Module | None,
        state: TrainingState,
    ) -> None:
        n_train, n_valid = len(train.labels), len(valid.labels)  # this rank's share
        optimizer = self._optimizer(model, backbone)
        world = distributed.world_size()
        # under torchrun every rank takes as many rows per epoch as the largest share, its
        # own order padded by wrapping (as DistributedSampler does), so ranks step together
        per_rank = distributed.all_reduce_max(n_train)
        # whether any rank validates: every rank must keep the same epoch, also where its own
        # share of a small validation split is empty
        validated = n_valid if world == 1 else int(distributed.all_reduce_sum([n_valid])[0])
        if world > 1 and not n_train:
            raise PetalnetError(
                f"A rank holds no training images (fewer readable images than the {world} "
                "ranks): run on fewer processes."
            )
        steps_per_epoch = max(1, math.ceil(per_rank / self.batch_size))
        done = len(state.history)
        if done:
            optimizer.load_state_dict(state.optimizer_state)
        scheduler = _lr_scheduler(
            optimizer,
            self.schedule,
            total_steps=self.epochs * steps_per_epoch,
            warmup_steps=self.warmup_epochs * steps_per_epoch,
            done_steps=done * steps_per_epoch,
        )
        weights = self._class_weights(train, n_classes)
        smoothing = self.label_smoothing

        def criterion(logp: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            # cross_entropy of log-probabilities is their NLL (log_softmax is idempotent)
            return nn.functional.cross_entropy(logp, y, weight=weights, label_smoothing=smoothing)

        mix = (
            torch.distributions.Beta(torch.tensor(self.mixup), torch.tensor(self.mixup))
            if self.mixup > 0
            else None
        )

        def step_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            if mix is None:
                return criterion(runner(x), y)
            lam = float(mix.sample())
            perm = torch.randperm(len(y)).to(y.device)
            logp = runner(lam * x + (1 - lam) * x[perm])
            return lam * criterion(logp, y) + (1 - lam) * criterion(logp, y[perm])

        def rank(r: EpochRecord) -> tuple[float, float]:
            """Larger is better: the monitored metric first, the other one breaks ties."""
            if not validated or self.monitor == "last":
                return (r["epoch"], 0.0)  # the last epoch wins
            if self.monitor == "valid_accuracy":
                return (r["valid_accuracy"], -r["valid_loss"])
            return (-r["valid_loss"], r["valid_accuracy"])

        state.epochs = self.epochs
        seed = distributed.broadcast_seed(self.seed) if world > 1 else self.seed
        # rows of fine-tuned layers cost far more memory per row than feature vectors
        eval_batch = 1024 if backbone is None else self.batch_size
        valid_order = torch.arange(n_valid)
        best_key: tuple[float, float] | None = None
        if done and state.best_epoch:
            best_key = rank(state.history[state.best_epoch - 1])
        best_state = copy.deepcopy(state.best_state or model.state_dict())
        runner: nn.Module = model
        average = _averaged(model, self.ema, state.average_state)
        judged = model if average is None else average.module  # validated and kept
        phase: bool | None = None  # whether the backbone part is frozen in the current epoch
        try:
            # seeds dropout masks and the batch order; a resumed run restores the RNG instead
            with seeded(seed if state.rng_state is None else 0, self.device):
                if state.rng_state is not None:
                    torch.set_rng_state(state.rng_state)
                for cb in self.callbacks:
                    cb.on_train_begin(state)
                for epoch in range(done + 1, self.epochs + 1):
                    start = time.perf_counter()
                    frozen = backbone is not None and epoch <= self.freeze_epochs
                    if frozen != phase:  # a new phase: (un)freeze, and let DDP see the change
                        phase = frozen
                        if backbone is not None:
                            backbone.requires_grad_(not frozen)
                        if world > 1:  # gradients averaged over ranks; each trains its shard
                            runner = nn.parallel.DistributedDataParallel(model)
                    model.train()
                    if frozen and backbone is not None:
                        backbone.eval()  # frozen batch-norm statistics too
                    order = torch.randperm(n_train)
                    if per_rank > n_train:  # a shorter share: padded by wrapping
                        order = order.repeat(math.ceil(per_rank / n_train))[:per_rank]
                    total, seen = 0.0, 0
                    for x, y in train.batches(order, self.batch_size, epoch):
                        optimizer.zero_grad(set_to_none=True)
                        loss = step_loss(x, y)
                        if not torch.isfinite(loss):
                            raise PetalnetError(
                                f"The training loss became {loss.item()} in epoch {epoch}; "
                                "lower learning_rate or check the data. The best weights so "
                                "far are kept."
                            )
                        loss.backward()  # type: ignore[no-untyped-call]  # untyped in torch
                        optimizer.step()
                        scheduler.step()
                        if average is not None:
                            average.update_parameters(model)
                        total += loss.item() * len(y)
                        seen += len(y)
                    valid_loss, valid_acc = evaluate_model(judged, valid, valid_order, eval_batch)
                    if world > 1:  # reduce: every rank then holds the same metrics
                        n = len(valid_order)
                        sums = distributed.all_reduce_sum(
                            [
                                total,
                                seen,
                                valid_loss * n if n else 0.0,
                                valid_acc * n if n else 0,
                                n,
                            ]
                        )
                        total, seen = sums[0], int(sums[1])
                        if sums[4]:
                            valid_loss, valid_acc = sums[2] / sums[4], sums[3] / sums[4]
                    record: EpochRecord = {
                        "epoch": epoch,
                        "train_loss": total / max(seen, 1),
                        "valid_loss": valid_loss,
                        "valid_accuracy": valid_acc,
                        "seconds": time.perf_counter() - start,
                    }
                    state.history.append(record)
                    state.last_state = copy.deepcopy(model.state_dict())
                    state.rng_state = torch.get_rng_state()
                    state.optimizer_state = copy.deepcopy(optimizer.state_dict())
                    if average is not None:
                        state.average_state = copy.deepcopy(average.state_dict())
                    key = rank(record)
                    measured = math.isfinite(valid_loss) or not validated  # none: last wins
                    if measured and (best_key is None or key > best_key):
                        best_key, state.best_epoch = key, epoch
                        best_state = copy.deepcopy(judged.state_dict())
                    for cb in self.callbacks:
                        cb.on_epoch_end(state)
                    if state.stop:
                        break
                for cb in self.callbacks:
                    cb.on_train_end(state)
        finally:  # also on an error or Ctrl-C: never lose the best weights
            model.load_state_dict(best_state)
            model.eval()
            if backbone is not None:
                backbone.requires_grad_(False)
            state.best_state = best_state
