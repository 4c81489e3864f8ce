"""The on-disk feature cache: reuse, invalidation, bounds, and agreement with no cache."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest
import torch

from conftest import QUICK_FIT, draw_flower, make_class_folders
from petalnet import FlowerClassifier
from petalnet import precision as precision_module
from petalnet.cache import FeatureCache, default_cache_dir
from petalnet.data import load_training_data
from petalnet.features import View
from petalnet.images import Unreadable
from petalnet.precision import resolve_precision

FAST = {**QUICK_FIT, "epochs": 4, "cache": True}


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    make_class_folders(root / "train", per_class=4, seed=1, n_classes=3)
    make_class_folders(root / "valid", per_class=2, seed=2, n_classes=3)
    return root


def fit(data, cache_dir, **kw):
    return FlowerClassifier("tiny_test", cache_dir=cache_dir, **{**FAST, **kw}).fit(data)


def test_second_fit_reuses_every_feature(data, tmp_path, backbone_calls):
    fit(data, tmp_path / "cache")
    assert sum(backbone_calls) == 18  # 12 train + 6 valid
    assert len(list((tmp_path / "cache").glob("*/*/*.npy"))) == 18
    backbone_calls.clear()
    clf = fit(data, tmp_path / "cache", hidden_units=[8, 8], learning_rate=0.005)
    assert backbone_calls == []
    clf.evaluate(data / "valid")  # evaluate reads the same cache
    assert backbone_calls == []


def test_changed_file_is_recomputed_alone(data, tmp_path, backbone_calls):
    fit(data, tmp_path / "cache")
    backbone_calls.clear()
    target = data / "train" / "2" / "img_001.jpg"
    draw_flower("3", seed=777, size=(50, 44)).save(target)
    fit(data, tmp_path / "cache")
    assert sum(backbone_calls) == 1


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"backbone": "tiny_test_wide_crop"}, 18),  # preprocessing differs
        ({"weights": "OTHER"}, 18),  # parameters differ
        ({"amp": True}, 18),  # precision differs
        ({"dropout": 0.5}, 0),  # head settings do not matter
    ],
)
def test_what_invalidates_the_cache(data, tmp_path, backbone_calls, change, expected):
    fit(data, tmp_path / "cache")
    backbone_calls.clear()
    FlowerClassifier(
        **{"backbone": "tiny_test", "cache_dir": tmp_path / "cache", **FAST, **change}
    ).fit(data)
    assert sum(backbone_calls) == expected


def test_results_agree_with_and_without_cache(data, tmp_path):
    cold = fit(data, tmp_path / "cache")
    warm = fit(data, tmp_path / "cache")
    off = fit(data, None, cache=False)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(cold.history_) == strip(warm.history_) == strip(off.history_)
    images = sorted((data / "valid").glob("*/*.jpg"))
    np.testing.assert_array_equal(warm.predict_proba(images), off.predict_proba(images))


def test_cache_off_writes_nothing(data, tmp_path, monkeypatch):
    monkeypatch.setenv("PETALNET_CACHE_DIR", str(tmp_path / "default"))
    fit(data, None, cache=False)
    assert not (tmp_path / "default").exists()
    fit(data, None)
    assert (tmp_path / "default").exists()  # cache_dir=None means the default location


def test_random_init_is_not_cached(data, tmp_path):
    fit(data, tmp_path / "cache", weights=None)
    assert not list((tmp_path / "cache").glob("*/*/*.npy"))


def test_deleting_or_corrupting_the_cache_is_safe(data, tmp_path, backbone_calls):
    first = fit(data, tmp_path / "cache")
    for f in list((tmp_path / "cache").glob("*/*/*.npy"))[:5]:
        f.write_bytes(b"garbage")
    backbone_calls.clear()
    second = fit(data, tmp_path / "cache")
    assert sum(backbone_calls) == 5
    shutil.rmtree(tmp_path / "cache")
    third = fit(data, tmp_path / "cache")
    assert first.history_[-1]["train_loss"] == second.history_[-1]["train_loss"]
    assert first.history_[-1]["train_loss"] == third.history_[-1]["train_loss"]


def test_cache_is_bounded_least_recently_used_first(tmp_path):
    cache = FeatureCache(tmp_path, {"x": 1}, max_bytes=3 * 1200)
    vec = np.zeros(256, dtype=np.float32)  # ~1.15 kB on disk
    for i in range(5):
        cache.put(f"{i:02d}" + "k" * 30, vec)
    now = time.time()
    for i, f in enumerate(sorted(tmp_path.glob("*/*/*.npy"))):
        os.utime(f, (now - 100 + i, now - 100 + i))
    assert cache.get("00" + "k" * 30) is not None  # touching 00 makes it most recent
    cache.prune()
    left = sorted(f.name[:2] for f in tmp_path.glob("*/*/*.npy"))
    assert left == ["00", "03", "04"]


def test_namespace_and_key_depend_on_their_inputs(tmp_path):
    a = FeatureCache(tmp_path, {"backbone": "x", "preprocessing": {"crop": 224}})
    b = FeatureCache(tmp_path, {"backbone": "x", "preprocessing": {"crop": 256}})
    assert a.namespace != b.namespace
    image = tmp_path / "i.jpg"
    draw_flower("1", seed=0).save(image)
    assert a.key(image) == a.key(image) != a.key(image, "aug1")
    before = a.key(image)
    draw_flower("2", seed=1).save(image)
    assert a.key(image) != before


def test_float16_entries_live_in_their_own_namespace(tmp_path):
    full = FeatureCache(tmp_path, {"backbone": "x"})
    half = FeatureCache(tmp_path, {"backbone": "x"}, dtype="float16")
    assert full.namespace == FeatureCache(tmp_path, {"backbone": "x"}, dtype="float32").namespace
    assert half.namespace != full.namespace
    vec = np.linspace(-3, 3, 64, dtype=np.float32)
    full.put("ab" + "k" * 30, vec)
    half.put("ab" + "k" * 30, vec)
    got_full, got_half = full.get("ab" + "k" * 30), half.get("ab" + "k" * 30)
    assert got_full.dtype == np.float32 and np.array_equal(got_full, vec)
    assert got_half.dtype == np.float16
    np.testing.assert_allclose(got_half, vec, rtol=1e-3)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("PETALNET_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "petalnet"
    monkeypatch.setenv("PETALNET_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"


def test_augmented_views_are_cached_reproducible_and_different(data, tmp_path, backbone_calls):
    clf = fit(data, tmp_path / "cache", augment_views=2)
    assert sum(backbone_calls) == 2 * 12 + 6
    paths = [p for p, _ in load_training_data(data).train]
    x = clf.pipeline_.features(paths, unreadable=Unreadable(), views=View.augmented(2))[0]
    assert x.shape == (2, 12, 32) and not torch.equal(x[0], x[1])
    backbone_calls.clear()
    again = fit(data, tmp_path / "cache", augment_views=2)
    assert backbone_calls == []
    fresh = fit(data, tmp_path / "other_cache", augment_views=2)  # recomputed, same draws
    assert again.history_[-1]["train_loss"] == fresh.history_[-1]["train_loss"]


def test_precision_resolution(monkeypatch):
    cpu, cuda, mps = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", cpu) == torch.float32
    assert resolve_precision(True, cpu) == torch.bfloat16
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", cpu) == torch.bfloat16
    assert resolve_precision(False, cpu) == torch.float32
    assert resolve_precision("auto", cuda) == torch.float16
    assert resolve_precision("auto", mps) == torch.float32
    with pytest.raises(ValueError, match="amp"):
        resolve_precision("yes", cpu)


def test_parameter_fingerprint_covers_buffers_and_scalars():
    from torch import nn

    from petalnet.cache import parameter_fingerprint

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))  # has a 0-dim buffer
    before = parameter_fingerprint(net)
    assert parameter_fingerprint(net) == before
    net[1].running_mean += 1
    assert parameter_fingerprint(net) != before
