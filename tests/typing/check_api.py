"""The types users see, pinned: checked by mypy (``mypy``, run by .ci/run), never executed.

Each block is an example from README.md or docs/index.md; ``assert_type`` fails the type
check when petalnet's annotations drift from what the docs promise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from typing_extensions import assert_type

import petalnet
from petalnet import (
    Callback,
    EpochRecord,
    EvaluationReport,
    FeatureExtractor,
    FlowerClassifier,
    ImagePrediction,
    Prediction,
    TopK,
    TrainingState,
)
from petalnet.backbones import WeightsArg


def readme_quickstart() -> None:
    clf = FlowerClassifier(backbone="efficientnet_lite0", epochs=10)
    assert_type(clf.fit("flowers/"), FlowerClassifier)
    report = clf.evaluate("flowers/")
    assert_type(report, EvaluationReport)
    assert_type(report["accuracy"], float)
    assert_type(report["top5_accuracy"], float)
    assert_type(report["per_class_accuracy"], dict[str, float])
    for p in clf.predict("rose.jpg", topk=5):
        assert_type(p, Prediction)
        assert_type(p.label, str)
        assert_type(p.probability, float)
    assert_type(clf.save("flowers.pt"), Path)
    assert_type(FlowerClassifier.load("flowers.pt", device="cpu"), FlowerClassifier)


def docs_index_examples(pil_image: Image.Image) -> None:
    clf = FlowerClassifier(backbone="efficientnet_lite0", hidden_units=512, dropout=0.2)
    clf.fit("flowers/")
    assert_type(clf.history_, list[EpochRecord])
    assert_type(clf.history_[0]["valid_accuracy"], float)
    assert_type(clf.best_epoch_, int)
    assert_type(clf.classes_, list[str])
    assert_type(clf.category_names_, dict[str, str] | None)
    assert_type(clf.backbone_, FeatureExtractor)
    assert_type(clf.device_, torch.device)
    top = clf.predict("photo.jpg", topk=5)
    assert_type(top, TopK)
    assert_type(top[0], Prediction)
    assert_type(top[0].label, str)  # no cast needed for one image
    assert_type(top.unknown, bool)
    assert_type(top.novelty, float)
    batch = clf.predict(["a.jpg", "b.jpg"])
    assert_type(batch, list[TopK])
    assert_type(clf.predict(Path("a.jpg")), TopK)
    assert_type(clf.predict(pil_image), TopK)
    assert_type(clf.predict(np.zeros((8, 8, 3), np.uint8)), TopK)
    assert_type(clf.novelty_score(pil_image), np.ndarray)
    assert_type(clf.predict_proba(pil_image), np.ndarray)
    for result in clf.iter_predictions(["a.jpg", "b.jpg"], topk=3):
        assert_type(result, ImagePrediction)
        assert_type(result.error, str | None)
        assert_type(result.unknown, bool)
    assert_type(clf.get_params(), dict[str, Any])
    assert_type(clf.set_params(epochs=3), FlowerClassifier)


class MyCallback(Callback):
    def on_epoch_end(self, state: TrainingState) -> None:
        assert_type(state.history[-1], EpochRecord)
        assert_type(state.best_epoch, int)
        state.stop = state.history[-1]["valid_accuracy"] > 0.99


def registry_examples() -> None:
    assert_type(petalnet.list_backbones("vgg*"), list[str])
    fx = petalnet.build_backbone("resnet50", weights="IMAGENET1K_V2")
    assert_type(fx, FeatureExtractor)
    assert_type(fx.feature_dim, int)
    assert_type(fx.preprocessing, petalnet.Preprocessing)
    builder = petalnet.get_backbone("vgg16")
    assert_type(builder(weights=None), FeatureExtractor)

    @petalnet.register_backbone("tiny_cnn")
    def tiny_cnn(weights: WeightsArg = "DEFAULT") -> FeatureExtractor:
        return petalnet.build_backbone("vgg11", weights=weights)

    assert_type(tiny_cnn(None), FeatureExtractor)  # the decorator keeps the builder's type
