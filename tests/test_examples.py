"""Every example runs, on small synthetic data, with no network."""

from __future__ import annotations

import csv
import importlib.util
import sys
import urllib.error
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch

from petalnet import FlowerClassifier
from petalnet.backbones import registry

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, argv: list[str]) -> None:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(argv)


def test_quickstart(flowers_root, tmp_path, capsys):
    out = tmp_path / "q.pt"
    run_example(
        "quickstart",
        [str(flowers_root), "--backbone", "tiny_test", "--epochs", "3", "--out", str(out)],
    )
    text = capsys.readouterr().out
    assert out.is_file() and "saved and reloaded" in text and "accuracy" in text


def test_predict_folder_to_csv(fitted, flowers_root, tmp_path):
    ckpt = fitted.save(tmp_path / "m.pt")
    out = tmp_path / "preds.csv"
    run_example("predict_folder_to_csv", [str(ckpt), str(flowers_root / "test"), str(out)])
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 24 and rows[0]["label_1"].startswith("flower number")


def test_offline(single_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    run_example("offline", [str(single_folder), "--epochs", "1"])
    text = capsys.readouterr().out
    assert "as expected offline" in text and "reloaded without the weights file" in text


def test_plugin_package_entry_point(single_folder, tmp_path, monkeypatch):
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    plugin = EXAMPLES / "petalnet_tinycnn_plugin"
    meta = tomllib.loads((plugin / "pyproject.toml").read_text())
    target = meta["project"]["entry-points"]["petalnet.backbones"]["tinycnn"]
    monkeypatch.syspath_prepend(str(plugin / "src"))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_PLUGINS", None)
    monkeypatch.setattr(
        registry,
        "entry_points",
        lambda group: (
            [EntryPoint("tinycnn", target, group)] if group == registry.ENTRY_POINT_GROUP else []
        ),
    )
    assert "tinycnn" in registry.list_backbones("tiny*")
    clf = FlowerClassifier("tinycnn", weights=None, epochs=2, device="cpu", verbose=0)
    clf.fit(single_folder)
    loaded = FlowerClassifier.load(clf.save(tmp_path / "plugin.pt"), device="cpu")
    image = single_folder / "2" / "img_000.jpg"
    assert loaded.predict(image)[0].class_id == clf.predict(image)[0].class_id
    sys.modules.pop("petalnet_tinycnn", None)


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_every_example_is_tested(script):
    assert script[:-3] in {"quickstart", "predict_folder_to_csv", "offline"}
