"""Training options: callbacks, early stopping, schedules, label smoothing, class weights."""

from __future__ import annotations

import pytest
import torch

from petalnet import Callback, EarlyStopping, FlowerClassifier
from petalnet.training import TrainResult, train_head

FAST = dict(
    hidden_units=16,
    epochs=6,
    learning_rate=0.01,
    batch_size=8,
    device="cpu",
    random_state=0,
    verbose=0,
    cache=False,
)


class Recorder(Callback):
    def __init__(self, stop_after=None):
        self.calls, self.stop_after = [], stop_after

    def on_train_begin(self, state):
        self.calls.append("begin")

    def on_epoch_end(self, state):
        self.calls.append(int(state.history[-1]["epoch"]))
        if self.stop_after and len(state.history) >= self.stop_after:
            state.stop, state.stop_reason = True, "recorder says stop"

    def on_train_end(self, state):
        self.calls.append("end")


def test_user_callbacks_see_every_epoch_and_can_stop(single_folder):
    rec = Recorder(stop_after=3)
    clf = FlowerClassifier("tiny_test", callbacks=[rec], **FAST).fit(single_folder)
    assert rec.calls == ["begin", 1, 2, 3, "end"]
    assert len(clf.history_) == 3


def test_callbacks_are_not_saved(single_folder, tmp_path):
    clf = FlowerClassifier("tiny_test", callbacks=[Recorder()], **FAST).fit(single_folder)
    raw = torch.load(clf.save(tmp_path / "m.pt"), weights_only=True)
    assert "callbacks" not in raw["params"]
    assert FlowerClassifier.load(tmp_path / "m.pt").callbacks is None


def test_early_stopping_counts_epochs_without_improvement():
    stopper = EarlyStopping(patience=2)
    state = TrainResult(epochs=10)
    stopper.on_train_begin(state)
    for loss in (1.0, 0.8, 0.85, 0.9):
        state.history.append({"epoch": len(state.history) + 1.0, "valid_loss": loss})
        stopper.on_epoch_end(state)
    assert state.stop and "2 epoch" in state.stop_reason
    stopper.on_train_begin(state)  # reusable
    state.stop = False
    state.history.append({"epoch": 5.0, "valid_loss": 0.95})
    stopper.on_epoch_end(state)
    assert not state.stop


def test_early_stopping_in_fit_keeps_best(single_folder, monkeypatch):
    from petalnet import training

    losses = iter([1.0, 0.5, 0.7, 0.9, 1.1, 1.2])
    real = training.evaluate_head
    monkeypatch.setattr(training, "evaluate_head", lambda *a, **k: (next(losses), real(*a, **k)[1]))
    clf = FlowerClassifier("tiny_test", early_stopping=2, **FAST).fit(single_folder)
    assert len(clf.history_) == 4 and clf.best_epoch_ == 2


def _train(**kw):
    torch.manual_seed(0)
    x = torch.randn(60, 8)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    head = torch.nn.Sequential(torch.nn.Linear(8, 3), torch.nn.LogSoftmax(dim=1))
    result = train_head(
        head,
        (x, y),
        (x, y),
        epochs=4,
        learning_rate=0.05,
        batch_size=16,
        device=torch.device("cpu"),
        seed=0,
        **kw,
    )
    return head, result


def test_cosine_schedule_with_warmup_ends_at_zero():
    _, result = _train(schedule="cosine", warmup_epochs=1)
    assert result.optimizer_state["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-9)
    _, constant = _train()
    assert constant.optimizer_state["param_groups"][0]["lr"] == pytest.approx(0.05)


def test_label_smoothing_and_weight_decay_change_training():
    _, plain = _train()
    _, smooth = _train(label_smoothing=0.2)
    _, decayed = _train(weight_decay=0.5)
    assert smooth.history[0]["train_loss"] > plain.history[0]["train_loss"]
    assert decayed.history[-1]["train_loss"] != plain.history[-1]["train_loss"]


def test_class_weight_balanced(single_folder, monkeypatch):
    from petalnet import training

    seen = {}
    real = training.train_head

    def spy(*args, **kwargs):
        seen["w"] = kwargs["class_weights"]
        return real(*args, **kwargs)

    monkeypatch.setattr("petalnet.classifier.train_head", spy)
    FlowerClassifier("tiny_test", class_weight="balanced", **FAST).fit(single_folder)
    assert torch.allclose(seen["w"], torch.ones(5))  # 5 balanced classes -> all 1
    with pytest.raises(ValueError, match="class_weight"):
        FlowerClassifier("tiny_test", class_weight="auto", **FAST).fit(single_folder)
    with pytest.raises(ValueError, match="lr_schedule"):
        FlowerClassifier("tiny_test", lr_schedule="step", **FAST).fit(single_folder)
