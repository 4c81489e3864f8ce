"""Training options: callbacks, early stopping, schedules, label smoothing, class weights."""

from __future__ import annotations

import pytest
import torch

from conftest import QUICK_FIT
from petalnet import Callback, EarlyStopping, FlowerClassifier, TrainingState
from petalnet.batches import TensorBatches
from petalnet.fitting import make_trainer

FAST = {**QUICK_FIT, "epochs": 6}


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
    state = TrainingState(epochs=10)
    stopper.on_train_begin(state)
    for loss in (1.0, 0.8, 0.85, 0.9):
        state.history.append({"epoch": len(state.history) + 1.0, "valid_loss": loss})
        stopper.on_epoch_end(state)
    assert state.stop and "2 epoch" in state.stop_reason
    fresh = TrainingState(epochs=10)
    stopper.on_train_begin(fresh)  # reusable: a new run starts from zero
    fresh.history.append({"epoch": 1.0, "valid_loss": 0.95})
    stopper.on_epoch_end(fresh)
    assert not fresh.stop


def test_early_stopping_in_fit_keeps_best(single_folder, monkeypatch):
    from petalnet import training

    losses = iter([1.0, 0.5, 0.7, 0.9, 1.1, 1.2])
    real = training.evaluate_model
    monkeypatch.setattr(
        training, "evaluate_model", lambda *a, **k: (next(losses), real(*a, **k)[1])
    )
    clf = FlowerClassifier("tiny_test", early_stopping=2, **FAST).fit(single_folder)
    assert len(clf.history_) == 4 and clf.best_epoch_ == 2


def _toy_data():
    torch.manual_seed(0)
    x = torch.randn(60, 8)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 1).long()


def _train(**kw):
    x, y = _toy_data()
    head = torch.nn.Sequential(torch.nn.Linear(8, 3), torch.nn.LogSoftmax(dim=1))
    cpu = torch.device("cpu")
    recipe = {"epochs": 4, "learning_rate": 0.05, "batch_size": 16, "random_state": 0}
    params = FlowerClassifier(**{**recipe, **kw})
    trainer = make_trainer(params, cpu, freeze_epochs=0)
    data = TensorBatches(x, y, cpu)
    return head, trainer.fit(head, data, data, n_classes=3)


