"""Fine-tuning strategies: what trains, what is cached, what is saved, and resume."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
import torch
from torch import nn

import petalnet
from conftest import QUICK_FIT
from petalnet import FeatureExtractor, FlowerClassifier, PetalnetError, strategy
from petalnet.backbones.registry import registered
from petalnet.training import SCHEDULES, _lr_scheduler

FAST = {**QUICK_FIT, "epochs": 4}


def _assert_same_predictions(a, b, images, rtol):
    torch.testing.assert_close(
        torch.from_numpy(a.predict_proba(images)),
        torch.from_numpy(b.predict_proba(images)),
        rtol=rtol,
        atol=1e-6,
    )


def _params(fx: FeatureExtractor, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in fx.state_dict().items() if k.startswith(prefix)}


def _changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


class Snapshot(petalnet.Callback):
    """Copies the backbone's state after every epoch."""

    def __init__(self, clf_holder: list) -> None:
        self.holder, self.states = clf_holder, []

    def on_epoch_end(self, state):
        self.states.append({k: v.clone() for k, v in self.holder[0].state_dict().items()})


def test_blocks_of_a_chain_backbone():
    fx = petalnet.build_backbone("tiny_blocks")
    assert fx.num_blocks == 3  # stem, block1, block2; the pool goes with block2
    front, back = fx.split(1)
    x = torch.rand(2, 3, 32, 32)
    fx.eval()
    with torch.no_grad():
        assert torch.equal(back(front(x)), fx(x))
    assert front.feature_dim == 8 * 8 * 8  # block1's output, flattened
    # the parts share the backbone's modules: training the back trains the backbone
    assert back[1] is fx.body.block2


def test_freeze_unfreeze_trains_only_the_last_blocks_after_the_head_epochs(single_folder, tmp_path):
    pretrained = petalnet.build_backbone("tiny_blocks")
    holder: list = []
    snap = Snapshot(holder)

    class Grab(petalnet.Callback):
        def on_train_begin(self, state):
            holder.append(clf.backbone_)

    clf = FlowerClassifier(
        "tiny_blocks",
        strategy="freeze_unfreeze",
        unfreeze_blocks=1,
        freeze_epochs=2,
        callbacks=[Grab(), snap],
        **FAST,
    )
    clf.fit(single_folder)
    before = pretrained.state_dict()
    # head-only epochs: the backbone (batch-norm statistics included) did not move
    for epoch in (0, 1):
        assert not _changed(before, snap.states[epoch])
    # then the last block trained, the earlier ones stayed frozen
    assert _changed(_params(pretrained, "body.block2"), _params(clf.backbone_, "body.block2"))
    assert not _changed(_params(pretrained, "body.stem"), _params(clf.backbone_, "body.stem"))
    assert not _changed(_params(pretrained, "body.block1"), _params(clf.backbone_, "body.block1"))
    # the backbone learns at learning_rate * backbone_lr_scale in its own parameter group
    groups = clf.optimizer_state_["param_groups"]
    assert len(groups) == 2 and groups[1]["lr"] == pytest.approx(groups[0]["lr"] * 0.1)
    assert len(clf.history_) == 4


def test_a_fine_tuned_model_saves_its_backbone_and_predicts_the_same(single_folder, tmp_path):
    clf = FlowerClassifier("tiny_blocks", strategy="freeze_unfreeze", unfreeze_blocks=2, **FAST)
    clf.fit(single_folder)
    assert not clf.backbone_.restorable  # no longer the named pretrained weights
    path = clf.save(tmp_path / "tuned.pt")
    loaded = FlowerClassifier.load(path, device="cpu")
    _assert_same_predictions(loaded, clf, sorted(single_folder.rglob("*.jpg"))[:6], rtol=1e-5)
    # evaluate runs the fine-tuned backbone, not features of the pretrained one
    report = clf.evaluate(single_folder)
    assert report["accuracy"] == pytest.approx(loaded.evaluate(single_folder)["accuracy"])


