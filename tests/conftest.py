"""Shared fixtures: small synthetic flower folders and a tiny, fast backbone.

Nothing here touches the network or ../shared: every image is drawn on the fly.
"""

from __future__ import annotations

import colorsys
import json
import os
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import petalnet
from petalnet import FeatureExtractor, Preprocessing, register_backbone


def pytest_configure(config: pytest.Config) -> None:
    """Keep the feature cache of the whole run in a private temporary folder."""
    config._petalnet_cache = tempfile.mkdtemp(prefix="petalnet-test-cache-")
    os.environ["PETALNET_CACHE_DIR"] = config._petalnet_cache


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(getattr(config, "_petalnet_cache", ""), ignore_errors=True)


# A small, quick, deterministic classifier setup shared by the tests (cache off, fp32).
QUICK_FIT = dict(
    # synthetic photos of one class all look alike to efficientnet_lite0, so a grouped split
    # would hold none of them out; tests/test_splits.py tests grouping on its own pictures
    split="stratified",
    hidden_units=16,
    learning_rate=0.01,
    batch_size=8,
    device="cpu",
    random_state=0,
    verbose=0,
    cache=False,
    amp=False,  # explicit: "auto" means bfloat16 on CPUs that have it
)

N_CLASSES = 12
CLASS_NAMES = {str(i): f"flower number {i}" for i in range(1, N_CLASSES + 1)}
TINY_PRE = Preprocessing(resize_size=36, crop_size=32)


def _tiny_body() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, kernel_size=3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
    )


@register_backbone("tiny_test", overwrite=True, auto_int8=True)  # as lite0
def tiny_test(weights="DEFAULT") -> FeatureExtractor:
    """A 32-feature CNN; "DEFAULT" is a fixed seeded init (restorable), None a random one."""
    if weights is None:
        body = _tiny_body()
        return FeatureExtractor(body, feature_dim=32, preprocessing=TINY_PRE, weights=None)
    seeds = {"DEFAULT": 1234, "SEEDED": 1234, "OTHER": 99}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeds[str(weights)])
        body = _tiny_body()
    name = "SEEDED" if seeds[str(weights)] == 1234 else str(weights)
    return FeatureExtractor(body, feature_dim=32, preprocessing=TINY_PRE, weights=name)


@register_backbone("tiny_test_wide_crop", overwrite=True)
def tiny_test_wide_crop(weights="DEFAULT") -> FeatureExtractor:
    """tiny_test with other preprocessing (same parameters)."""
    return tiny_test(weights).derive(preprocessing=Preprocessing(resize_size=40, crop_size=32))


def _tiny_blocks_body() -> nn.Module:
    def conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
        )

    return nn.Sequential(
        OrderedDict(
            stem=conv_bn(3, 8, 2),
            block1=conv_bn(8, 8, 2),
            block2=conv_bn(8, 8, 1),
            pool=nn.AdaptiveAvgPool2d(2),
        )
    )


@register_backbone("tiny_blocks", overwrite=True)
def tiny_blocks(weights="DEFAULT") -> FeatureExtractor:
    """A 32-feature CNN of three blocks (stem, block1, block2) for fine-tuning tests."""
    if weights is None:
        return FeatureExtractor(_tiny_blocks_body(), feature_dim=32, preprocessing=TINY_PRE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4321)
        body = _tiny_blocks_body()
    return FeatureExtractor(body, feature_dim=32, preprocessing=TINY_PRE, weights="SEEDED")


def class_color(label: str) -> tuple[int, int, int]:
    """A distinct colour per class folder name."""
    hue = (int(label) - 1) / N_CLASSES
    r, g, b = colorsys.hsv_to_rgb(hue, 0.9, 0.9)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_flower(label: str, seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A noisy image whose colour identifies its class."""
    rng = np.random.default_rng(seed)
    base = np.array(class_color(label), dtype=np.float32)
    pixels = base + rng.normal(0, 12, size=(size[1], size[0], 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_class_folders(root: Path, per_class: int, seed: int, n_classes: int = N_CLASSES) -> Path:
    for i in range(1, n_classes + 1):
        folder = root / str(i)
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            draw_flower(str(i), seed * 10_000 + i * 100 + j).save(folder / f"img_{j:03d}.jpg")
    return root


@pytest.fixture(autouse=True)
def _isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test leaks a registration: each one works on a copy of the registry."""
    from petalnet.backbones import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_WEIGHTS_STATUS", dict(registry._WEIGHTS_STATUS))


@pytest.fixture
def interrupt_in_epoch_3(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C (KeyboardInterrupt) during the third epoch's validation."""
    from petalnet import training

    real = training.evaluate_model
    calls = {"n": 0}

    def interrupt_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "evaluate_model", interrupt_on_third)


@pytest.fixture
def backbone_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the images that really go through a backbone (one entry per batch)."""
    from petalnet import features

    seen: list[int] = []
    real = features.run_backbone

    def counting(backbone, batch, *args, **kwargs):
        seen.append(len(batch))
        return real(backbone, batch, *args, **kwargs)

    monkeypatch.setattr(features, "run_backbone", counting)
    return seen


@pytest.fixture
def decoded_files(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count the images really decoded (one entry per ``read_image`` call)."""
    from petalnet import images

    decoded: list[str] = []
    real = images.read_image

    def counting(source, draft_size=None):
        decoded.append(str(source))
        return real(source, draft_size)

    monkeypatch.setattr(images, "read_image", counting)
    return decoded


@pytest.fixture(scope="session")
def flowers_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Udacity layout: train/ valid/ test/ with classes 1..12 and cat_to_name.json."""
    root = tmp_path_factory.mktemp("flowers")
    make_class_folders(root / "train", per_class=6, seed=1)
    make_class_folders(root / "valid", per_class=2, seed=2)
    make_class_folders(root / "test", per_class=2, seed=3)
    (root / "cat_to_name.json").write_text(json.dumps(CLASS_NAMES))
    return root


@pytest.fixture(scope="session")
def single_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder of 5 class folders, no split."""
    return make_class_folders(tmp_path_factory.mktemp("single"), per_class=6, seed=4, n_classes=5)


# The parameters of the shared `fitted` classifier (tests that need a variant of it start here).
FITTED_PARAMS = dict(
    backbone="tiny_test",
    hidden_units=32,
    epochs=15,
    learning_rate=0.01,
    batch_size=16,
    random_state=0,
    device="cpu",
    verbose=0,
    amp=False,  # tests compare its numbers: pinned to float32 on every CPU
)


@pytest.fixture(scope="session")
def fitted(flowers_root: Path) -> petalnet.FlowerClassifier:
    """A classifier trained once on the synthetic data (shared; do not mutate)."""
    return petalnet.FlowerClassifier(**FITTED_PARAMS).fit(flowers_root)
