"""Backbone registry: decorator, lookup, wildcards, and entry-point plugins."""

from __future__ import annotations

import sys
import types
import warnings
from importlib.metadata import EntryPoint

import pytest
from torch import nn

import petalnet
from petalnet import FeatureExtractor, Preprocessing
from petalnet.backbones import registry


def _builder(weights="DEFAULT"):
    return FeatureExtractor(nn.Flatten(), feature_dim=3, preprocessing=Preprocessing())


@pytest.fixture
def clean_registry(monkeypatch):
    """Isolate registrations and plugin discovery made by a test."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_PLUGINS", None)
    return registry


def test_builtins_are_listed():
    names = petalnet.list_backbones()
    for expected in (
        "vgg16",
        "vgg11_bn",
        "vgg19",
        "resnet50",
        "densenet121",
        "alexnet",
        "mobilenet_v2",
        "mobilenet_v3_large",
        "efficientnet_b0",
        "efficientnet_b7",
        "efficientnet_v2_s",
        "convnext_tiny",
        "regnet_y_400mf",
        "vit_b_16",
        "swin_t",
        "efficientnet_lite0",
    ):
        assert expected in names
    assert names == sorted(names)


def test_wildcards_include_and_exclude():
    assert petalnet.list_backbones("vgg*") == [
        "vgg11",
        "vgg11_bn",
        "vgg13",
        "vgg13_bn",
        "vgg16",
        "vgg16_bn",
        "vgg19",
        "vgg19_bn",
    ]
    assert petalnet.list_backbones("vgg*", exclude="*_bn") == ["vgg11", "vgg13", "vgg16", "vgg19"]
    assert set(petalnet.list_backbones(["alexnet", "swin_v2_*"])) == {
        "alexnet",
        "swin_v2_t",
        "swin_v2_s",
        "swin_v2_b",
    }
    assert petalnet.list_backbones("no_such_*") == []


def test_unknown_name_lists_available_and_how_to_add(clean_registry):
    with pytest.raises(petalnet.BackboneNotFoundError) as err:
        petalnet.get_backbone("vgg17")
    message = str(err.value)
    assert "vgg17" in message and "vgg16" in message
    assert "register_backbone" in message and "petalnet.backbones" in message
    assert isinstance(err.value, KeyError)


def test_register_decorator_and_duplicates(clean_registry):
    petalnet.register_backbone("my_net")(_builder)
    assert petalnet.get_backbone("my_net") is _builder
    fx = petalnet.build_backbone("my_net")
    assert fx.feature_dim == 3

    def other(weights="DEFAULT"):
        return _builder()

    with pytest.raises(petalnet.PetalnetError, match="already registered"):
        petalnet.register_backbone("my_net")(other)
    petalnet.register_backbone("my_net", overwrite=True)(other)
    assert petalnet.get_backbone("my_net") is other
    with pytest.raises(petalnet.PetalnetError, match="already registered"):
        petalnet.register_backbone("vgg16")(other)


def test_register_uses_function_name(clean_registry):
    @petalnet.register_backbone()
    def named_after_function(weights="DEFAULT"):
        return _builder()

    assert "named_after_function" in petalnet.list_backbones()


def test_builder_must_return_feature_extractor(clean_registry):
    petalnet.register_backbone("bad")(lambda weights="DEFAULT": nn.Linear(1, 1))
    with pytest.raises(petalnet.PetalnetError, match="FeatureExtractor"):
        petalnet.build_backbone("bad")


def _fake_entry_points(monkeypatch, eps):
    calls = []

    def fake(group):
        calls.append(group)
        return [ep for ep in eps if ep.group == group]

    monkeypatch.setattr(registry, "entry_points", fake)
    return calls


def test_plugins_are_discovered_lazily_and_cached(clean_registry, monkeypatch):
    module = types.ModuleType("fake_plugin_pkg")
    module.build = _builder
    monkeypatch.setitem(sys.modules, "fake_plugin_pkg", module)
    calls = _fake_entry_points(
        monkeypatch,
        [
            EntryPoint("plugged", "fake_plugin_pkg:build", registry.ENTRY_POINT_GROUP),
            EntryPoint("other_group", "fake_plugin_pkg:build", "something.else"),
        ],
    )
    petalnet.get_backbone("vgg16")  # a known name does not trigger discovery
    assert calls == []
    assert petalnet.get_backbone("plugged") is _builder
    assert "plugged" in petalnet.list_backbones()
    assert "other_group" not in petalnet.list_backbones()
    petalnet.list_backbones()
    assert calls == [registry.ENTRY_POINT_GROUP]  # discovered once


def test_plugin_module_that_registers_itself(clean_registry, monkeypatch):
    module = types.ModuleType("self_registering_plugin")

    def build(weights="DEFAULT"):
        return _builder()

    module.build = build
    monkeypatch.setitem(sys.modules, "self_registering_plugin", module)
    registry._REGISTRY["selfreg"] = build  # what the module's decorator would have done
    _fake_entry_points(
        monkeypatch,
        [
            EntryPoint("selfreg", "self_registering_plugin", registry.ENTRY_POINT_GROUP),
        ],
    )
    assert petalnet.get_backbone("selfreg") is build


def test_broken_plugin_is_a_warning_not_a_crash(clean_registry, monkeypatch):
    _fake_entry_points(
        monkeypatch,
        [
            EntryPoint(
                "broken", "module_that_does_not_exist_xyz:build", registry.ENTRY_POINT_GROUP
            ),
        ],
    )
    with pytest.warns(petalnet.PetalnetWarning, match="broken"):
        names = petalnet.list_backbones()
    assert "broken" not in names and "vgg16" in names
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(petalnet.BackboneNotFoundError):
            petalnet.get_backbone("broken")  # tried once, not again


def test_plugin_cannot_shadow_builtin(clean_registry, monkeypatch):
    module = types.ModuleType("shadow_plugin")
    module.build = _builder
    monkeypatch.setitem(sys.modules, "shadow_plugin", module)
    _fake_entry_points(
        monkeypatch,
        [
            EntryPoint("vgg16", "shadow_plugin:build", registry.ENTRY_POINT_GROUP),
        ],
    )
    with pytest.warns(petalnet.PetalnetWarning, match="already has"):
        petalnet.list_backbones()
    assert petalnet.get_backbone("vgg16") is not _builder


def test_registered_restores_what_was_there():
    before = petalnet.get_backbone("tiny_test")
    with registry.registered("tiny_test", _builder) as builder:
        assert petalnet.get_backbone("tiny_test") is builder is _builder
        with registry.registered("brand_new", _builder):
            assert "brand_new" in petalnet.list_backbones()
        assert "brand_new" not in petalnet.list_backbones()
    assert petalnet.get_backbone("tiny_test") is before


def test_weights_status_comes_from_the_registration():
    petalnet.register_backbone("with_status", weights_status=lambda: "bundled")(_builder)
    assert registry.weights_status("with_status") == "bundled"
    petalnet.register_backbone("with_status", overwrite=True)(_builder)
    assert registry.weights_status("with_status") == "unknown"
    assert registry.weights_status("vgg16") in ("cached", "download")


def test_a_registered_name_with_a_plus_is_itself_not_a_fusion():
    fused = "efficientnet_lite0+tiny_test"
    assert registry.weights_status(fused) == "+".join(
        registry.weights_status(part) for part in fused.split("+")
    )
    with registry.registered(fused, _builder):  # registered: its own builder and status
        assert petalnet.get_backbone(fused) is _builder
        assert registry.weights_status(fused) == "unknown"
        assert registry.auto_int8(fused) == (False,)
    assert petalnet.get_backbone(fused) is not _builder  # a fusion of the two again


def test_build_backbone_names_its_metadata():
    fx = petalnet.build_backbone("tiny_test")
    assert fx.meta.name == "tiny_test" and fx.meta.source == "named" and fx.restorable
    assert petalnet.build_backbone("tiny_test", weights=None).meta.source == "random"
    trained = fx.derive(source="trained")
    assert trained.body is fx.body and not trained.restorable and fx.restorable
    with pytest.raises(AttributeError):
        fx.meta.name = "other"  # frozen: a new meta comes from derive()
