"""Typed results: top-k predictions and evaluation metrics, on hand-checked numbers."""

from __future__ import annotations

import importlib
import json
import math

import pytest
import torch

from petalnet.results import Prediction, evaluation_report, top_predictions

CLASSES = ["1", "10", "2"]


def _log_probs(*rows):
    return torch.tensor(rows, dtype=torch.float32).log()


def test_top_predictions_sorted_named_and_capped():
    preds = top_predictions(_log_probs([0.2, 0.5, 0.3]), 2, CLASSES, {"10": "daisy"})
    assert preds == [
        [
            Prediction("daisy", "10", pytest.approx(0.5), 1),
            Prediction("2", "2", pytest.approx(0.3), 2),  # no name: the folder name
        ]
    ]
    assert len(top_predictions(_log_probs([0.2, 0.5, 0.3]), 99, CLASSES, None)[0]) == 3
    assert preds[0][0].to_dict() == {
        "label": "daisy",
        "class_id": "10",
        "probability": pytest.approx(0.5),
        "index": 1,
    }


def test_evaluation_report_numbers():
    log_probs = _log_probs([0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.1, 0.8, 0.1], [0.5, 0.3, 0.2])
    labels = torch.tensor([0, 1, 1, 2])
    images = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    report = evaluation_report(log_probs, labels, CLASSES, "f", ["bad"], images)
    assert report["accuracy"] == 0.5  # images 0 and 2
    assert report["top5_accuracy"] == 1.0  # three classes: always in the top 5
    expected_loss = -(math.log(0.7) + math.log(0.3) + math.log(0.8) + math.log(0.2)) / 4
    assert report["loss"] == pytest.approx(expected_loss, rel=1e-6)
    assert report["per_class_accuracy"] == {"1": 1.0, "10": 0.5, "2": 0.0}
    assert report["per_class_count"] == {"1": 1, "10": 2, "2": 1}
    assert report["confusion_matrix"] == [[1, 0, 0], [0, 1, 1], [1, 0, 0]]
    assert (report["folder"], report["n_images"], report["n_skipped"]) == ("f", 4, 1)
    assert report["misclassified"] == [  # most confident mistake first
        {"image": "b.jpg", "true": "10", "predicted": "2", "probability": pytest.approx(0.6)},
        {"image": "d.jpg", "true": "2", "predicted": "1", "probability": pytest.approx(0.5)},
    ]


def test_evaluation_report_without_images():
    report = evaluation_report(torch.empty(0, 3), torch.empty(0, dtype=torch.long), CLASSES)
    assert math.isnan(report["accuracy"]) and report["n_images"] == 0
    assert report["confusion_matrix"] == [[0] * 3] * 3


def test_short_reprs_and_notebook_tables(fitted, flowers_root):
    top = fitted.predict(flowers_root / "test" / "1" / "img_000.jpg", topk=3)
    text = repr(top)
    assert text.startswith("TopK([") and len(text) < 200 and "%" in text
    assert repr(top[0]).startswith(f"Prediction({top[0].label!r}, ")
    assert "<table>" in top._repr_html_() and top[0].label in top._repr_html_()
    report = fitted.evaluate(flowers_root)
    assert (
        isinstance(report, dict)
        and json.loads(json.dumps(report))["accuracy"] == report["accuracy"]
    )
    short = repr(report)
    assert short.startswith("EvaluationReport(accuracy=") and "reliability" not in short
    assert len(short) < 300
    assert "<table>" in report._repr_html_() and "hardest classes" in report._repr_html_()
    html = fitted._repr_html_()
    assert "kept epoch" in html and "classes" in html
    assert "not fitted" in type(fitted)()._repr_html_()


@pytest.mark.parametrize("widgets", [False, True])
def test_progress_bars_use_widgets_only_where_there_are_some(monkeypatch, widgets):
    from petalnet import _progress

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: (
            (real("tqdm") if widgets else None) if name == "ipywidgets" else real(name)
        ),
    )
    try:
        bar = importlib.reload(_progress).tqdm
        # without ipywidgets tqdm.auto warns "IProgress not found" in a notebook: text bars
        assert bar.__module__ == ("tqdm.asyncio" if widgets else "tqdm.std")
    finally:
        monkeypatch.undo()
        importlib.reload(_progress)
