"""The one image pipeline: the same features for paths and in-memory images, views, skips,
and the predict paths (one image, a list, many with bad files) built on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import petalnet
from petalnet.calibration import Calibration
from petalnet.features import CENTER, MIRROR, View, fill_rows, run_backbone
from petalnet.images import Unreadable, read_image
from petalnet.pipeline import ImagePipeline, describe_tta
from petalnet.preprocessing import Preprocessing


@pytest.fixture
def pipeline():
    return ImagePipeline(
        petalnet.build_backbone("tiny_test"), device=torch.device("cpu"), use_cache=False
    )


def test_paths_and_in_memory_images_give_the_same_features(pipeline, flowers_root):
    paths = sorted((flowers_root / "test" / "3").glob("*.jpg"))
    from_files = pipeline.features(paths, unreadable=Unreadable("raise"))
    in_memory = [read_image(p) for p in paths]
    as_arrays = [np.asarray(im) for im in in_memory]
    for images in (in_memory, as_arrays):
        got = pipeline.features(images, unreadable=Unreadable("raise"))
        torch.testing.assert_close(got.features, from_files.features)
    assert from_files.features.shape == (len(paths), 32)
    assert from_files.labels.tolist() == list(range(len(paths)))  # positions without labels


def test_mirror_view_is_the_flipped_centre_crop(pipeline, flowers_root):
    path = flowers_root / "test" / "5" / "img_000.jpg"
    both = pipeline.features([path], unreadable=Unreadable(), views=[CENTER, MIRROR])
    assert both.features.shape == (2, 1, 32)
    crop = pipeline.backbone.preprocessing.transform()(read_image(path))
    mirror = run_backbone(pipeline.runner, crop.flip(-1)[None], pipeline.device)
    torch.testing.assert_close(both.features[1], mirror)
    assert not torch.allclose(both.features[0], both.features[1])
    assert ImagePipeline.test_views(tta=True) == [CENTER, MIRROR]
    assert ImagePipeline.test_views(tta=False) == [CENTER]
    assert View.augmented(2) == [View("augmented", 1), View("augmented", 2)]
    assert View.augmented(0) == [CENTER]


def test_side_crops_sit_at_both_ends_of_the_longer_side():
    pre = Preprocessing(resize_size=36, crop_size=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    wide = torch.arange(48, dtype=torch.uint8).expand(3, 36, 48)  # each pixel: its column
    for at, first, last in (("start", 0, 31), ("center", 8, 39), ("end", 16, 47)):
        crop = pre.transform(at)(wide)
        assert crop.shape == (3, 32, 32)
        assert crop[0, 0, 0] * 255 == pytest.approx(first, abs=1e-3)
        assert crop[0, 0, -1] * 255 == pytest.approx(last, abs=1e-3)
    tall = wide.transpose(1, 2)  # 48 rows: the longer side is the height
    assert pre.transform("start")(tall)[0, 0, 0] * 255 == pytest.approx(0, abs=1e-3)
    assert pre.transform("end")(tall)[0, -1, 0] * 255 == pytest.approx(47, abs=1e-3)


def test_crops_tta_averages_the_side_crops_and_their_mirrors(pipeline, flowers_root):
    sides = [View("side", 1), View("side", 2)]
    assert ImagePipeline.test_views("flip") == [CENTER, MIRROR]
    assert ImagePipeline.test_views("crops") == [CENTER, *sides]
    mirrored = [View(mirrored=True), View("side", 1, True), View("side", 2, True)]
    assert ImagePipeline.test_views("crops+flip") == [CENTER, *sides, *mirrored]
    with pytest.raises(ValueError, match="crops"):
        ImagePipeline.test_views("ten")  # type: ignore[arg-type]
    path = flowers_root / "test" / "5" / "img_000.jpg"
    views = ImagePipeline.test_views("crops+flip")
    got = pipeline.features([path], unreadable=Unreadable(), views=views)
    assert got.features.shape == (6, 1, 32)
    pre = pipeline.backbone.preprocessing
    for v, (at, flip) in enumerate(
        [(a, f) for f in (False, True) for a in ("center", "start", "end")]
    ):
        crop = pre.transform(at)(read_image(path))
        want = run_backbone(
            pipeline.runner, (crop.flip(-1) if flip else crop)[None], pipeline.device
        )
        torch.testing.assert_close(got.features[v], want)
    assert len({tuple(row[0].tolist()) for row in got.features}) == 6  # six different views
    assert describe_tta(False) == "TTA off"
    assert describe_tta(True) == describe_tta("flip") == "TTA on (centre crop and mirror averaged)"
    assert "both ends of the longer side" in describe_tta("crops")


def test_crops_of_one_resize_equal_each_crop_alone(flowers_root):
    pre = petalnet.build_backbone("tiny_test").preprocessing
    image = read_image(flowers_root / "test" / "2" / "img_000.jpg")
    ats = ("center", "start", "end")
    together = pre.crops(ats)(image)
    assert len(together) == 3
    for at, crop in zip(ats, together, strict=True):
        assert torch.equal(crop, pre.transform(at)(image))


def test_views_share_one_decode_and_are_stored_each_under_its_own_key(
    flowers_root, tmp_path, backbone_calls, decoded_files
):
    cached = ImagePipeline(
        petalnet.build_backbone("tiny_test"), device=torch.device("cpu"), cache_dir=tmp_path
    )
    paths = sorted((flowers_root / "test" / "4").glob("*.jpg"))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    views = ImagePipeline.test_views("crops+flip")
    got = cached.features([*paths, bad], unreadable=Unreadable("collect"), views=views)
    assert len(decoded_files) == len(paths) + 1  # each file read once for the six views
    assert got.features.shape == (6, len(paths), 32)
    assert [u.position for u in got.skipped] == [len(paths)]  # reported once, not per view
    assert sum(backbone_calls) == 6 * len(paths)
    backbone_calls.clear()
    for v, view in enumerate(views):  # every view was stored under its own key
        alone = cached.features(paths, unreadable=Unreadable("raise"), views=[view])
        torch.testing.assert_close(alone.features, got.features[v])
    assert backbone_calls == []
    # an augmented view is drawn from its own seed: the pipeline gives it a pass of its own
    mixed = cached.features(paths, unreadable=Unreadable(), views=[View("augmented", 1), CENTER])
    torch.testing.assert_close(mixed.features[1], got.features[0])
    with pytest.raises(ValueError, match="augmented"):
        fill_rows(
            cached.runner,
            paths,
            torch.zeros(2, len(paths), 32),
            preprocessing=cached.backbone.preprocessing,
            device=cached.device,
            unreadable=Unreadable(),
            views=[View("augmented", 1), CENTER],
        )


def test_unreadable_files_are_skipped_with_their_positions(pipeline, flowers_root, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really")
    good = flowers_root / "test" / "1" / "img_000.jpg"
    policy = Unreadable("collect")
    got = pipeline.features([good, bad, good, bad], [7, 8, 9, 10], unreadable=policy)
    assert got.positions.tolist() == [0, 2] and got.labels.tolist() == [7, 9]
    # a repeated bad file is reported at each of its positions; the policy warns once
    assert [u.position for u in got.skipped] == [1, 3]
    assert all("bad.jpg" in u.message == policy.messages[0] for u in got.skipped)
    assert len(policy.messages) == 1


def test_head_outputs_average_probabilities_over_views():
    head = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.LogSoftmax(dim=1))
    views = torch.randn(2, 4, 2)
    cpu, identity = torch.device("cpu"), Calibration()
    got = identity.outputs(head, views, cpu).log_probs
    with torch.no_grad():
        expected = ((head(views[0]).exp() + head(views[1]).exp()) / 2).log()
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(identity.outputs(head, views[0], cpu).log_probs, head(views[0]))
        # a temperature divides the logits of each view before the average
        hot = Calibration(temperature=2.0).outputs(head, views, cpu).log_probs
        logits = [head[0](v) for v in views]
        expected = (((logits[0] / 2).softmax(1) + (logits[1] / 2).softmax(1)) / 2).log()
        torch.testing.assert_close(hot, expected)


def same(a, b):
    """The same classes in the same order, probabilities equal up to float rounding (one
    image and a batch of several take different BLAS paths)."""
    return [(p.class_id, p.index) for p in a] == [(p.class_id, p.index) for p in b] and all(
        p.probability == pytest.approx(q.probability, rel=1e-5) for p, q in zip(a, b, strict=True)
    )


def test_predict_one_list_and_many_share_the_path(fitted, flowers_root, tmp_path):
    paths = [flowers_root / "test" / c / "img_001.jpg" for c in ("2", "9", "12")]
    one = fitted.predict(paths[0], topk=3)
    listed = fitted.predict(paths, topk=3)
    assert same(listed[0], one)
    html = tmp_path / "page.jpg"
    html.write_text("<html></html>")
    with pytest.raises(petalnet.ImageReadError, match="page.jpg"):
        fitted.predict(html)
    with pytest.raises(petalnet.ImageReadError, match="page.jpg"):
        fitted.predict([paths[0], html])
    results = list(fitted.iter_predictions([paths[0], html, *paths[1:]], topk=3, chunk_size=2))
    assert [r.image for r in results] == [paths[0], html, *paths[1:]]
    expected = [listed[0], [], listed[1], listed[2]]
    assert all(same(r.predictions, e) for r, e in zip(results, expected, strict=True))
    assert results[1].error is not None and "page.jpg" in results[1].error
    assert all(r.error is None for r in results if r.image != html)