def test_cosine_schedule_with_warmup_ends_at_zero():
    _, result = _train(lr_schedule="cosine", warmup_epochs=1)
    assert result.optimizer_state["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-9)
    _, constant = _train()
    assert constant.optimizer_state["param_groups"][0]["lr"] == pytest.approx(0.05)


def test_label_smoothing_and_weight_decay_change_training():
    _, plain = _train()
    _, smooth = _train(label_smoothing=0.2)
    _, decayed = _train(weight_decay=0.5)
    assert smooth.history[0]["train_loss"] > plain.history[0]["train_loss"]
    assert decayed.history[-1]["train_loss"] != plain.history[-1]["train_loss"]


class LastStates(Callback):
    """The raw (not averaged) weights after every epoch."""

    def __init__(self):
        self.states = []

    def on_epoch_end(self, state):
        self.states.append({k: v.clone() for k, v in state.last_state.items()})


def test_ema_keeps_the_moving_average_of_the_weights():
    decay = 0.6
    seen = LastStates()
    # one step per epoch (batch of all 60 rows), so the raw weights after each epoch are
    # the weights after each step that the average takes in
    head, state = _train(ema=decay, batch_size=60, monitor="last", callbacks=[seen])
    expected = dict(seen.states[0])  # the first update copies the weights
    for raw in seen.states[1:]:
        expected = {k: decay * expected[k] + (1 - decay) * raw[k] for k in raw}
    for key, value in head.state_dict().items():
        torch.testing.assert_close(value, expected[key])
        assert not torch.equal(value, seen.states[-1][key])  # not the raw last weights
    assert int(state.average_state["n_averaged"]) == 4
    # what was validated is the average too
    x, y = _toy_data()
    loss = torch.nn.functional.nll_loss(head(x), y).item()
    assert state.history[-1]["valid_loss"] == pytest.approx(loss, rel=1e-5)


def test_mixup_blends_the_batches_and_their_loss():
    _, plain = _train()
    _, mixed = _train(mixup=1.0)
    assert mixed.history[0]["train_loss"] > plain.history[0]["train_loss"]
    _, again = _train(mixup=1.0)  # seeded like everything else
    assert _strip(again.history) == _strip(mixed.history)
    with pytest.raises(ValueError, match="mixup"):
        FlowerClassifier(mixup=-1.0).fit("unused")
    with pytest.raises(ValueError, match="ema"):
        FlowerClassifier(ema=1.0).fit("unused")


def test_class_weight_balanced(single_folder, monkeypatch):
    from petalnet import training

    seen = []
    real = training.Trainer._class_weights

    def spy(self, train, n_classes):
        seen.append(real(self, train, n_classes))
        return seen[-1]

    monkeypatch.setattr(training.Trainer, "_class_weights", spy)
    FlowerClassifier("tiny_test", class_weight="balanced", **FAST).fit(single_folder)
    assert torch.allclose(seen[-1], torch.ones(5))  # 5 balanced classes -> all 1
    x = torch.zeros(6, 2)
    skewed = TensorBatches(x, torch.tensor([0, 0, 0, 0, 1, 2]), torch.device("cpu"))
    trainer = make_trainer(FlowerClassifier(class_weight="balanced"), torch.device("cpu"), 0)
    weights = trainer._class_weights(skewed, 3)
    torch.testing.assert_close(weights, torch.tensor([0.5, 2.0, 2.0]))  # n / (C * count)
    with pytest.raises(ValueError, match="class_weight"):
        FlowerClassifier("tiny_test", class_weight="auto", **FAST).fit(single_folder)
    with pytest.raises(ValueError, match="lr_schedule"):
        FlowerClassifier("tiny_test", lr_schedule="step", **FAST).fit(single_folder)


def _strip(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


@pytest.mark.parametrize("schedule", ["constant", "cosine", "cosine+ema+mixup"])
def test_resume_continues_exactly(single_folder, tmp_path, schedule):
    params = {**FAST, "dropout": 0.3, "lr_schedule": schedule.split("+")[0], "epochs": 4}
    if schedule != "constant":
        params["warmup_epochs"] = 1
    if "ema" in schedule:  # the average and the mixing weights continue exactly too
        params.update(ema=0.9, mixup=0.4)
    full = FlowerClassifier("tiny_test", **params).fit(single_folder)
    if schedule == "constant":  # a shorter run, then more epochs
        first = FlowerClassifier("tiny_test", **{**params, "epochs": 2}).fit(single_folder)
    else:  # the schedule spans all epochs: a 4-epoch run that died after epoch 2
        first = FlowerClassifier("tiny_test", callbacks=[Recorder(stop_after=2)], **params)
        first.fit(single_folder)
    assert len(first.history_) == 2
    resumed = FlowerClassifier("tiny_test", **params)
    resumed.fit(single_folder, resume_from=first.save(tmp_path / "half.pt"))
    assert len(resumed.history_) == 4
    for a, b in zip(_strip(full.history_), _strip(resumed.history_), strict=True):
        assert a == pytest.approx(b, rel=1e-5)
    assert resumed.best_epoch_ == full.best_epoch_
    images = [single_folder / c / "img_000.jpg" for c in ("1", "4")]
    torch.testing.assert_close(
        torch.from_numpy(resumed.predict_proba(images)),
        torch.from_numpy(full.predict_proba(images)),
        rtol=1e-4,
        atol=1e-6,
    )
    # a resumed run can itself be saved and resumed again
    again = FlowerClassifier("tiny_test", **{**params, "epochs": 5})
    again.fit(single_folder, resume_from=resumed.save(tmp_path / "four.pt"))
    assert len(again.history_) == 5


def test_resume_refuses_a_mismatched_checkpoint(single_folder, fitted, tmp_path):
    path = fitted.save(tmp_path / "other.pt")  # 12 classes, not the 5 of single_folder
    with pytest.raises(Exception, match="Cannot resume"):
        FlowerClassifier("tiny_test", **FAST).fit(single_folder, resume_from=path)


def test_tta_averages_centre_and_mirror(fitted, flowers_root):
    import numpy as np
    from PIL import Image, ImageOps

    from conftest import draw_flower

    # left half one flower, right half another: the mirror image really differs
    # (48 x 36 px: resized to 36 px, the 32 px crop has equal margins, so the mirror of the
    # centre crop is exactly the centre crop of the mirror)
    left = np.asarray(draw_flower("6", seed=1, size=(48, 36)))
    right = np.asarray(draw_flower("9", seed=2, size=(48, 36)))
    image = Image.fromarray(np.concatenate([left[:, :24], right[:, 24:]], axis=1))
    mirrored = ImageOps.mirror(image)
    plain = fitted.predict_proba(image)
    flipped = fitted.predict_proba(mirrored)
    fitted.tta = True
    try:
        both = fitted.predict_proba(image)
        report = fitted.evaluate(flowers_root)
        test_images = sorted((flowers_root / "test").rglob("*.jpg"))
        probs = fitted.predict_proba(test_images)  # the same path, TTA on
    finally:
        fitted.tta = False
    # so TTA is the mean of the two single-view predictions
    mean = torch.from_numpy((plain + flipped) / 2)
    torch.testing.assert_close(torch.from_numpy(both), mean, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(torch.from_numpy(both), torch.from_numpy(plain), atol=1e-3)
    truth = np.array([fitted.class_to_idx_[p.parent.name] for p in test_images])
    assert report["n_images"] == 24
    assert report["accuracy"] == pytest.approx(float((probs.argmax(1) == truth).mean()))


def test_monitor_picks_the_kept_epoch(single_folder, monkeypatch):
    from petalnet import training

    scores = iter([(1.0, 0.5), (0.6, 0.6), (0.7, 0.9), (0.8, 0.8)])  # (loss, accuracy)
    monkeypatch.setattr(training, "evaluate_model", lambda *a, **k: next(scores))
    by_loss = FlowerClassifier("tiny_test", **{**FAST, "epochs": 4}).fit(single_folder)
    assert by_loss.best_epoch_ == 2
    scores = iter([(1.0, 0.5), (0.6, 0.6), (0.7, 0.9), (0.8, 0.8)])
    monkeypatch.setattr(training, "evaluate_model", lambda *a, **k: next(scores))
    by_acc = FlowerClassifier("tiny_test", monitor="valid_accuracy", **{**FAST, "epochs": 4})
    assert by_acc.fit(single_folder).best_epoch_ == 3


def test_monitor_last_keeps_the_last_epoch_and_only_reports(single_folder, monkeypatch):
    from petalnet import training

    scores = iter([(1.0, 0.5), (0.6, 0.9), (0.7, 0.6), (0.8, 0.7)])  # (loss, accuracy)
    monkeypatch.setattr(training, "evaluate_model", lambda *a, **k: next(scores))
    clf = FlowerClassifier("tiny_test", monitor="last", **{**FAST, "epochs": 4})
    clf.fit(single_folder)
    assert clf.best_epoch_ == 4  # not epoch 2, the best on the validation split
    assert [r["valid_accuracy"] for r in clf.history_] == [0.5, 0.9, 0.6, 0.7]


def test_refit_trains_the_chosen_epoch_count_on_train_and_valid(single_folder, tmp_path):
    plain = FlowerClassifier("tiny_test", **{**FAST, "epochs": 5}).fit(single_folder)
    clf = FlowerClassifier("tiny_test", refit=True, **{**FAST, "epochs": 5}).fit(single_folder)
    chosen = plain.best_epoch_
    # the selection run is the plain run; the refit trains that many epochs on all 30 images
    assert [r["valid_loss"] for r in clf.selection_history_] == [
        r["valid_loss"] for r in plain.history_
    ]
    assert len(clf.history_) == chosen and clf.best_epoch_ == chosen
    assert (clf.n_train_, clf.n_valid_) == (30, 0)
    assert all(r["valid_loss"] != r["valid_loss"] for r in clf.history_)  # NaN: no validation
    again = FlowerClassifier.load(clf.save(tmp_path / "refit.pt"))
    assert len(again.selection_history_) == 5 and again.refit
    with pytest.raises(ValueError, match="refit=True cannot resume"):
        FlowerClassifier("tiny_test", refit=True, **FAST).fit(
            single_folder, resume_from=tmp_path / "refit.pt"
        )


def test_without_validation_images_the_last_epoch_is_kept(single_folder):
    clf = FlowerClassifier("tiny_test", valid_fraction=0.0, **{**FAST, "epochs": 3})
    clf.fit(single_folder)
    assert clf.n_valid_ == 0 and clf.best_epoch_ == 3
    untrained = FlowerClassifier("tiny_test", valid_fraction=0.0, **{**FAST, "epochs": 1})
    untrained.fit(single_folder)
    # the kept weights are the trained ones, not the initial head's
    assert not torch.equal(clf.head_[0].weight, untrained.head_[0].weight)


def test_fit_resume_from_restores_the_runs_parameters(
    single_folder, tmp_path, interrupt_in_epoch_3
):
    run = dict(hidden_units=8, lr_schedule="cosine", epochs=5, random_state=0)
    here = dict(device="cpu", verbose=0, cache=False, amp=False)
    with pytest.warns(UserWarning, match="interrupted after 2"):
        first = FlowerClassifier("tiny_test", **run, **here).fit(single_folder)
    path = first.save(tmp_path / "run.pt")
    # a bare estimator: every parameter at its default comes from the checkpoint
    again = FlowerClassifier(**here).fit(single_folder, resume_from=path)
    assert (again.backbone, again.lr_schedule, again.epochs) == ("tiny_test", "cosine", 5)
    assert again.hidden_units == 8 and len(again.history_) == 5
    # one set to anything else wins, as a flag does on the command line
    longer = FlowerClassifier(**{**here, "epochs": 6}).fit(single_folder, resume_from=path)
    assert longer.epochs == 6 and len(longer.history_) == 6
