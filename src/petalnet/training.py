"""The training loop of the head: minibatch NLLLoss + Adam, validation every epoch.

It trains on precomputed features (the backbone is frozen), keeps the weights of the best
validation epoch, and records one history row per epoch.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from petalnet.errors import PetalnetError

__all__ = ["EpochRecord", "TrainResult", "evaluate_head", "seeded", "train_head"]

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
def evaluate_head(
    head: nn.Module, features: torch.Tensor, labels: torch.Tensor, batch_size: int = 1024
) -> tuple[float, float]:
    """Return mean NLL loss and accuracy of ``head`` (in eval mode) on features.

    Args:
        head: A module returning log-probabilities.
        features: ``(N, D)`` on the head's device.
        labels: ``(N,)`` class indices on the same device.
        batch_size: Rows per forward pass.

    Returns:
        ``(loss, accuracy)``; ``(nan, nan)`` when there are no rows.
    """
    if len(labels) == 0:
        return float("nan"), float("nan")
    was_training = head.training
    head.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(labels), batch_size):
        logp = head(features[i : i + batch_size])
        y = labels[i : i + batch_size]
        loss_sum += nn.functional.nll_loss(logp, y, reduction="sum").item()
        correct += int((logp.argmax(1) == y).sum())
    head.train(was_training)
    return loss_sum / len(labels), correct / len(labels)


def train_head(
    head: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    valid: tuple[torch.Tensor, torch.Tensor],
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    device: torch.device,
    seed: int | None = None,
    verbose: int = 1,
    result: TrainResult | None = None,
) -> TrainResult:
    """Train ``head`` in place with NLLLoss and Adam; leave it holding the best epoch's weights.

    The head is left in eval mode.

    The best epoch is the one with the lowest validation loss (ties: higher accuracy), a
    finer and steadier signal than accuracy on small validation sets, where one image can
    swing accuracy by points. Without validation data the last epoch is kept.

    Args:
        head: Module returning log-probabilities, on ``device``.
        train: ``(features, labels)`` to learn from. ``features`` is ``(N, D)``, or
            ``(V, N, D)`` for ``V`` views of each image: epoch ``e`` then uses view
            ``(e - 1) % V`` (cached augmentation).
        valid: ``(features, labels)`` to validate on after every epoch (may be empty).
        epochs: Number of passes over ``train``.
        learning_rate: Adam's learning rate.
        batch_size: Rows per optimisation step.
        device: Where to compute.
        seed: Seed of the shuffling order (``None``: not reproducible).
        verbose: ``1`` prints one line per epoch; ``0`` is silent.
        result: Filled in as training goes, so a caller keeps the history of an
            interrupted run; a new one is made if omitted.

    Returns:
        The history, best epoch and optimizer state.

    Raises:
        PetalnetError: The loss became NaN or infinite.
    """
    x_tr, y_tr = (t.to(device) for t in train)
    x_va, y_va = (t.to(device) for t in valid)
    optimizer = torch.optim.Adam(head.parameters(), lr=learning_rate)
    criterion = nn.NLLLoss()
    result = TrainResult() if result is None else result
    best_key: tuple[float, float] | None = None  # larger is better
    best_state = copy.deepcopy(head.state_dict())
    try:
        with seeded(seed, device):  # seeds dropout masks and the batch order
            for epoch in range(1, epochs + 1):
                start = time.perf_counter()
                head.train()
                x_epoch = x_tr[(epoch - 1) % len(x_tr)] if x_tr.ndim == 3 else x_tr
                order = torch.randperm(len(y_tr)).to(device)
                total = 0.0
                for i in range(0, len(order), batch_size):
                    idx = order[i : i + batch_size]
                    optimizer.zero_grad(set_to_none=True)
                    loss = criterion(head(x_epoch[idx]), y_tr[idx])
                    if not torch.isfinite(loss):
                        raise PetalnetError(
                            f"The training loss became {loss.item()} in epoch {epoch}; lower "
                            "learning_rate or check the data. The best weights so far are kept."
                        )
                    loss.backward()
                    optimizer.step()
                    total += loss.item() * len(idx)
                valid_loss, valid_acc = evaluate_head(head, x_va, y_va)
                record: EpochRecord = {
                    "epoch": float(epoch),
                    "train_loss": total / max(len(y_tr), 1),
                    "valid_loss": valid_loss,
                    "valid_accuracy": valid_acc,
                    "seconds": time.perf_counter() - start,
                }
                result.history.append(record)
                key = (-valid_loss, valid_acc) if len(y_va) else (float(epoch), 0.0)
                if best_key is None or key > best_key:
                    best_key, result.best_epoch = key, epoch
                    best_state = copy.deepcopy(head.state_dict())
                if verbose > 0:
                    print(
                        f"epoch {epoch}/{epochs}  train loss {record['train_loss']:.4f}  "
                        f"valid loss {valid_loss:.4f}  valid accuracy {valid_acc:.2%}  "
                        f"({record['seconds']:.1f}s)"
                    )
    finally:  # also on an error or Ctrl-C: never lose the best weights
        head.load_state_dict(best_state)
        head.eval()
        result.optimizer_state = optimizer.state_dict()
    return result
