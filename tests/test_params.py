"""The parameter spec: one declaration drives the constructor, validation, get/set_params,
sklearn's clone, the ``petalnet train`` flags and the benchmark flags."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
from pathlib import Path

import pytest
import torch

from petalnet import FlowerClassifier
from petalnet.cli import build_parser
from petalnet.params import ClassifierParams, param_specs

SPECS = {s.name: s for s in param_specs()}


def test_constructor_signature_is_the_spec():
    signature = inspect.signature(FlowerClassifier)
    assert list(signature.parameters) == list(SPECS)
    for name, p in signature.parameters.items():
        assert p.default == SPECS[name].default, name
    # the classic positional backbone, the rest keyword-only
    assert signature.parameters["backbone"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert signature.parameters["epochs"].kind is inspect.Parameter.KEYWORD_ONLY


def test_init_only_stores():
    clf = FlowerClassifier(epochs=-5, strategy="nonsense")  # validated by fit, not here
    assert clf.epochs == -5 and clf.strategy == "nonsense"
    assert not hasattr(clf, "model_") and not hasattr(clf, "classes_")


def test_sklearn_clone_get_and_set_params():
    base = pytest.importorskip("sklearn.base")
    clf = FlowerClassifier("tiny_test", epochs=3, hidden_units=[8, 4])
    copy = base.clone(clf)
    assert copy is not clf and copy.get_params() == clf.get_params()
    assert copy.get_params(deep=True)["epochs"] == 3
    assert copy.set_params(epochs=7, tta=True) is copy
    assert (copy.epochs, copy.tta, clf.epochs) == (7, True, 3)
    with pytest.raises(ValueError, match="Unknown parameter.*epoch\\b.*valid: amp"):
        copy.set_params(epoch=2)
    assert repr(copy) == (
        "FlowerClassifier(backbone='tiny_test', hidden_units=[8, 4], epochs=7, tta=True)"
    )


BAD_VALUES = {
    "hidden_units": [-3, [8, 0], "512"],
    "dropout": [1.0, -0.1],
    "learning_rate": [0, -1e-3],
    "epochs": [0, 2.5, "3"],
    "batch_size": [0],
    "valid_fraction": [1.0],
    "split": ["random", 3],
    "extract_batch_size": [0],
    "num_workers": [-1],
    "amp": ["yes", 1],
    "quantize": ["int4", True],
    "augment_views": [-1],
    "augmentation": ["seed", "random"],
    "cache": ["no"],
    "weight_decay": [-0.1],
    "label_smoothing": [1.0],
    "lr_schedule": ["step"],
    "warmup_epochs": [11],
    "early_stopping": [0],
    "class_weight": ["auto"],
    "monitor": ["accuracy"],
    "strategy": ["partial"],
    "unfreeze_blocks": [0],
    "freeze_epochs": [11, -1],
    "backbone_lr_scale": [0],
    "ema": [0.0, 1.0],
    "mixup": [-0.1],
    "tta": [1],
    "calibrate": ["yes"],
    "novelty": ["odin"],
    "known_recall": [0, 1.5],
    "strict": ["yes"],
    "verbose": ["loud", 1.5],
}


@pytest.mark.parametrize(("name", "value"), [(n, v) for n, vs in BAD_VALUES.items() for v in vs])
def test_every_bad_value_names_its_parameter(name, value):
    clf = FlowerClassifier("tiny_test", **{name: value})
    with pytest.raises(ValueError, match=f"^{name} must be .*got {re.escape(repr(value))}"):
        clf.validate()


def test_every_checked_parameter_has_bad_values_listed():
    checked = {s.name for s in param_specs() if s.check is not None or s.choices}
    assert checked <= set(BAD_VALUES)


def test_defaults_are_valid_and_good_values_pass():
    FlowerClassifier().validate()
    FlowerClassifier(
        "x", hidden_units=None, amp=True, class_weight="balanced", unfreeze_blocks=None
    ).validate()
    FlowerClassifier(
        hidden_units=[8, 4], device=torch.device("cpu"), cache_dir=Path(".")
    ).validate()


def _train_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["train", "data", *argv])


def test_every_flagged_parameter_is_a_train_flag_with_the_spec_default():
    args = _train_args()
    for spec in param_specs():
        if spec.flag is not None:
            assert getattr(args, spec.name) == spec.default, spec.name
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for flag in ("--arch", "--learning_rate", "--hidden_units", "--epochs", "--tta", "--no_cache"):
        assert flag in help_text


@pytest.mark.parametrize(
    ("argv", "name", "value"),
    [
        (["--hidden_units", "512,256"], "hidden_units", [512, 256]),
        (["--hidden_units", "none"], "hidden_units", None),
        (["--hidden-units", "64"], "hidden_units", 64),
        (["--amp", "false"], "amp", False),
        (["--amp", "auto"], "amp", "auto"),
        (["--unfreeze_blocks", "all"], "unfreeze_blocks", None),
        (["--unfreeze_blocks", "0"], "unfreeze_blocks", 0),  # parsed, then refused
        (["--weights", "none"], "weights", None),
        (["--class_weight", "balanced"], "class_weight", "balanced"),
        (["--strategy", "FREEZE_UNFREEZE"], "strategy", "freeze_unfreeze"),
        (["--arch", "resnet18"], "backbone", "resnet18"),
        (["--backbone", "resnet18"], "backbone", "resnet18"),
        (["--seed", "3"], "random_state", 3),
        (["--tta"], "tta", True),
        (["--tta", "crops"], "tta", "crops"),
        (["--tta", "off"], "tta", False),
        (["--no_cache"], "cache", False),
        (["--learning-rate", "0.01"], "learning_rate", 0.01),
    ],
)
def test_flags_parse_to_typed_values(argv, name, value):
    assert getattr(_train_args(*argv), name) == value


@pytest.mark.parametrize(
    "argv",
    [["--epochs", "x"], ["--amp", "maybe"], ["--strategy", "partial"], ["--hidden_units", "a,b"]],
)
def test_unparsable_flags_are_one_line_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        _train_args(*argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and err.startswith("petalnet: error:")
    assert argv[0] in err


def test_benchmark_flags_come_from_the_same_spec(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    shared = sys.modules.get("_shared") or __import__("_shared")
    args = shared.recipe_parser("x").parse_args(["--strategy", "full", "--amp", "off"])
    assert (args.backbone, args.strategy, args.amp) == ("efficientnet_lite0", "full", False)
    params = shared.recipe(args)
    assert set(params) == set(SPECS) - {"callbacks", "verbose"}
    FlowerClassifier(**params).validate()
    for script in ("fit_flowers", "protocol"):
        bench = sys.modules.get(script) or __import__(script)
        assert "recipe_parser(" in inspect.getsource(bench.main)


def test_params_class_is_a_dataclass_of_the_parameters():
    assert [f.name for f in dataclasses.fields(ClassifierParams)] == list(SPECS)


def test_train_exposes_every_parameter():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    dests = {a.dest for a in train._actions}
    # device has --device/--gpu and verbose --quiet, shared with the other commands;
    # callbacks are code, not a command-line value
    assert set(FlowerClassifier().get_params()) - {"callbacks"} <= dests | {"verbose"}
    assert {"device", "gpu", "quiet"} <= dests
