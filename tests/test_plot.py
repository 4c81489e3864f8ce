"""Plots render to PNG files with a non-interactive backend."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from petalnet import PetalnetError, Prediction, plot

PNG = b"\x89PNG\r\n\x1a\n"


def test_prediction_chart(flowers_root, tmp_path):
    preds = [Prediction(f"flower {i}", str(i), p, i) for i, p in enumerate([0.7, 0.2, 0.1])]
    image = flowers_root / "test" / "1" / "img_000.jpg"
    fig = plot.prediction(image, preds, path=tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == PNG
    bar_axes = fig.axes[1]
    assert [t.get_text() for t in bar_axes.get_yticklabels()] == [
        "flower 2",
        "flower 1",
        "flower 0",
    ]
    assert fig.axes[0].get_title() == "img_000.jpg"


def test_training_curves(fitted, tmp_path):
    fig = plot.training_curves(fitted.history_, path=tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG
    assert len(fig.axes[0].lines) == 2  # train and valid loss
    with pytest.raises(PetalnetError, match="empty"):
        plot.training_curves([])


def test_confusion_matrix_and_most_confused(tmp_path):
    m = np.array([[5, 2, 0], [0, 4, 3], [1, 0, 6]])
    pairs = plot.most_confused(m, ["a", "b", "c"], top=2)
    assert pairs == [("b", "c", 3), ("a", "b", 2)]
    plot.confusion_matrix(m, ["a", "b", "c"], path=tmp_path / "m.png")
    assert (tmp_path / "m.png").read_bytes()[:8] == PNG
    assert plot.most_confused(np.eye(3, dtype=int), ["a", "b", "c"]) == []


def test_evaluate_gives_a_confusion_matrix(fitted, flowers_root):
    report = fitted.evaluate(flowers_root)
    m = np.array(report["confusion_matrix"])
    assert m.shape == (12, 12) and m.sum() == 24
    assert np.trace(m) / m.sum() == pytest.approx(report["accuracy"])
