"""The new classifier trained on top of a backbone's features."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["build_head", "normalize_hidden_units"]


def normalize_hidden_units(hidden_units: int | Sequence[int] | None) -> list[int]:
    """Return ``hidden_units`` as a list of positive layer widths (empty: a linear head).

    Args:
        hidden_units: One width, several, or ``None``/``0``/``[]`` for no hidden layer.

    Returns:
        The widths.

    Raises:
        ValueError: A width is not a positive integer.
    """
    if hidden_units is None or hidden_units == 0:
        return []
    widths = [hidden_units] if isinstance(hidden_units, int) else list(hidden_units)
    if not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
        raise ValueError(f"hidden_units must be positive integers, got {hidden_units!r}.")
    return widths


def build_head(
    in_features: int, num_classes: int, hidden_units: Sequence[int], dropout: float
) -> nn.Sequential:
    """Build the classic recipe's classifier: ``[Linear, ReLU, Dropout] * k, Linear, LogSoftmax``.

    Args:
        in_features: Length of the backbone's feature vector.
        num_classes: Number of outputs.
        hidden_units: Width of each hidden layer (empty for a linear classifier).
        dropout: Dropout probability after every hidden layer (on the input features
            when there is no hidden layer).

    Returns:
        The head; it outputs log-probabilities, to be trained with ``NLLLoss``.
    """
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden_units:
        layers += [nn.Linear(width, h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        width = h
    if not hidden_units and dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers += [nn.Linear(width, num_classes), nn.LogSoftmax(dim=1)]
    return nn.Sequential(*layers)
