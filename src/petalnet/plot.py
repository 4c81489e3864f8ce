"""Pictures: a prediction chart, training curves and a confusion matrix.

Install matplotlib with ``pip install 'petalnet[plot]'``. Every function draws on
matplotlib's non-interactive Agg canvas, returns the ``matplotlib.figure.Figure`` and,
given ``path``, writes a PNG there.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from petalnet.callbacks import EpochRecord
from petalnet.errors import PetalnetError
from petalnet.images import read_image, to_rgb

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from petalnet.deep_check import Duplicate
    from petalnet.results import Misclassified, Prediction, ReliabilityBin

__all__ = [
    "confusion_matrix",
    "duplicate_pairs",
    "misclassified",
    "most_confused",
    "prediction",
    "reliability",
    "training_curves",
]


def _figure(
    figsize: tuple[float, float],
    ncols: int = 1,
    width_ratios: Sequence[float] | None = None,
    nrows: int = 1,
) -> tuple[Figure, Any]:
    try:
        from matplotlib.figure import Figure
    except ModuleNotFoundError:
        raise PetalnetError("Plotting needs matplotlib: pip install 'petalnet[plot]'.") from None
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, ncols, width_ratios=width_ratios)


def _save(fig: Figure, path: str | os.PathLike[str] | None) -> None:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)


def prediction(
    image: Any,
    predictions: Sequence[Prediction],
    *,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> Figure:
    """Draw the image beside a horizontal bar chart of its top-k flower names.

    Args:
        image: A file path or ``PIL.Image``; ``None`` draws the bars alone.
        predictions: One image's predictions, as returned by ``FlowerClassifier.predict``
            (a :class:`~petalnet.TopK` marked unknown gets grey bars and says so).
        title: Title over the image; defaults to the file name or the top label.
        path: Write a PNG here.

    Returns:
        The figure.

    Raises:
        PetalnetError: matplotlib is not installed.
        ImageReadError: The image file cannot be read.
    """
    if image is None:
        fig, ax_bar = _figure((5.5, 4.2))
    else:
        pil = read_image(image) if isinstance(image, (str, os.PathLike)) else to_rgb(image)
        fig, (ax_img, ax_bar) = _figure((9.5, 4.2), ncols=2)
        ax_img.imshow(np.asarray(pil))
        ax_img.set_axis_off()
        default = Path(image).name if isinstance(image, (str, os.PathLike)) else None
        ax_img.set_title(title or default or (predictions[0].label if predictions else ""))
    labels = [p.label for p in predictions][::-1]
    probs = [p.probability for p in predictions][::-1]
    bars = ax_bar.barh(range(len(probs)), probs, color="#4c9a6a")
    ax_bar.set_yticks(range(len(labels)), labels)
    ax_bar.set_xlim(0, 1.1)
    ax_bar.set_xlabel("probability")
    unknown = bool(getattr(predictions, "unknown", False))
    ax_bar.set_title(
        f"unknown flower? closest {len(probs)} known classes"
        if unknown
        else f"top {len(probs)} predictions"
    )
    if unknown:
        for bar in bars:
            bar.set_color("#b0b0b0")
    ax_bar.bar_label(bars, labels=[f"{p:.1%}" for p in probs], padding=3)
    ax_bar.spines[["top", "right"]].set_visible(False)
    _save(fig, path)
    return fig


def training_curves(
    history: Sequence[EpochRecord],
    *,
    kept: int | None = None,
    path: str | os.PathLike[str] | None = None,
) -> Figure:
    """Plot train/valid loss and valid accuracy per epoch, the kept epoch marked.

    Args:
        history: ``FlowerClassifier.history_``.
        kept: The 1-based epoch ``fit`` kept (``best_epoch_``, whatever ``monitor`` chose);
            ``None``: the lowest validation loss, the default monitor's choice.
        path: Write a PNG here.

    Returns:
        The figure.

    Raises:
        PetalnetError: matplotlib is not installed, or the history is empty.
    """
    if not history:
        raise PetalnetError("The training history is empty: fit the classifier first.")
    fig, (ax_loss, ax_acc) = _figure((10, 4), ncols=2)
    epochs = [int(r["epoch"]) for r in history]
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_loss.plot(epochs, [r["valid_loss"] for r in history], "o-", label="valid")
    ax_loss.set(title="loss (NLL)", xlabel="epoch", ylabel="loss")
    ax_loss.legend()
    acc = [100 * r["valid_accuracy"] for r in history]
    ax_acc.plot(epochs, acc, "o-", color="#4c9a6a")
    losses = [r["valid_loss"] for r in history]
    if kept is not None:
        best = min(max(kept, 1), len(history)) - 1
    else:
        best = int(np.nanargmin(losses)) if not all(np.isnan(losses)) else len(history) - 1
    ax_acc.annotate(
        f"kept: {acc[best]:.1f}%",
        (epochs[best], acc[best]),
        textcoords="offset points",
        xytext=(8, -14),
        ha="left",
    )
    ax_acc.set(title="validation accuracy", xlabel="epoch", ylabel="accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.set_xticks(epochs if len(epochs) <= 20 else epochs[:: max(1, len(epochs) // 10)])
    _save(fig, path)
    return fig


def reliability(
    bins: Sequence[ReliabilityBin],
    *,
    ece: float | None = None,
    path: str | os.PathLike[str] | None = None,
) -> Figure:
    """Draw a reliability diagram: accuracy against confidence, and where images fall.

    Args:
        bins: ``EvaluationReport["reliability"]``.
        ece: The expected calibration error, shown in the title.
        path: Write a PNG here.

    Returns:
        The figure.

    Raises:
        PetalnetError: matplotlib is not installed.
    """
    fig, (ax, ax_n) = _figure((5.2, 6.2), nrows=2)
    full = [b for b in bins if b["count"]]
    width = (bins[0]["high"] - bins[0]["low"]) if bins else 1 / 15
    centres = [b["low"] + width / 2 for b in full]
    ax.bar(
        centres,
        [b["accuracy"] for b in full],
        width=width * 0.95,
        color="#4c9a6a",
        label="accuracy",
    )
    ax.plot([0, 1], [0, 1], "--", color="#888888", label="perfect calibration")
    ax.plot(
        centres,
        [b["confidence"] for b in full],
        "o",
        color="#c0504d",
        ms=4,
        label="mean confidence",
    )
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="top-1 probability", ylabel="accuracy")
    title = "reliability" + (f" (ECE {ece:.2%})" if ece is not None else "")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    ax_n.bar(centres, [b["count"] for b in full], width=width * 0.95, color="#7f7f7f")
    ax_n.set(xlim=(0, 1), xlabel="top-1 probability", ylabel="images", yscale="log")
    _save(fig, path)
    return fig


def most_confused(
    matrix: np.ndarray, labels: Sequence[str], top: int = 10
) -> list[tuple[str, str, int]]:
    """List the most frequent mistakes of a confusion matrix.

    Args:
        matrix: ``(C, C)`` counts, rows true classes, columns predictions.
        labels: Names of the ``C`` classes.
        top: How many pairs to return.

    Returns:
        ``(true label, predicted label, count)`` sorted by count, mistakes only.
    """
    off = np.array(matrix, dtype=np.int64, copy=True)
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None)[::-1][:top]
    pairs = [(int(i) // off.shape[1], int(i) % off.shape[1]) for i in order]
    return [(labels[t], labels[p], int(off[t, p])) for t, p in pairs if off[t, p] > 0]


def _natural(text: str) -> tuple[int, int | str]:
    """Sort key putting numeric class ids in number order, before other names."""
    return (0, int(text)) if text.isdigit() else (1, text)


def confusion_matrix(
    matrix: np.ndarray | Sequence[Sequence[int]],
    labels: Sequence[str],
    *,
    class_ids: Sequence[str] | None = None,
    top_confused: int = 10,
    path: str | os.PathLike[str] | None = None,
) -> Figure:
    """Draw a confusion matrix (row-normalised) beside the list of most-confused pairs.

    Args:
        matrix: ``(C, C)`` counts, rows true classes, columns predictions (see
            ``FlowerClassifier.evaluate``'s ``confusion_matrix``).
        labels: Names of the classes, in the matrix's order.
        class_ids: Their class folder names. Given, the classes are drawn in natural
            order (``"2"`` before ``"10"``), and beyond 40 classes the ticks show every
            few class ids instead of names.
        top_confused: Length of the most-confused list.
        path: Write a PNG here.

    Returns:
        The figure.

    Raises:
        PetalnetError: matplotlib is not installed.
    """
    m = np.asarray(matrix, dtype=np.float64)
    ids = list(class_ids) if class_ids is not None else [str(i) for i in range(len(labels))]
    order = sorted(range(len(labels)), key=lambda i: _natural(ids[i]))
    m, labels, ids = m[np.ix_(order, order)], [labels[i] for i in order], [ids[i] for i in order]
    rows = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    fig, (ax_m, ax_t) = _figure((12, 7), ncols=2, width_ratios=[2.2, 1])
    im = ax_m.imshow(norm, cmap="Greens", vmin=0, vmax=1)
    ax_m.set(title="confusion matrix (row-normalised)", xlabel="predicted", ylabel="true")
    if len(labels) <= 40:
        ax_m.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax_m.set_yticks(range(len(labels)), labels, fontsize=7)
    else:  # too many names to read: every few class ids
        step = max(1, len(ids) // 20)
        ticks = list(range(0, len(ids), step))
        ax_m.set_xticks(ticks, [ids[i] for i in ticks], rotation=90, fontsize=7)
        ax_m.set_yticks(ticks, [ids[i] for i in ticks], fontsize=7)
        ax_m.set(xlabel="predicted class", ylabel="true class")
    fig.colorbar(im, ax=ax_m, shrink=0.7, label="share of the true class")
    pairs = most_confused(m, labels, top_confused)
    ax_t.set_axis_off()
    ax_t.set_title("most confused: true → predicted", loc="left")
    text = "\n".join(f"{n:>3}x  {t} → {p}" for t, p, n in pairs) or "no mistakes"
    ax_t.text(
        0.0,
        0.98,
        text,
        va="top",
        ha="left",
        family="monospace",
        fontsize=9,
        transform=ax_t.transAxes,
    )
    _save(fig, path)
    return fig


def misclassified(
    mistakes: Sequence[Misclassified],
    names: Mapping[str, str] | None = None,
    *,
    max_images: int = 24,
    words: tuple[str, str] = ("true", "predicted"),
    path: str | os.PathLike[str] | None = None,
) -> Figure:
    """A grid of misclassified images, each titled with its true and predicted flower.

    Args:
        mistakes: ``evaluate(...)["misclassified"]`` (most confident mistake first).
        names: Class folder name to flower name; folder names are shown without it.
        max_images: Show at most this many.
        words: How the two classes are introduced (``petalnet check --deep`` draws likely
            mislabels: "filed as" and "looks like").
        path: Write a PNG here.

    Returns:
        The figure.

    Raises:
        PetalnetError: matplotlib is not installed.
    """
    shown = list(mistakes)[:max_images]
    cols = max(1, min(6, len(shown)))
    rows = max(1, -(-len(shown) // cols))
    fig, axes = _figure((2.6 * cols, 2.9 * rows), ncols=cols, nrows=rows)
    names = names or {}
    for ax in np.asarray(axes).flat:
        ax.set_axis_off()
    for ax, m in zip(np.asarray(axes).flat, shown, strict=False):
        try:
            ax.imshow(np.asarray(read_image(m["image"], draft_size=160)))
        except PetalnetError:
            continue  # a file removed since: its title still says what was wrong
        true, predicted = names.get(m["true"], m["true"]), names.get(m["predicted"], m["predicted"])
        ax.set_title(
            f"{words[0]}: {true}\n{words[1]}: {predicted} ({m['probability']:.0%})", fontsize=8
        )
    if not shown:
        fig.suptitle(f"no images ({words[0]} one class, {words[1]} another)")
    _save(fig, path)
    return fig


def duplicate_pairs(
    duplicates: Sequence[Duplicate],
    *,
    max_pairs: int = 12,
    path: str | os.PathLike[str] | None = None,
) -> Figure:
    """Copy and sibling pairs side by side, one pair per row, leaks marked.

    Args:
        duplicates: ``deep_check(...).duplicates`` (leaks first).
        max_pairs: Show at most this many.
        path: Write a PNG here.

    Returns:
        The figure.

    Raises:
        PetalnetError: matplotlib is not installed.
    """
    shown = list(duplicates)[:max_pairs]
    fig, axes = _figure((6.0, 2.8 * max(1, len(shown))), ncols=2, nrows=max(1, len(shown)))
    grid = np.asarray(axes).reshape(-1, 2)
    for ax in grid.flat:
        ax.set_axis_off()
    for (left, right), d in zip(grid, shown, strict=False):
        kind = {"exact": "exact copy", "copy": f"copy ({d.distance} bits)"}.get(
            d.kind, f"sibling (cosine {d.similarity:.3f})"
        )
        for ax, file, split in ((left, d.files[0], d.splits[0]), (right, d.files[1], d.splits[1])):
            with contextlib.suppress(PetalnetError):  # a file removed since: keep its title
                ax.imshow(np.asarray(read_image(file, draft_size=160)))
            title = f"{split}/{Path(file).parent.name}/{Path(file).name}"
            ax.set_title(
                title if ax is right else f"{'LEAK ' if d.leak else ''}{kind}\n{title}", fontsize=8
            )
    if not shown:
        fig.suptitle("no duplicates")
    _save(fig, path)
    return fig
