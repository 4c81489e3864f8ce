"""The live training state, and the callbacks that watch it (epoch lines, early stopping, yours).

Subclass :class:`Callback` and pass instances as ``FlowerClassifier(callbacks=[...])``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:  # annotations only: importing the callbacks stays free of torch
    import torch

__all__ = ["Callback", "EarlyStopping", "EpochLogger", "EpochRecord", "TrainingState"]


class EpochRecord(TypedDict):
    """One row of the training history, one per epoch."""

    epoch: int
    """1-based epoch number."""
    train_loss: float
    """Mean training loss of the epoch (with label smoothing and class weights, if set)."""
    valid_loss: float
    """Mean negative log-likelihood on the validation images (``nan`` without any)."""
    valid_accuracy: float
    """Top-1 accuracy on the validation images, centre crop (``nan`` without any)."""
    seconds: float
    """Wall-clock time of the epoch, validation included."""


@dataclass
class TrainingState:
    """The state of a training run as it goes: what callbacks see and resume restores.

    Attributes:
        epochs: Epochs planned for the whole run.
        history: One :class:`EpochRecord` per finished epoch.
        best_epoch: 1-based epoch whose weights are kept so far (0 before the first).
        best_state: Parameters of the trained model (head, and fine-tuned backbone layers
            before it) at ``best_epoch``.
        last_state: The same parameters after the last finished epoch (what a resumed run
            continues from).
        optimizer_state: The optimizer's state dict after the last finished epoch.
        average_state: With ``ema``: the averaged model's state (its parameters and
            buffers, and the number of updates) after the last finished epoch.
        rng_state: torch's CPU random state after the last finished epoch, so a resumed
            run shuffles and drops out exactly as an uninterrupted one would.
        stop: Set to ``True`` by a callback in :meth:`Callback.on_epoch_end` to end training
            after that epoch.
        stop_reason: Why it stopped early, printed by :class:`EpochLogger`.
        interrupted: Training was stopped by Ctrl-C (``KeyboardInterrupt``); the best epoch
            so far is kept.
    """

    epochs: int = 0
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    last_state: dict[str, torch.Tensor] | None = None
    optimizer_state: dict[str, Any] = field(default_factory=dict)
    average_state: dict[str, torch.Tensor] | None = None
    rng_state: torch.Tensor | None = None
    stop: bool = False
    stop_reason: str = ""
    interrupted: bool = False


class Callback:
    """Hooks around training; subclass and override what you need.

    ``state`` is the live :class:`TrainingState`: ``state.history[-1]`` is the epoch just
    finished, ``state.best_epoch`` the epoch kept so far. Set ``state.stop = True`` (and
    ``state.stop_reason``) in :meth:`on_epoch_end` to end training after that epoch.
    petalnet's own epoch lines and early stopping are callbacks too.
    """

    def on_train_begin(self, state: TrainingState) -> None:
        """Called once before the first epoch."""

    def on_epoch_end(self, state: TrainingState) -> None:
        """Called after each epoch's validation."""

    def on_train_end(self, state: TrainingState) -> None:
        """Called once after the last epoch (also after an early stop)."""


class EpochLogger(Callback):
    """Prints one line per epoch: losses, validation accuracy, seconds.

    Args:
        accuracy_note: Said after the accuracy, e.g. which view of the images it is of.
    """

    def __init__(self, accuracy_note: str = "") -> None:
        self.accuracy_note = f" ({accuracy_note})" if accuracy_note else ""

    def on_epoch_end(self, state: TrainingState) -> None:
        """Print the epoch just finished."""
        r = state.history[-1]
        if math.isnan(r["valid_loss"]):  # a refit on every labelled image: nothing to score
            valid = "no validation images (refit on every labelled image)"
        else:
            valid = (
                f"valid loss {r['valid_loss']:.4f}  valid accuracy {r['valid_accuracy']:.2%}"
                f"{self.accuracy_note}"
            )
        print(
            f"epoch {int(r['epoch'])}/{state.epochs}  train loss {r['train_loss']:.4f}  "
            f"{valid}  ({r['seconds']:.1f}s)"
        )

    def on_train_end(self, state: TrainingState) -> None:
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

    def on_train_begin(self, state: TrainingState) -> None:
        """Set the counters from the epochs already run (none, or those of a resumed run)."""
        self._best, self._waited = float("inf"), 0
        for record in state.history:  # a resumed run counts as the uninterrupted one did
            self._count(record["valid_loss"])

    def _count(self, loss: float) -> None:
        if math.isfinite(loss) and loss < self._best - self.min_delta:
            self._best, self._waited = loss, 0
        else:
            self._waited += 1

    def on_epoch_end(self, state: TrainingState) -> None:
        """Count epochs without improvement; stop after ``patience`` of them."""
        self._count(state.history[-1]["valid_loss"])
        if self._waited >= self.patience:
            state.stop = True
            state.stop_reason = (
                f"early stop: no validation-loss improvement for {self.patience} epoch(s); "
                f"keeping epoch {state.best_epoch}"
            )
