"""checkpoint.py owns the file format both ways: FittedModel + params <-> plain payload."""

from __future__ import annotations

import pytest
import torch

import petalnet
from petalnet import CheckpointError, TrainingState
from petalnet.checkpoint import (
    FORMAT_VERSION,
    from_payload,
    read_checkpoint,
    resume_state,
    to_payload,
    write_checkpoint,
)
from petalnet.fitted import FittedModel
from petalnet.head import build_head


def _model(weights="DEFAULT", history=0):
    backbone = petalnet.build_backbone("tiny_test", weights=weights)
    head = build_head(32, 3, [8], 0.1)
    state = TrainingState(epochs=history)
    for e in range(1, history + 1):
        record = {"epoch": float(e), "train_loss": 1.0, "valid_loss": 0.9, "valid_accuracy": 0.5}
        state.history.append({**record, "seconds": 0.1})
    if history:
        state.best_epoch, state.last_state = history, head.state_dict()
        state.rng_state = torch.get_rng_state()
    names = {"a": "aster"}
    return FittedModel(backbone, head, [8], 0.1, ["a", "b", "c"], names, state, 30, 6)


def test_round_trip_through_a_file(tmp_path):
    model = _model(history=2)
    params = {"backbone": "tiny_test", "epochs": 2, "cache_dir": tmp_path, "callbacks": [object()]}
    path = write_checkpoint(to_payload(model, params), tmp_path / "m.pt")
    raw = torch.load(path, weights_only=True)  # plain data: no code runs on load
    assert raw["format_version"] == FORMAT_VERSION
    assert raw["params"] == {"backbone": "tiny_test", "epochs": 2, "cache_dir": str(tmp_path)}
    assert "state_dict" not in raw["backbone"]  # restorable from its name and weights id
    saved_params, back = from_payload(read_checkpoint(path))
    assert saved_params["epochs"] == 2
    assert back.classes == ["a", "b", "c"] and back.category_names == {"a": "aster"}
    assert back.hidden_units == [8] and back.dropout == 0.1
    assert back.backbone.meta == model.backbone.meta
    for key, value in model.head.state_dict().items():
        assert torch.equal(back.head.state_dict()[key], value)
    assert back.training.history == model.training.history and back.training.best_epoch == 2
    assert (back.n_train, back.n_valid) == (30, 6)  # /model and n_train_ after load


@pytest.mark.parametrize(
    ("weights", "include", "stored"),
    [("DEFAULT", None, False), ("DEFAULT", True, True), (None, None, True)],
)
def test_backbone_parameters_are_stored_only_when_needed(weights, include, stored):
    model = _model(weights=weights)
    payload = to_payload(model, {}, include_backbone=include)
    assert ("state_dict" in payload["backbone"]) is stored
    _, back = from_payload(payload)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(back.backbone.state_dict()[key], value)
    # parameters from the file are no longer what the name would build: stored again on save
    assert back.backbone.meta.restorable is (not stored)


def test_a_fine_tuned_backbone_travels_with_its_training_state():
    model = _model(history=1)
    model.backbone = model.backbone.derive(source="trained")
    with torch.no_grad():
        model.backbone.body[0].weight.add_(1.0)
    model.training.best_state = {"w": torch.ones(2)}
    payload = to_payload(model, {})
    assert "state_dict" in payload["backbone"] and "best_state" in payload["training"]
    _, back = from_payload(payload)
    assert back.backbone.meta.source == "trained"
    assert torch.equal(back.backbone.body[0].weight, model.backbone.body[0].weight)


def test_resume_state_loads_the_last_epoch_and_checks_the_run(tmp_path):
    model = _model(history=3)
    data = to_payload(model, {})
    target = build_head(32, 3, [8], 0.1)
    state = resume_state(data, "m.pt", target, classes=["a", "b", "c"], backbone="tiny_test")
    assert len(state.history) == 3 and state.best_epoch == 3
    assert torch.equal(target[0].weight, model.head[0].weight)
    with pytest.raises(CheckpointError, match="4 classes|on 3 classes"):
        resume_state(data, "m.pt", target, classes=["a", "b", "c", "d"], backbone="tiny_test")
    with pytest.raises(CheckpointError, match="other layer sizes"):
        resume_state(
            data, "m.pt", build_head(32, 3, [4], 0.1), classes=["a", "b", "c"], backbone="tiny_test"
        )
    fresh = to_payload(_model(history=0), {})
    with pytest.raises(CheckpointError, match="no training state"):
        resume_state(fresh, "m.pt", target, classes=["a", "b", "c"], backbone="tiny_test")


def test_a_newer_format_is_refused_with_the_fix(tmp_path):
    payload = to_payload(_model(), {})
    path = write_checkpoint(payload, tmp_path / "m.pt")
    raw = torch.load(path, weights_only=True)
    raw["format_version"] = FORMAT_VERSION + 1
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="newer than this petalnet.*pip install -U"):
        read_checkpoint(path)
