"""The one image pipeline: the same features for paths and in-memory images, views, skips,
and the predict paths (one image, a list, many with bad files) built on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import petalnet
from petalnet.calibration import Calibration
from petalnet.features import CENTER, MIRROR, View, run_backbone
from petalnet.images import Unreadable, read_image
from petalnet.pipeline import ImagePipeline


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
