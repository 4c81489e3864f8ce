"""Presets: one word for a recipe, in Python and on the command line."""

from __future__ import annotations

import pytest

from petalnet import FlowerClassifier, cli
from petalnet.presets import get_preset, list_presets


def test_the_promised_presets_exist_and_are_valid_recipes():
    names = [p.name for p in list_presets()]
    assert {"fast-cpu", "balanced-cpu", "best-cpu"} <= set(names)
    for preset in list_presets():
        clf = FlowerClassifier.from_preset(preset.name)
        clf.validate()
        assert {k: clf.get_params()[k] for k in preset.params} == dict(preset.params)
        # fixed recipes: valid/ only reports, it picks no epoch
        assert clf.monitor == "last"
    assert FlowerClassifier().backbone == "vgg16"  # the classic recipe stays the default


def test_overrides_win_and_the_rest_stays_default():
    clf = FlowerClassifier.from_preset("best-cpu", epochs=3, freeze_epochs=1, verbose=0)
    assert clf.epochs == 3 and clf.freeze_epochs == 1 and clf.verbose == 0
    assert clf.strategy == "freeze_unfreeze"
    assert clf.batch_size == FlowerClassifier().batch_size


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="fast-cpu, balanced-cpu, best-cpu"):
        FlowerClassifier.from_preset("fastest")


def test_a_preset_trains(single_folder):
    clf = FlowerClassifier.from_preset(
        "fast-cpu", backbone="tiny_test", epochs=2, verbose=0, random_state=0
    ).fit(single_folder)
    assert clf.best_epoch_ == 2  # monitor="last"
    assert clf.hidden_units == 1024 and clf.label_smoothing == 0.1


def _train_args(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> dict:
    seen: dict = {}
    monkeypatch.setattr(cli, "_cmd_train", lambda args: seen.update(vars(args)) or 0)
    assert cli.main(argv) == 0
    return seen


def test_cli_preset_sets_defaults_and_later_flags_override(monkeypatch):
    args = _train_args(monkeypatch, ["train", "DATA", "--preset", "best-cpu", "--epochs", "3"])
    assert args["epochs"] == 3
    assert args["strategy"] == "freeze_unfreeze" and args["tta"] == "crops+flip"
    assert args["backbone"] == "efficientnet_lite0"
    args = _train_args(monkeypatch, ["train", "DATA", "--no_tta", "--preset=best-cpu"])
    assert args["tta"] is False and args["augment_views"] == 2
    assert _train_args(monkeypatch, ["train", "DATA"])["backbone"] == "vgg16"


def test_cli_help_shows_the_preset_values(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--preset", "best-cpu", "--help"])
    out = capsys.readouterr().out
    assert "over the training images (default: 14)" in " ".join(out.split())


def test_cli_unknown_preset_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "DATA", "--preset", "nope"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fast-cpu" in err


def test_cli_presets_lists_names_figures_and_flags(capsys):
    assert cli.main(["presets"]) == 0
    out = capsys.readouterr().out
    for preset in list_presets():
        assert preset.name in out and preset.describe() in out
    assert "--strategy freeze_unfreeze" in out and "--preset NAME" in out
    assert get_preset("best-cpu").params["tta"] == "crops+flip"
    # the figures each preset was measured with, where, and why new photos score lower
    for preset in list_presets():
        assert preset.untouched_accuracy is not None and preset.holdout_accuracy is not None
        if preset.params.get("refit"):
            assert preset.valid_accuracy is None  # it trained on valid/
            assert "no valid figure (it refits on train + valid)" in preset.describe()
        else:
            assert preset.untouched_accuracy < preset.valid_accuracy
        assert f"untouched test {preset.untouched_accuracy:.2%}*" in out
        assert preset.machine in out and preset.seconds and preset.avx2_seconds
    assert "* valid/ shares plants with train/" in out and "1.0-1.5 points under" in out
