"""The training loop: minibatch NLLLoss + Adam, validation every epoch.

It trains the head on precomputed features (the backbone frozen), or the head together
with backbone layers being fine-tuned; keeps the weights of the best validation epoch, and
records one history row per epoch.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from petalnet import distributed
from petalnet.batches import Batches, TensorBatches
from petalnet.errors import PetalnetError

__all__ = [
    "SCHEDULES",
    "Callback",
    "EarlyStopping",
    "EpochLogger",
    "EpochRecord",
    "TrainResult",
    "evaluate_head",
    "seeded",
    "train_head",
]

EpochRecord = dict[str, float]
"""One history row: ``epoch``, ``train_loss``, ``valid_loss``, ``valid_accuracy``, ``seconds``."""


@dataclass
class TrainResult:
    """What :func:`train_head` returns.

    Attributes:
        history: One record per epoch.
        best_epoch: 1-based epoch whose weights the head now holds.
        optimizer_state: The optimizer's state dict after the last epoch.
    """

    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    optimizer_state: dict[str, Any] = field(default_factory=dict)
    epochs: int = 0
    stop: bool = False
    stop_reason: str = ""
    best_state: dict[str, torch.Tensor] | None = None
    last_state: dict[str, torch.Tensor] | None = None
    rng_state: torch.Tensor | None = None


class Callback:
    """Hooks around training; subclass and override what you need.

    ``state`` is the live :class:`TrainResult`: ``state.history[-1]`` is the epoch just
    finished, ``state.best_epoch`` the epoch kept so far. Set ``state.stop = True`` (and
    ``state.stop_reason``) in :meth:`on_epoch_end` to end training after that epoch.
    petalnet's own epoch lines and early stopping are callbacks too.
    """

    def on_train_begin(self, state: TrainResult) -> None:
        """Called once before the first epoch."""

    def on_epoch_end(self, state: TrainResult) -> None:
        """Called after each epoch's validation."""

    def on_train_end(self, state: TrainResult) -> None:
        """Called once after the last epoch (also after an early stop)."""


class EpochLogger(Callback):
    """Prints one line per epoch: losses, validation accuracy, seconds."""

    def on_epoch_end(self, state: TrainResult) -> None:
        """Print the epoch just finished."""
        r = state.history[-1]
        print(
            f"epoch {int(r['epoch'])}/{state.epochs}  train loss {r['train_loss']:.4f}  "
            f"valid loss {r['valid_loss']:.4f}  valid accuracy {r['valid_accuracy']:.2%}  "
            f"({r['seconds']:.1f}s)"
        )

    def on_train_end(self, state: TrainResult) -> None:
        """Say why training stopped early, if it did."""
        if state.stop_reason:
            print(state.stop_reason)


class EarlyStopping(Callback):
    """Stop when the validation loss has not improved for ``patience`` epochs.

    Args:
        patience: Epochs without improvement to tolerate.
        min_delta: Smallest decrease of the validation loss that counts as improvement.
    """

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self._best = float("inf")
        self._waited = 0

    def on_train_begin(self, state: TrainResult) -> None:
        """Reset the counters."""
        self._best, self._waited = float("inf"), 0

    def on_epoch_end(self, state: TrainResult) -> None:
        """Count epochs without improvement; stop after ``patience`` of them."""
        loss = state.history[-1]["valid_loss"]
        if math.isfinite(loss) and loss < self._best - self.min_delta:
            self._best, self._waited = loss, 0
            return
        self._waited += 1
        if self._waited >= self.patience:
            state.stop = True
            state.stop_reason = (
                f"early stop: no validation-loss improvement for {self.patience} epoch(s); "
                f"keeping epoch {state.best_epoch}"
            )


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


def _as_batches(data: Batches | tuple[torch.Tensor, torch.Tensor], device: torch.device) -> Batches:
    if isinstance(data, tuple):
        return TensorBatches(*data, device)
    return data


@torch.inference_mode()
def evaluate_head(
    model: nn.Module,
    data: Batches | tuple[torch.Tensor, torch.Tensor],
    order: torch.Tensor | None = None,
    batch_size: int = 1024,
) -> tuple[float, float]:
    """Return mean NLL loss and accuracy of ``model`` (in eval mode) on labelled data.

    Args:
        model: A module returning log-probabilities.
        data: A :class:`~petalnet.batches.Batches` source, or ``(features, labels)``
            on the model's device.
        order: Which rows to use (default all).
        batch_size: Rows per forward pass.

    Returns:
        ``(loss, accuracy)``; ``(nan, nan)`` when there are no rows.
    """
    source = TensorBatches(*data, data[0].device) if isinstance(data, tuple) else data
    if order is None:
        order = torch.arange(len(source.labels))
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for x, y in source.batches(order, batch_size, 1):
        logp = model(x)
        loss_sum += nn.functional.nll_loss(logp, y, reduction="sum").item()
        correct += int((logp.argmax(1) == y).sum())
        count += len(y)
    model.train(was_training)
    if not count:
        return float("nan"), float("nan")
    return loss_sum / count, correct / count


