"""Built-in torchvision backbones: feature sizes, preprocessing, weights loading offline."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
from torchvision.models import get_model_weights

import petalnet
from petalnet.backbones.torchvision import TORCHVISION_BACKBONES

# Small members of each family, run for real (random init) to check the declared feature size.
FORWARD_CHECKED = [
    "alexnet",
    "vgg11",
    "resnet18",
    "densenet121",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mnasnet0_5",
    "shufflenet_v2_x0_5",
    "efficientnet_b0",
    "regnet_x_400mf",
    "convnext_tiny",
    "vit_b_32",
    "swin_t",
]


@pytest.mark.parametrize("name", FORWARD_CHECKED)
def test_feature_dim_matches_real_output(name):
    fx = petalnet.build_backbone(name, weights=None).eval()
    size = fx.preprocessing.crop_size
    with torch.inference_mode():
        out = fx(torch.rand(2, 3, size, size))
    assert out.shape == (2, fx.feature_dim)
    assert fx.weights is None and not fx.restorable


def test_vgg16_is_the_seed_backbone():
    with torch.device("meta"):
        fx = petalnet.build_backbone("vgg16", weights=None)
    assert fx.feature_dim == 25088  # 512 x 7 x 7, what the seed's classifier took
    assert next(iter(fx.body.named_children()))[0] == "stage1"
    assert fx.num_blocks == 5  # VGG16's five conv stages, each ending in max-pooling


# one model per family: its chain of blocks must compute what torchvision's forward does
CHAIN_FAMILIES = [
    "vgg11",
    "alexnet",
    "resnet18",
    "densenet121",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "convnext_tiny",
    "regnet_x_400mf",
    "mnasnet0_5",
    "shufflenet_v2_x0_5",
    "swin_t",
]


@pytest.mark.parametrize("name", CHAIN_FAMILIES)
def test_blocks_compute_what_torchvision_computes(name):
    from petalnet.backbones.torchvision import _replace

    torch.manual_seed(0)
    fx = petalnet.build_backbone(name, weights=None).eval()
    torch.manual_seed(0)  # the same initialisation
    reference = torchvision.models.get_model(name, weights=None).eval()
    _replace(reference, TORCHVISION_BACKBONES[name], torch.nn.Identity())
    size = fx.preprocessing.crop_size  # split() sizes the front's output for it
    x = torch.rand(1, 3, size, size)
    with torch.inference_mode():
        expected = torch.flatten(reference(x), 1)
        assert torch.allclose(fx(x), expected, atol=1e-5)
        assert fx.num_blocks >= 3
        for k in (1, fx.num_blocks - 1):  # the parts share the modules and compose to the whole
            front, back = fx.split(k)
            assert torch.allclose(back(front(x)), expected, atol=1e-5)


def test_a_backbone_that_is_not_a_chain_has_no_blocks():
    with torch.device("meta"):
        fx = petalnet.build_backbone("vit_b_32", weights=None)
    assert fx.num_blocks == 0
    with pytest.raises(ValueError, match="between 1 and"):
        fx.split(1)


@pytest.mark.parametrize("name", sorted(TORCHVISION_BACKBONES))
def test_preprocessing_comes_from_the_weights(name):
    tv = get_model_weights(name).DEFAULT.transforms()
    pre = petalnet.Preprocessing.from_torchvision(get_model_weights(name).DEFAULT)
    assert pre.crop_size == tv.crop_size[0] and pre.resize_size == tv.resize_size[0]
    assert list(pre.mean) == list(tv.mean) and list(pre.std) == list(tv.std)
    assert pre.interpolation == tv.interpolation.value


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty torch cache and no network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def test_offline_error_is_one_sentence_with_the_fixes(offline, capsys):
    with pytest.raises(petalnet.WeightsUnavailableError) as err:
        petalnet.build_backbone("mobilenet_v3_small")
    assert capsys.readouterr().err == ""  # no "Downloading: ..." line before the error
    message = str(err.value)
    assert "\n" not in message
    assert "mobilenet_v3_small-047dcff4.pth" in message
    assert str(offline) in message and "TORCH_HOME" in message
    assert "weights=None" in message and "efficientnet_lite0" in message
    assert "weights='path/to/" in message


def test_cached_weights_load_without_network(offline):
    offline.mkdir(parents=True)
    reference = torchvision.models.mobilenet_v3_small()
    torch.save(reference.state_dict(), offline / "mobilenet_v3_small-047dcff4.pth")
    fx = petalnet.build_backbone("mobilenet_v3_small")
    assert fx.weights == "IMAGENET1K_V1" and fx.restorable
    assert torch.equal(fx.body.block0[0].weight, reference.features[0][0].weight)


def test_weights_from_a_local_file(tmp_path):
    reference = torchvision.models.resnet18()
    path = tmp_path / "my_resnet.pth"
    torch.save({"state_dict": reference.state_dict()}, path)
    fx = petalnet.build_backbone("resnet18", weights=path)
    assert torch.equal(fx.body.stem[0].weight, reference.conv1.weight)
    assert fx.weights == "file:my_resnet.pth" and not fx.restorable
    assert fx.preprocessing.crop_size == 224


def test_weights_file_that_does_not_fit(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save(torchvision.models.alexnet().state_dict(), path)
    with pytest.raises(petalnet.WeightsUnavailableError, match="does not fit 'resnet18'"):
        petalnet.build_backbone("resnet18", weights=str(path))
    with pytest.raises(petalnet.WeightsUnavailableError, match="does not exist"):
        petalnet.build_backbone("resnet18", weights=str(tmp_path / "missing.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(petalnet.WeightsUnavailableError, match="Cannot read weights file"):
        petalnet.build_backbone("resnet18", weights=garbage)


def test_unknown_weights_name_lists_the_choices():
    with pytest.raises(petalnet.PetalnetError, match="IMAGENET1K_V1.*IMAGENET1K_V2"):
        petalnet.build_backbone("resnet50", weights="IMAGENET_SUPER")


def test_preprocessing_round_trips_and_transforms_all_inputs():
    import numpy as np
    from PIL import Image

    pre = petalnet.Preprocessing(resize_size=40, crop_size=32, interpolation="bicubic")
    assert petalnet.Preprocessing.from_dict(pre.to_dict()) == pre
    t = pre.transform()
    img = Image.new("RGB", (80, 60), (255, 0, 0))
    a = t(img)
    b = t(np.array(img))
    c = t(torch.from_numpy(np.array(img)).permute(2, 0, 1))
    d = t(torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255)
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    for other in (b, c, d):
        assert torch.allclose(a, other, atol=1e-5)
    assert torch.allclose(a[0], torch.full((32, 32), (1 - 0.485) / 0.229), atol=1e-4)


def test_prepared_backbone_folds_batch_norm_without_changing_outputs():
    from petalnet.features import prepare_backbone, run_backbone

    fx = petalnet.build_backbone("mobilenet_v3_small", weights=None)
    torch.manual_seed(0)
    for m in fx.modules():  # make batch norm do real work
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    keys_before = set(fx.state_dict())
    x = torch.rand(2, 3, 224, 224)
    with torch.inference_mode():
        expected = fx.eval()(x)
    runner = prepare_backbone(fx, torch.device("cpu"))
    assert runner is not fx
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in runner.modules())
    assert set(fx.state_dict()) == keys_before  # the original keeps its architecture
    assert not any(p.requires_grad for p in fx.parameters())
    torch.testing.assert_close(
        run_backbone(runner, x, torch.device("cpu")), expected, rtol=1e-4, atol=1e-4
    )
    plain = petalnet.build_backbone("vgg11", weights=None)
    assert prepare_backbone(plain, torch.device("cpu")) is plain  # nothing to fold: no copy
