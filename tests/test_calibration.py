"""Saying "I don't know": temperature scaling, novelty scores, the unknown threshold."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FITTED_PARAMS
from petalnet import FlowerClassifier
from petalnet.calibration import (
    NOVELTY_SCORES,
    Calibration,
    calibration_metrics,
    fit_calibration,
    fit_temperature,
    novelty_scores,
)
from petalnet.checkpoint import read_checkpoint, write_checkpoint
from petalnet.cli import main


def _logits(scale: float, n: int = 4000, classes: int = 10, seed: int = 0):
    """Calibrated logits (labels drawn from their softmax), then multiplied by ``scale``."""
    g = torch.Generator().manual_seed(seed)
    base = 2 * torch.randn(n, classes, generator=g)
    labels = torch.multinomial(base.softmax(1), 1, generator=g).flatten()
    return base * scale, labels


@pytest.mark.parametrize(("scale", "hotter"), [(4.0, True), (0.3, False)])
def test_temperature_undoes_over_and_under_confidence(scale, hotter):
    logits, labels = _logits(scale)
    t = fit_temperature(logits, labels)
    assert (t > 1) if hotter else (t < 1)
    assert t == pytest.approx(scale, rel=0.15)  # it undoes the scaling
    before = calibration_metrics(logits.softmax(1), labels)
    after = calibration_metrics((logits / t).softmax(1), labels)
    assert after["ece"] < before["ece"] / 2 and after["ece"] < 0.03
    assert after["nll"] < before["nll"]
    # the ranking of the classes never moves
    assert torch.equal((logits / t).argmax(1), logits.argmax(1))


def test_calibration_metrics_of_known_cases():
    labels = torch.tensor([0, 1])
    perfect = calibration_metrics(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), labels)
    assert perfect["ece"] == pytest.approx(0) and perfect["brier"] == pytest.approx(0)
    wrong = calibration_metrics(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), labels)
    assert wrong["ece"] == pytest.approx(1) and wrong["brier"] == pytest.approx(2)
    assert math.isnan(calibration_metrics(torch.zeros(0, 2), torch.zeros(0))["ece"])


def test_every_score_is_higher_off_distribution():
    g = torch.Generator().manual_seed(1)
    centres = torch.nn.functional.normalize(torch.randn(5, 16, generator=g), dim=1)
    labels = torch.arange(5).repeat(40)
    known = centres[labels] + 0.05 * torch.randn(200, 16, generator=g)
    novel = torch.nn.functional.normalize(torch.randn(50, 16, generator=g), dim=1)
    head = torch.nn.Sequential(torch.nn.Linear(16, 5, bias=False), torch.nn.LogSoftmax(1))
    with torch.no_grad():
        head[0].weight.copy_(centres * 8)
        logits = {
            "train": head[0](known[:100]),
            "known": head[0](known[100:]),
            "novel": head[0](novel),
        }
    fitted = {}
    for score in NOVELTY_SCORES:
        cal = fitted[score] = Calibration(score=score, k=3)
        cal.fit_scores(known[:100], labels[:100], logits["known"], known[100:])
        scores = [
            cal.novelty(logits[g][None], rows[None], score)
            for g, rows in (("known", known[100:]), ("novel", novel))
        ]
        assert scores[1].median() > scores[0].quantile(0.9), score
        if score != "combined":  # the module function computes the same
            same = novelty_scores(
                logits["novel"][None], novel[None], score, bank=cal.bank, k=3, gauss=cal.gauss
            )
            torch.testing.assert_close(same, scores[1])
    cal = fitted["combined"]
    assert cal.norm["msp_std"] > 0 and set(cal.gauss) == {
        "means",
        "precision",
        "bg_mean",
        "bg_precision",
    }


def test_threshold_gives_the_target_recall_on_its_data():
    g = torch.Generator().manual_seed(2)
    head = torch.nn.Sequential(torch.nn.Linear(8, 3), torch.nn.LogSoftmax(1))
    rows, labels = torch.randn(400, 8, generator=g), torch.randint(3, (400,), generator=g)
    batches = [(rows[i : i + 64], labels[i : i + 64]) for i in range(0, 400, 64)]
    for recall in (0.8, 0.95):
        cal = fit_calibration(
            head, torch.nn.Identity(), batches[:3], batches[3:], target_recall=recall
        )
        valid = rows[192:]
        out = cal.outputs(head, valid, torch.device("cpu"))
        assert float((~out.unknown).float().mean()) == pytest.approx(recall, abs=0.01)
        assert cal.gauss["means"].shape == (3, 8) and cal.bank is None  # combined: no bank


def _grey(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(100, 140, size=(40, 48, 3), dtype=np.uint8))


def test_fit_calibrates_and_flags_an_unseen_kind_of_photo(fitted, flowers_root):
    cal = fitted.model_.calibration
    assert cal.score == "combined" and cal.threshold is not None and cal.gauss and cal.norm
    assert cal.temperature != 1.0 and {"ece", "nll", "ece_raw"} <= set(cal.metrics)
    known = sorted((flowers_root / "test").rglob("*.jpg"))
    novel = [_grey(i) for i in range(6)]
    known_scores, novel_scores = fitted.novelty_score(known), fitted.novelty_score(novel)
    assert known_scores.shape == (len(known),) and known_scores.dtype == np.float32
    assert novel_scores.min() > np.median(known_scores)
    top = fitted.predict(novel[0], topk=3)
    assert top.novelty == pytest.approx(float(novel_scores[0]), rel=1e-5)
    assert [p.probability for p in top] == sorted((p.probability for p in top), reverse=True)
    report = fitted.evaluate(flowers_root)
    assert report["unknown_rate"] < 0.5 and 0 <= report["ece"] <= 1
    assert len(report["reliability"]) == 15
    assert sum(b["count"] for b in report["reliability"]) == report["n_images"]


def test_an_unseen_kind_of_photo_is_called_unknown(flowers_root, tmp_path, capsys):
    # the tiny random backbone's features are poor for knn; the head's energy separates here
    clf = FlowerClassifier(**{**FITTED_PARAMS, "novelty": "energy"}).fit(flowers_root)
    tops = clf.predict([_grey(i) for i in range(6)], topk=3)
    assert all(t.unknown for t in tops)
    known = clf.predict(sorted((flowers_root / "test").rglob("*.jpg")))
    assert sum(t.unknown for t in known) <= len(known) // 4
    assert [r.unknown for r in clf.iter_predictions([_grey(0), _grey(1)])] == [True, True]
    # the command line says so in words, and the chart too
    photo, checkpoint = tmp_path / "grey.png", clf.save(tmp_path / "c.pt")
    _grey(0).save(photo)
    assert main(["predict", str(photo), str(checkpoint), "--plot", str(tmp_path / "p.png")]) == 0
    out = capsys.readouterr().out
    assert "unknown flower — not one of the 12 it knows (closest: flower number" in out
    assert (tmp_path / "p.png").stat().st_size > 5_000


def test_checkpoint_keeps_the_calibration(fitted, tmp_path):
    path = fitted.save(tmp_path / "c.pt")
    loaded = FlowerClassifier.load(path, device="cpu")
    a, b = fitted.model_.calibration, loaded.model_.calibration
    assert (a.temperature, a.score, a.threshold, a.k) == (b.temperature, b.score, b.threshold, b.k)
    assert a.norm == b.norm and a.gauss.keys() == b.gauss.keys()
    assert all(torch.equal(a.gauss[k], b.gauss[k]) for k in a.gauss)
    knn = Calibration(score="knn", bank=torch.randn(7, 4).half(), k=3, threshold=0.5)
    again = Calibration.from_payload(knn.to_payload())
    assert again.score == "knn" and again.k == 3 and torch.equal(again.bank, knn.bank)
    img = _grey(0)
    np.testing.assert_allclose(loaded.novelty_score(img), fitted.novelty_score(img), rtol=1e-5)
    assert loaded.predict(img).unknown == fitted.predict(img).unknown


def test_a_checkpoint_from_before_calibration_loads_as_it_was(fitted, tmp_path):
    path = fitted.save(tmp_path / "old.pt")
    data = dict(read_checkpoint(path))
    del data["calibration"]
    write_checkpoint({k: v for k, v in data.items() if not k.startswith("format")}, path)
    loaded = FlowerClassifier.load(path, device="cpu")
    cal = loaded.model_.calibration
    assert cal.temperature == 1.0 and cal.threshold is None and cal.score == "msp"
    assert not loaded.predict(_grey(0)).unknown  # never unknown without a threshold
    raw = Calibration.from_payload(None)
    logits = torch.randn(1, 4, 3)
    torch.testing.assert_close(
        raw.judge(logits, torch.randn(1, 4, 8)).log_probs, logits[0].log_softmax(1)
    )


def test_switches_turn_calibration_and_unknown_off(flowers_root):
    clf = FlowerClassifier(
        "tiny_test",
        hidden_units=16,
        epochs=2,
        verbose=0,
        random_state=0,
        calibrate=False,
        known_recall=None,
        novelty="energy",
    ).fit(flowers_root)
    cal = clf.model_.calibration
    assert cal.temperature == 1.0 and cal.threshold is None and cal.score == "energy"
    with pytest.raises(ValueError, match="known_recall"):
        FlowerClassifier(known_recall=1.5).validate()


def test_with_views_the_temperature_fits_their_average():
    logits, labels = _logits(4.0, n=2000)
    one = fit_temperature(logits, labels)
    assert fit_temperature(logits[None], labels) == pytest.approx(one, rel=1e-4)
    assert fit_temperature(torch.stack([logits, logits]), labels) == pytest.approx(one, rel=1e-4)
    # two noisy views: their average is less confident than either, so a cooler temperature
    g = torch.Generator().manual_seed(1)
    views = torch.stack([logits + 3 * torch.randn(logits.shape, generator=g) for _ in range(2)])
    assert fit_temperature(views, labels) < fit_temperature(views[0], labels)


def test_tta_calibrates_on_the_views_evaluate_averages(flowers_root):
    from conftest import QUICK_FIT

    clf = FlowerClassifier(
        "tiny_test", **{**QUICK_FIT, "epochs": 3, "tta": "crops+flip", "known_recall": 0.75}
    ).fit(flowers_root)
    valid = clf.evaluate(flowers_root / "valid")  # the split calibration saw
    # the threshold keeps 75 % of these known photos below it, with the views evaluate uses
    assert valid["unknown_rate"] == pytest.approx(0.25, abs=1 / valid["n_images"] + 1e-9)
    centre_only = FlowerClassifier.load(
        clf.save(flowers_root.parent / "tta-cal.pt"), tta=False
    ).evaluate(flowers_root / "valid")
    assert valid["accuracy"] != centre_only["accuracy"] or valid["loss"] != centre_only["loss"]


def test_a_large_split_calibrates_on_an_even_sample_and_its_views_alone(
    flowers_root, tmp_path, monkeypatch
):
    """Only the sampled validation images get their test-time views computed; the
    threshold is theirs (a split of any size costs CALIBRATION_SIZE images' views)."""
    import shutil

    from conftest import QUICK_FIT
    from petalnet import calibration
    from petalnet.pipeline import ImagePipeline

    monkeypatch.setattr(calibration, "CALIBRATION_SIZE", 8)  # of 24 validation images
    calls: list[tuple[list[str], tuple[str, ...]]] = []
    features = ImagePipeline.features

    def spy(self, images, labels=None, **kwargs):
        views = tuple(v.label for v in kwargs.get("views", ())) or ("center",)
        calls.append(([str(i) for i in images], views))
        return features(self, images, labels, **kwargs)

    monkeypatch.setattr(ImagePipeline, "features", spy)
    params = {**QUICK_FIT, "epochs": 3, "tta": "crops", "known_recall": 0.75, "cache": True}
    clf = FlowerClassifier("tiny_test", **params, cache_dir=str(tmp_path / "rows")).fit(
        flowers_root
    )
    valid = sorted(str(p) for p in (flowers_root / "valid").rglob("*.jpg"))
    side = [paths for paths, views in calls if views == ("side 1", "side 2")]
    assert len(side) == 1 and len(side[0]) == 8  # views of 8 images, not of 24
    picked = side[0]
    assert set(picked) < set(valid) and len(set(picked)) == 8
    # evenly spread over the split (2 images a class): the first 8 would be 4 classes
    assert len({Path(p).parent.name for p in picked}) >= 6
    # the centre rows of the sample come with it (from the row store the training filled)
    assert [paths for paths, views in calls if views == ("center",)][-1] == picked

    # the threshold keeps 75 % of *these* images below it, under the views evaluate uses
    sample = tmp_path / "sample"
    for path in picked:
        target = sample / Path(path).parent.name / Path(path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    scored = clf.evaluate(sample)
    assert scored["n_images"] == 8
    assert scored["unknown_rate"] == pytest.approx(0.25)