def _lr_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: str,
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


SCHEDULES = ("constant", "cosine", "onecycle")
"""Learning-rate schedules :func:`train_head` knows."""


def train_head(
    head: nn.Module,
    train: Batches | tuple[torch.Tensor, torch.Tensor],
    valid: Batches | tuple[torch.Tensor, torch.Tensor],
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    device: torch.device,
    seed: int | None = None,
    weight_decay: float = 0.0,
    label_smoothing: float = 0.0,
    schedule: str = "constant",
    warmup_epochs: int = 0,
    class_weights: torch.Tensor | None = None,
    callbacks: Sequence[Callback] = (),
    monitor: str = "valid_loss",
    result: TrainResult | None = None,
    backbone: nn.Module | None = None,
    backbone_lr_scale: float = 0.1,
    freeze_epochs: int = 0,
) -> TrainResult:
    """Train ``head`` in place with Adam; leave it holding the best epoch's weights.

    The loss is the negative log-likelihood of the head's log-probabilities (the seed's
    ``NLLLoss``), optionally with label smoothing and class weights. The best epoch is the
    one with the lowest validation loss (ties: higher accuracy), a finer and steadier signal
    than accuracy on small validation sets, where one image can swing accuracy by points;
    ``monitor="valid_accuracy"`` picks the most accurate epoch instead (ties: lower loss),
    which suits label smoothing, under which the loss flattens while accuracy still rises.
    Without validation data the last epoch is kept. The head is left in eval mode.

    For fine-tuning, ``head`` also holds backbone layers, named by ``backbone``: they learn
    at ``learning_rate * backbone_lr_scale`` (their own parameter group), and stay frozen,
    in eval mode, for the first ``freeze_epochs`` epochs.

    Args:
        head: Module returning log-probabilities, on ``device``.
        train: The data to learn from: a :class:`~petalnet.batches.Batches` source, or
            ``(features, labels)`` with ``features`` ``(N, D)``, or ``(V, N, D)`` for ``V``
            views of each image: epoch ``e`` then uses view ``(e - 1) % V`` (cached
            augmentation).
        valid: The data to validate on after every epoch (may be empty), in the same forms.
        epochs: Number of passes over ``train``.
        learning_rate: Adam's (peak) learning rate.
        batch_size: Rows per optimisation step.
        device: Where to compute.
        seed: Seed of the shuffling order and dropout (``None``: not reproducible).
        weight_decay: Decoupled weight decay (AdamW) when positive; plain Adam at 0.
        label_smoothing: Share of each target's probability spread over all classes.
        schedule: ``"constant"``, ``"cosine"`` (per step, to 0 at the end) or
            ``"onecycle"`` (torch's ``OneCycleLR``: up to the learning rate, then down to
            nearly 0, momentum cycling the other way).
        warmup_epochs: Linear warm-up from 0 to ``learning_rate`` over these epochs (for
            ``"onecycle"``: the rising part; 30 % of the steps when 0).
        class_weights: ``(C,)`` loss weight per class, e.g. for imbalanced data.
        callbacks: Hooks called at the start, after each epoch and at the end.
        monitor: ``"valid_loss"`` or ``"valid_accuracy"``: what picks the best epoch.
        result: Filled in as training goes, so a caller keeps the history of an
            interrupted run; a new one is made if omitted. To **resume**, pass one holding
            the earlier ``history``, ``best_epoch``, ``best_state``, ``optimizer_state`` and
            ``rng_state``, with ``head`` holding the last epoch's weights: training goes on
            from epoch ``len(history) + 1`` exactly as if it had not stopped.
        backbone: The backbone layers inside ``head`` to fine-tune, if any.
        backbone_lr_scale: Their learning rate relative to ``learning_rate``.
        freeze_epochs: Epochs at the start during which ``backbone`` stays frozen.

    Returns:
        The history, best epoch, optimizer state, and what a later resume needs
        (``best_state``, ``last_state``, ``rng_state``).

    Raises:
        PetalnetError: The loss became NaN or infinite, or ``schedule`` is unknown.
    """
    if monitor not in ("valid_loss", "valid_accuracy"):
        raise PetalnetError(f"monitor must be 'valid_loss' or 'valid_accuracy', got {monitor!r}.")
    if schedule not in SCHEDULES:
        raise PetalnetError(f"schedule must be one of {', '.join(SCHEDULES)}; got {schedule!r}.")
    train_data, valid_data = _as_batches(train, device), _as_batches(valid, device)
    n_train, n_valid = len(train_data.labels), len(valid_data.labels)
    tuned = {id(p) for p in backbone.parameters()} if backbone is not None else set()
    groups: list[dict[str, Any]] = [
        {"params": [p for p in head.parameters() if id(p) not in tuned], "lr": learning_rate}
    ]
    if backbone is not None:
        groups.append(
            {"params": list(backbone.parameters()), "lr": learning_rate * backbone_lr_scale}
        )
    if weight_decay > 0:
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(
            groups, lr=learning_rate, weight_decay=weight_decay
        )
    else:
        optimizer = torch.optim.Adam(groups, lr=learning_rate)
    world, me = distributed.world_size(), distributed.rank()
    steps_per_epoch = max(1, math.ceil(math.ceil(n_train / world) / batch_size))

    result = TrainResult() if result is None else result
    done = len(result.history)
    if done:
        optimizer.load_state_dict(result.optimizer_state)
    scheduler = _lr_scheduler(
        optimizer,
        schedule,
        total_steps=epochs * steps_per_epoch,
        warmup_steps=warmup_epochs * steps_per_epoch,
        done_steps=done * steps_per_epoch,
    )
    weights = class_weights.to(device) if class_weights is not None else None

    def criterion(logp: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # cross_entropy of log-probabilities is their NLL (log_softmax is idempotent on them)
        return nn.functional.cross_entropy(logp, y, weight=weights, label_smoothing=label_smoothing)

    result.epochs = epochs

    def rank(r: EpochRecord) -> tuple[float, float]:
        """Larger is better: the monitored metric first, the other one breaks ties."""
        if not n_valid:
            return (r["epoch"], 0.0)  # no validation data: the last epoch wins
        if monitor == "valid_accuracy":
            return (r["valid_accuracy"], -r["valid_loss"])
        return (-r["valid_loss"], r["valid_accuracy"])

    if world > 1:
        seed = distributed.broadcast_seed(seed)
    # rows of fine-tuned layers cost far more memory per row than feature vectors
    eval_batch = 1024 if backbone is None else batch_size
    valid_order = torch.arange(n_valid)[me::world]

    best_key: tuple[float, float] | None = None
    if done and result.best_epoch:
        best_key = rank(result.history[result.best_epoch - 1])
    best_state = copy.deepcopy(result.best_state or head.state_dict())
    model: nn.Module = head
    phase: bool | None = None  # whether the backbone part is frozen in the current epoch
    try:
        # seeds dropout masks and the batch order; a resumed run restores the RNG instead
        with seeded(seed if result.rng_state is None else 0, device):
            if result.rng_state is not None:
                torch.set_rng_state(result.rng_state)
            for cb in callbacks:
                cb.on_train_begin(result)
            for epoch in range(done + 1, epochs + 1):
                start = time.perf_counter()
                frozen = backbone is not None and epoch <= freeze_epochs
                if frozen != phase:  # a new phase: (un)freeze, and let DDP see the change
                    phase = frozen
                    if backbone is not None:
                        backbone.requires_grad_(not frozen)
                    if world > 1:  # gradients averaged over ranks; each trains on its shard
                        model = nn.parallel.DistributedDataParallel(head)
                head.train()
                if frozen and backbone is not None:
                    backbone.eval()  # frozen batch-norm statistics too
                order = torch.randperm(n_train)
                if world > 1:  # equal-length shards (padded by wrapping), as DistributedSampler
                    order = torch.cat([order, order[: (-len(order)) % world]])[me::world]
                total, seen = 0.0, 0
                for x, y in train_data.batches(order, batch_size, epoch):
                    optimizer.zero_grad(set_to_none=True)
                    loss = criterion(model(x), y)
                    if not torch.isfinite(loss):
                        raise PetalnetError(
                            f"The training loss became {loss.item()} in epoch {epoch}; lower "
                            "learning_rate or check the data. The best weights so far are kept."
                        )
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    total += loss.item() * len(y)
                    seen += len(y)
                valid_loss, valid_acc = evaluate_head(head, valid_data, valid_order, eval_batch)
                if world > 1:  # reduce: every rank then holds the same metrics
                    n = len(valid_order)
                    sums = distributed.all_reduce_sum(
                        [total, seen, valid_loss * n if n else 0.0, valid_acc * n if n else 0.0, n],
                        device,
                    )
                    total, seen = sums[0], int(sums[1])
                    valid_loss, valid_acc = (
                        (sums[2] / sums[4], sums[3] / sums[4])
                        if sums[4]
                        else (valid_loss, valid_acc)
                    )
                record: EpochRecord = {
                    "epoch": float(epoch),
                    "train_loss": total / max(seen, 1),
                    "valid_loss": valid_loss,
                    "valid_accuracy": valid_acc,
                    "seconds": time.perf_counter() - start,
                }
                result.history.append(record)
                result.last_state = copy.deepcopy(head.state_dict())
                result.rng_state = torch.get_rng_state()
                key = rank(record)
                if math.isfinite(valid_loss) and (best_key is None or key > best_key):
                    best_key, result.best_epoch = key, epoch
                    best_state = copy.deepcopy(head.state_dict())
                for cb in callbacks:
                    cb.on_epoch_end(result)
                if result.stop:
                    break
            for cb in callbacks:
                cb.on_train_end(result)
    finally:  # also on an error or Ctrl-C: never lose the best weights
        head.load_state_dict(best_state)
        head.eval()
        if backbone is not None:
            backbone.requires_grad_(False)
        result.best_state = best_state
        result.optimizer_state = optimizer.state_dict()
    return result