def test_the_frozen_front_is_computed_once_and_cached(single_folder, backbone_calls, tmp_path):
    calls = backbone_calls
    params = {
        **FAST,
        "cache": True,
        "cache_dir": tmp_path / "cache",
        "strategy": "freeze_unfreeze",
        "unfreeze_blocks": 1,
    }
    first = FlowerClassifier("tiny_blocks", **params).fit(single_folder)
    n_images = first.n_train_ + first.n_valid_
    assert sum(calls) == n_images  # one front pass per image, not one per epoch
    # the front's outputs are kept (and stored) in float16: half the bytes of float32
    with sqlite3.connect(tmp_path / "cache" / "rows-v2" / "index.sqlite") as con:
        (rows,) = con.execute("SELECT COUNT(*) FROM rows").fetchone()
        dtypes = {d for (d,) in con.execute("SELECT dtype FROM shards")}
    assert rows == n_images and dtypes == {"float16"}
    (shard,) = (tmp_path / "cache").glob("rows-v2/*/*.rows")
    assert shard.stat().st_size == n_images * first.backbone_.split(1)[0].feature_dim * 2
    calls.clear()
    FlowerClassifier("tiny_blocks", **{**params, "hidden_units": 8}).fit(single_folder)
    assert sum(calls) == 0  # other head settings: the front's output comes from the cache


def test_float16_front_outputs_train_like_float32(single_folder, monkeypatch):
    params = {**FAST, "strategy": "freeze_unfreeze", "unfreeze_blocks": 1, "freeze_epochs": 1}
    half = FlowerClassifier("tiny_blocks", **params).fit(single_folder)
    monkeypatch.setattr(strategy, "LAYER_OUTPUT_STORAGE", torch.float32)
    full = FlowerClassifier("tiny_blocks", **params).fit(single_folder)
    for a, b in zip(half.history_, full.history_, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-2)
    images = sorted(single_folder.rglob("*.jpg"))[:6]
    np.testing.assert_allclose(half.predict_proba(images), full.predict_proba(images), atol=1e-2)


def test_full_fine_tuning_streams_augmented_images_reproducibly(single_folder):
    params = {**FAST, "strategy": "full", "epochs": 2}
    a = FlowerClassifier("tiny_blocks", **params).fit(single_folder)
    b = FlowerClassifier("tiny_blocks", **params).fit(single_folder)
    strip = [[{k: v for k, v in r.items() if k != "seconds"} for r in c.history_] for c in (a, b)]
    assert strip[0] == strip[1]
    pretrained = petalnet.build_backbone("tiny_blocks")
    # every block trained, from the first epoch
    for block in ("body.stem", "body.block1", "body.block2"):
        assert _changed(_params(pretrained, block), _params(a.backbone_, block))
    frozen = FlowerClassifier("tiny_blocks", **{**params, "strategy": "freeze"}).fit(single_folder)
    assert (a.n_train_, a.n_valid_, a.skipped_) == (frozen.n_train_, frozen.n_valid_, [])


