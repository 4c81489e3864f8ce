"""What the training loop iterates over: cached rows (views by epoch) or streamed images."""

from __future__ import annotations

import pytest
import torch

from petalnet import PetalnetWarning, Preprocessing
from petalnet.batches import ImageBatches, TensorBatches
from petalnet.images import Unreadable

CPU = torch.device("cpu")


def test_tensor_batches_follow_the_order_and_rotate_views():
    rows = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)  # 2 views of 5 rows
    data = TensorBatches(rows, torch.tensor([0, 1, 2, 3, 4]), CPU)
    order = torch.tensor([4, 0, 2, 1, 3])
    first = list(data.batches(order, 2, epoch=1))
    assert [y.tolist() for _, y in first] == [[4, 0], [2, 1], [3]]
    torch.testing.assert_close(first[0][0], rows[0][[4, 0]])
    second = list(data.batches(order, 5, epoch=2))  # epoch 2: the second view
    torch.testing.assert_close(second[0][0], rows[1][order])
    third = list(data.batches(order, 5, epoch=3))  # and back to the first
    torch.testing.assert_close(third[0][0], rows[0][order])
    flat = TensorBatches(rows[0], torch.arange(5), CPU)
    torch.testing.assert_close(next(flat.batches(order, 5, epoch=7))[0], rows[0][order])


def test_image_batches_decode_per_epoch_and_skip_bad_files(flowers_root, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    samples = [(flowers_root / "train" / "1" / "img_000.jpg", 0), (bad, 1)]
    samples.append((flowers_root / "train" / "2" / "img_000.jpg", 1))
    policy = Unreadable("warn")
    pre = Preprocessing(resize_size=36, crop_size=32)
    data = ImageBatches(samples, pre, CPU, policy, augment=True, seed=0, num_workers=0)
    with pytest.warns(PetalnetWarning, match="bad.jpg"):
        batches = list(data.batches(torch.tensor([2, 1, 0]), 8, epoch=1))
    ((x, y),) = batches
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [1, 0]
    assert data.skipped_rows == {1} and len(policy.messages) == 1
    again = next(iter(data.batches(torch.tensor([2, 1, 0]), 8, epoch=1)))[0]
    torch.testing.assert_close(again, x)  # the same (image, epoch) draws the same
    other = next(iter(data.batches(torch.tensor([2, 1, 0]), 8, epoch=2)))[0]
    assert not torch.equal(other, x)  # a new epoch draws afresh
    assert len(policy.messages) == 1  # one message per file across epochs
    plain = ImageBatches(samples[:1], pre, CPU, policy, augment=False, seed=0, num_workers=0)
    centre = next(plain.batches(torch.tensor([0]), 1, epoch=1))[0]
    torch.testing.assert_close(centre, next(plain.batches(torch.tensor([0]), 1, epoch=5))[0])
