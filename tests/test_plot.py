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


def test_results_draw_themselves(fitted, flowers_root, tmp_path):
    image = flowers_root / "test" / "1" / "img_000.jpg"
    top = fitted.predict(image, topk=3)
    fig = top.plot(path=tmp_path / "top.png")
    assert (tmp_path / "top.png").read_bytes()[:8] == PNG
    assert fig.axes[0].get_title() == "img_000.jpg"  # the photo predicted on, beside its bars
    assert len(fitted.predict(np.zeros((40, 48, 3), np.uint8)).plot().axes) == 1  # bars alone
    report = fitted.evaluate(flowers_root)
    names = fitted.category_names_
    matrix = report.plot_confusion()
    assert names["1"] in [t.get_text() for t in matrix.axes[0].get_yticklabels()]
    assert report.plot_reliability().axes and report.plot_misclassified().axes
    curves = fitted.plot_history(path=tmp_path / "h.png")
    assert len(curves.axes[0].lines) == 2 and (tmp_path / "h.png").is_file()
