"""FlowerClassifier: fit, evaluate, predict, save/load, not-fitted errors."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import petalnet
from conftest import CLASS_NAMES, draw_flower
from petalnet import FlowerClassifier, NotFittedError, Prediction

FAST = dict(hidden_units=32, epochs=15, learning_rate=0.01, batch_size=16, device="cpu", verbose=0)


def test_constructor_only_stores_parameters():
    clf = FlowerClassifier()
    assert clf.backbone == "vgg16" and clf.weights == "DEFAULT"
    assert clf.get_params()["hidden_units"] == 512
    assert not any(k.endswith("_") for k in vars(clf))
    assert (
        repr(FlowerClassifier("resnet18", epochs=3))
        == "FlowerClassifier(backbone='resnet18', epochs=3)"
    )


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("predict", ("x.jpg",)),
        ("predict_proba", ("x.jpg",)),
        ("evaluate", ("d",)),
        ("save", ("m.pt",)),
    ],
)
def test_not_fitted_error_says_what_to_do(method, args):
    with pytest.raises(NotFittedError, match=r"call fit\(data_dir\) first.*load"):
        getattr(FlowerClassifier(), method)(*args)


def test_fit_sets_fitted_attributes(fitted, flowers_root):
    assert fitted.classes_ == sorted(CLASS_NAMES)  # string order, like ImageFolder
    assert fitted.class_to_idx_["10"] == 1
    assert fitted.category_names_ == CLASS_NAMES  # picked up from the root
    assert len(fitted.history_) == 15
    assert set(fitted.history_[0]) == {
        "epoch",
        "train_loss",
        "valid_loss",
        "valid_accuracy",
        "seconds",
    }
    assert fitted.n_train_ == 72 and fitted.n_valid_ == 24
    best = min(fitted.history_, key=lambda r: (r["valid_loss"], -r["valid_accuracy"]))
    assert fitted.best_epoch_ == best["epoch"]
    assert fitted.history_[-1]["train_loss"] < fitted.history_[0]["train_loss"]
    # the frozen backbone did not change, only the head learned
    assert not any(p.requires_grad for p in fitted.backbone_.parameters())
    assert not fitted.head_.training  # ready to predict: dropout off


def test_fit_keeps_the_best_epoch_weights(fitted, flowers_root):
    best = fitted.history_[fitted.best_epoch_ - 1]
    calibration = fitted.model_.calibration
    raw = copy.copy(fitted)  # the same model, without the temperature fitted after training
    raw.model_ = dataclasses.replace(
        fitted.model_, calibration=dataclasses.replace(calibration, temperature=1.0)
    )
    report = raw.evaluate(flowers_root / "valid")
    assert report["accuracy"] == pytest.approx(best["valid_accuracy"])
    assert report["loss"] == pytest.approx(best["valid_loss"], rel=1e-4)
    # the temperature was fitted on this split: it can only lower the loss there
    calibrated = fitted.evaluate(flowers_root / "valid")
    assert calibrated["accuracy"] == report["accuracy"]
    assert calibrated["loss"] <= report["loss"] + 1e-6
    assert calibration.metrics["nll"] == pytest.approx(calibrated["loss"], rel=1e-4)


def test_evaluate_report(fitted, flowers_root):
    report = fitted.evaluate(flowers_root)  # uses test/
    assert report["folder"].endswith("test") and report["n_images"] == 24
    assert report["accuracy"] >= 0.9
    assert report["top5_accuracy"] >= report["accuracy"]
    assert set(report["per_class_accuracy"]) == set(CLASS_NAMES)
    assert all(v == 2 for v in report["per_class_count"].values())
    assert report["loss"] > 0


def test_numeric_class_names_map_back_to_folder_and_name(fitted, flowers_root):
    for label in ("1", "2", "10", "12"):
        top = fitted.predict(flowers_root / "test" / label / "img_000.jpg", topk=3)
        assert top[0].class_id == label
        assert top[0].label == f"flower number {label}"
        assert fitted.classes_[top[0].index] == label


def test_predict_inputs_agree(fitted, flowers_root):
    path = flowers_root / "test" / "7" / "img_001.jpg"
    image = Image.open(path).convert("RGB")
    array = np.array(image)
    chw_uint8 = torch.from_numpy(array).permute(2, 0, 1)
    chw_float = chw_uint8.float() / 255
    results = [
        fitted.predict(x, topk=5) for x in (path, str(path), image, array, chw_uint8, chw_float)
    ]
    for top in results:
        assert len(top) == 5 and all(isinstance(p, Prediction) for p in top)
        probs = [p.probability for p in top]
        assert probs == sorted(probs, reverse=True)
        assert top[0].class_id == "7"
        # float input skips uint8 rounding in the resize, hence a small tolerance
        assert top[0].probability == pytest.approx(results[0][0].probability, abs=1e-3)


def test_predict_a_batch(fitted, flowers_root):
    paths = [flowers_root / "test" / c / "img_000.jpg" for c in ("3", "11", "5")]
    batch = fitted.predict(paths, topk=2)
    assert [top[0].class_id for top in batch] == ["3", "11", "5"]
    assert all(len(top) == 2 for top in batch)
    tensor_batch = torch.stack(
        [torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1) for p in paths]
    )
    assert [t[0].class_id for t in fitted.predict(tensor_batch)] == ["3", "11", "5"]
    proba = fitted.predict_proba(paths)
    assert proba.shape == (3, 12)
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-5)
    assert fitted.predict([], topk=3) == []
    assert len(fitted.predict(paths[0], topk=100)) == 12  # capped at the number of classes


def test_predict_bad_input(fitted, tmp_path):
    with pytest.raises(petalnet.ImageReadError, match="nothing.jpg"):
        fitted.predict(tmp_path / "nothing.jpg")
    with pytest.raises(TypeError, match="Cannot predict on int"):
        fitted.predict(42)
    with pytest.raises(ValueError, match="topk"):
        fitted.predict(np.zeros((8, 8, 3), np.uint8), topk=0)


def test_single_folder_and_explicit_category_names(single_folder):
    names = {"1": "rose", "2": "tulip"}  # others fall back to the folder name
    clf = FlowerClassifier(
        "tiny_test", category_names=names, random_state=1, split="stratified", **FAST
    )
    assert clf.fit(single_folder) is clf
    assert clf.n_valid_ == 5 and clf.n_train_ == 25
    top = clf.predict(single_folder / "2" / "img_000.jpg", topk=5)
    labels = {p.class_id: p.label for p in top}
    assert labels["2"] == "tulip" and labels["1"] == "rose" and labels["3"] == "3"


def test_random_state_makes_runs_repeatable(single_folder):
    a = FlowerClassifier("tiny_test", random_state=5, **FAST).fit(single_folder)
    b = FlowerClassifier("tiny_test", random_state=5, **FAST).fit(single_folder)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(a.history_) == strip(b.history_)


def test_bad_parameters_are_rejected(single_folder):
    with pytest.raises(ValueError, match="dropout"):
        FlowerClassifier("tiny_test", dropout=1.5).fit(single_folder)
    with pytest.raises(ValueError, match="hidden_units"):
        FlowerClassifier("tiny_test", hidden_units=[64, -1]).fit(single_folder)
    with pytest.raises(petalnet.BackboneNotFoundError):
        FlowerClassifier("no_such_backbone").fit(single_folder)


def test_save_load_round_trip_gives_same_probabilities(fitted, flowers_root, tmp_path):
    path = fitted.save(tmp_path / "sub" / "model.pt")
    images = [flowers_root / "test" / c / "img_001.jpg" for c in fitted.classes_]
    loaded = FlowerClassifier.load(path, device="cpu")
    np.testing.assert_allclose(
        loaded.predict_proba(images), fitted.predict_proba(images), rtol=1e-5, atol=1e-6
    )
    assert loaded.classes_ == fitted.classes_
    assert loaded.category_names_ == fitted.category_names_
    assert loaded.history_ == fitted.history_ and loaded.best_epoch_ == fitted.best_epoch_
    assert loaded.get_params() == {**fitted.get_params(), "device": "cpu"}
    assert loaded.predict(images[0])[0].label == fitted.predict(images[0])[0].label


def test_checkpoint_is_plain_data_loadable_with_weights_only(fitted, tmp_path):
    path = fitted.save(tmp_path / "model.pt")
    raw = torch.load(path, weights_only=True, map_location="cpu")
    assert raw["format"] == "petalnet.checkpoint" and raw["petalnet_version"]
    assert raw["backbone"] == {
        "name": "tiny_test",
        "weights": "SEEDED",
        "source": "named",
        "feature_dim": 32,
    }
    assert raw["classes"] == fitted.classes_
    assert raw["preprocessing"]["crop_size"] == 32
    assert raw["optimizer"]["state"] and raw["optimizer"]["param_groups"][0]["lr"] == 0.01
    assert all(t.device.type == "cpu" for t in raw["head"]["state_dict"].values())
    json.dumps(
        {
            k: raw[k]
            for k in ("params", "history", "classes", "category_names", "preprocessing", "backbone")
        }
    )  # all plain values


def test_random_init_backbone_is_stored_and_restored(single_folder, tmp_path):
    clf = FlowerClassifier("tiny_test", weights=None, random_state=0, **FAST).fit(single_folder)
    path = clf.save(tmp_path / "random.pt")
    raw = torch.load(path, weights_only=True)
    assert "state_dict" in raw["backbone"]
    loaded = FlowerClassifier.load(path, device="cpu")
    image = single_folder / "4" / "img_002.jpg"
    np.testing.assert_allclose(loaded.predict_proba(image), clf.predict_proba(image), rtol=1e-5)
    # a restorable backbone is stored only on request
    restorable = FlowerClassifier("tiny_test", random_state=0, **FAST).fit(single_folder)
    assert "state_dict" not in torch.load(restorable.save(tmp_path / "a.pt"))["backbone"]
    full = torch.load(restorable.save(tmp_path / "b.pt", include_backbone=True))
    assert "state_dict" in full["backbone"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "truncated or is not a petalnet checkpoint"),
        (b"PK\x03\x04garbage", "truncated or is not a petalnet checkpoint"),
        (b"\x00" * 64, "truncated or is not a petalnet checkpoint"),
    ],
)
def test_damaged_checkpoints_are_clear_errors(tmp_path, content, match):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(petalnet.CheckpointError, match=match):
        FlowerClassifier.load(path)


def test_foreign_and_missing_checkpoints(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "foreign.pt")
    with pytest.raises(petalnet.CheckpointError, match="not a petalnet checkpoint"):
        FlowerClassifier.load(tmp_path / "foreign.pt")
    torch.save({"format": "petalnet.checkpoint", "format_version": 99}, tmp_path / "new.pt")
    with pytest.raises(petalnet.CheckpointError, match="upgrade petalnet"):
        FlowerClassifier.load(tmp_path / "new.pt")
    with pytest.raises(petalnet.CheckpointError, match="does not exist"):
        FlowerClassifier.load(tmp_path / "missing.pt")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    torch.save({"format": "petalnet.checkpoint", "x": _Payload(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(petalnet.CheckpointError, match="Refusing to load.*io.open.*could run code"):
        FlowerClassifier.load(path)
    assert not marker.exists()
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump(_Payload(str(marker)), f)
    with pytest.raises(petalnet.CheckpointError):
        FlowerClassifier.load(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_checkpoint_written_on_another_device_loads_on_cpu(fitted, tmp_path):
    """Every tensor is saved on the CPU and loaded with map_location; see also the CUDA test."""
    path = fitted.save(tmp_path / "m.pt")
    loaded = FlowerClassifier.load(path, device="cpu")
    assert all(p.device.type == "cpu" for p in loaded.head_.parameters())
    assert loaded.device_ == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_trained_checkpoint_loads_on_a_cpu_only_process(flowers_root, tmp_path):
    # float32 on the GPU too, so CPU and GPU results can be compared closely
    clf = FlowerClassifier("tiny_test", random_state=0, amp=False, **{**FAST, "device": "cuda"})
    clf.fit(flowers_root)
    assert next(clf.head_.parameters()).device.type == "cuda"
    path = clf.save(tmp_path / "gpu.pt", include_backbone=True)
    image = flowers_root / "test" / "9" / "img_000.jpg"
    expected = clf.predict_proba(image)
    code = (
        "import sys, json, torch; sys.path.insert(0, sys.argv[3]);"
        "import conftest; from petalnet import FlowerClassifier;"
        "assert not torch.cuda.is_available();"
        # no map_location: this fails in a CPU-only process if any tensor was saved on CUDA
        "torch.load(sys.argv[1], weights_only=True);"
        "c = FlowerClassifier.load(sys.argv[1]);"
        "print(json.dumps([str(c.device_), c.predict_proba(sys.argv[2]).tolist()]))"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(path),
            str(image),
            str(__import__("pathlib").Path(__file__).parent),
        ],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""},
        check=True,
    )
    device, proba = json.loads(out.stdout.strip().splitlines()[-1])
    assert device == "cpu"
    np.testing.assert_allclose(np.array(proba), expected, rtol=1e-3, atol=1e-5)


def test_interrupted_training_keeps_best_weights(single_folder, interrupt_in_epoch_3):
    clf = FlowerClassifier("tiny_test", random_state=0, **FAST)
    with pytest.warns(petalnet.PetalnetWarning, match="interrupted after 2 epoch"):
        clf.fit(single_folder)
    assert len(clf.history_) == 2 and clf.best_epoch_ in (1, 2)
    assert clf.predict(single_folder / "1" / "img_000.jpg")


def test_fit_with_torchvision_backbone_end_to_end(single_folder, tmp_path):
    clf = FlowerClassifier(
        "mobilenet_v3_small",
        weights=None,
        epochs=2,
        batch_size=8,
        device="cpu",
        random_state=0,
        verbose=0,
    ).fit(single_folder)
    assert clf.backbone_.feature_dim == 576
    loaded = FlowerClassifier.load(clf.save(tmp_path / "mnv3.pt"), device="cpu")
    image = draw_flower("3", seed=99)
    np.testing.assert_allclose(
        loaded.predict_proba(image), clf.predict_proba(image), rtol=1e-4, atol=1e-6
    )


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_precision_features_agree_with_fp32(single_folder, device):
    params = {**FAST, "device": device, "epochs": 5}
    full = FlowerClassifier("tiny_test", random_state=0, **params).fit(single_folder)
    mixed = FlowerClassifier("tiny_test", random_state=0, amp=True, **params).fit(single_folder)
    images = [single_folder / c / "img_000.jpg" for c in ("1", "3", "5")]
    np.testing.assert_allclose(mixed.predict_proba(images), full.predict_proba(images), atol=0.05)
    assert mixed.backbone_.weights == full.backbone_.weights


def test_failed_refit_leaves_no_half_model(single_folder, tmp_path):
    clf = FlowerClassifier("tiny_test", random_state=0, **FAST).fit(single_folder)
    with pytest.raises(petalnet.DataError):
        clf.fit(tmp_path / "missing")
    with pytest.raises(NotFittedError):
        clf.predict(single_folder / "1" / "img_000.jpg")
    assert clf.fit(single_folder).predict(single_folder / "1" / "img_000.jpg")