def test_full_fine_tuning_skips_an_unreadable_image_once(single_folder, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(single_folder, root)
    (root / "1" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.warns(petalnet.PetalnetWarning, match="broken.jpg") as record:
        clf = FlowerClassifier("tiny_blocks", strategy="full", **FAST).fit(root)
    assert sum("broken.jpg" in str(w.message) for w in record) == 1
    assert len(clf.skipped_) == 1 and "broken.jpg" in clf.skipped_[0]
    assert clf.n_train_ + clf.n_valid_ == len(list(single_folder.rglob("*.jpg")))


def _strip(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


@pytest.mark.parametrize(
    ("strategy", "freeze_epochs", "schedule"),
    [("freeze_unfreeze", 1, "onecycle"), ("freeze_unfreeze", 3, "cosine"), ("full", 0, "constant")],
)
def test_resume_continues_a_fine_tuning_run_exactly(
    single_folder, tmp_path, strategy, freeze_epochs, schedule
):
    params = {
        **FAST,
        "dropout": 0.3,
        "strategy": strategy,
        "unfreeze_blocks": 1,
        "freeze_epochs": freeze_epochs,
        "lr_schedule": schedule,
    }
    if strategy == "full":
        params["epochs"] = 3
    whole = FlowerClassifier("tiny_blocks", **params).fit(single_folder)

    class StopAfterTwo(petalnet.Callback):
        def on_epoch_end(self, state):
            state.stop = len(state.history) == 2

    first = FlowerClassifier("tiny_blocks", callbacks=[StopAfterTwo()], **params)
    first.fit(single_folder)
    resumed = FlowerClassifier("tiny_blocks", **params)
    resumed.fit(single_folder, resume_from=first.save(tmp_path / "half.pt"))
    for x, y in zip(_strip(whole.history_), _strip(resumed.history_), strict=True):
        assert x == pytest.approx(y, rel=1e-5)
    assert resumed.best_epoch_ == whole.best_epoch_
    _assert_same_predictions(resumed, whole, sorted(single_folder.rglob("*.jpg"))[:4], rtol=1e-4)


def test_onecycle_rises_to_the_learning_rate_then_anneals():
    assert "onecycle" in SCHEDULES
    weight = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([{"params": [weight], "lr": 0.01}])
    scheduler = _lr_scheduler(optimizer, "onecycle", total_steps=100, warmup_steps=0, done_steps=0)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    peak = max(range(100), key=lrs.__getitem__)
    assert 25 <= peak <= 35 and lrs[peak] == pytest.approx(0.01)
    assert lrs[0] < 0.001 and lrs[-1] < 1e-5


def test_a_backbone_without_blocks_explains_what_to_do(single_folder):
    def tiny_no_blocks(weights="DEFAULT"):
        class Body(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3, 4)

            def forward(self, x):
                return nn.functional.adaptive_avg_pool2d(self.conv(x), 1)

        return FeatureExtractor(Body(), feature_dim=4, preprocessing=petalnet.Preprocessing(36, 32))

    with registered("tiny_no_blocks", tiny_no_blocks):
        _fit_without_blocks(single_folder)
    assert "tiny_no_blocks" not in petalnet.list_backbones()


def _fit_without_blocks(single_folder):
    clf = FlowerClassifier("tiny_no_blocks", strategy="freeze_unfreeze", **FAST)
    with pytest.raises(PetalnetError, match="unfreeze_blocks=None"):
        clf.fit(single_folder)
    # nor as the first part of a fused backbone (whose blocks are its first part's)
    fused = FlowerClassifier("tiny_no_blocks+tiny_test", strategy="freeze_unfreeze", **FAST)
    with pytest.raises(PetalnetError, match="declares no blocks"):
        fused.fit(single_folder)
    # the whole of it can still be fine-tuned
    FlowerClassifier(
        "tiny_no_blocks", strategy="freeze_unfreeze", unfreeze_blocks=None, **FAST
    ).fit(single_folder)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("strategy", "partial"),
        ("unfreeze_blocks", 0),
        ("freeze_epochs", 9),
        ("backbone_lr_scale", 0),
    ],
)
def test_strategy_parameters_are_validated(single_folder, name, value):
    with pytest.raises(ValueError, match=name):
        FlowerClassifier("tiny_blocks", **{**FAST, name: value}).fit(single_folder)


def test_trivialaugment_views_are_drawn_and_cached_apart(single_folder, backbone_calls, tmp_path):
    calls = backbone_calls
    params = {**FAST, "augment_views": 1, "cache": True, "cache_dir": tmp_path / "cache"}
    seed = FlowerClassifier("tiny_test", **params).fit(single_folder)
    calls.clear()
    trivial = FlowerClassifier("tiny_test", augmentation="trivialaugment", **params)
    trivial.fit(single_folder)
    # the training views are new (their own cache entries); the centre crops came from the cache
    assert sum(calls) == trivial.n_train_
    assert trivial.history_[0]["train_loss"] != seed.history_[0]["train_loss"]
    with pytest.raises(ValueError, match="augmentation"):
        FlowerClassifier("tiny_test", augmentation="autoaugment", **FAST).fit(single_folder)
