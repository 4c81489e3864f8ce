"""One image to a tensor, from any source, and the one policy for unreadable files."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from petalnet import ImageReadError, PetalnetWarning
from petalnet.errors import NotAnImageError
from petalnet.images import Unreadable, image_loader, image_to_tensor, read_image


def _save(tmp_path, image, name, **kw):
    path = tmp_path / name
    image.save(path, **kw)
    return path


def test_read_image_modes(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    out = read_image(_save(tmp_path, rgba, "a.png"))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)
    gray = read_image(_save(tmp_path, Image.new("L", (8, 8), 100), "g.png"))
    assert gray.getpixel((0, 0)) == (100, 100, 100)
    sixteen = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))
    assert read_image(_save(tmp_path, sixteen, "s.png")).getpixel((0, 0)) == (255, 255, 255)
    cmyk = read_image(_save(tmp_path, Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "c.jpg"))
    r, g, b = cmyk.getpixel((0, 0))
    assert r > 200 and g < 60 and b < 60
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 128, 0] * 256)
    assert read_image(_save(tmp_path, pal, "p.png")).getpixel((0, 0)) == (0, 128, 0)


def test_read_image_applies_exif_orientation(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = _save(tmp_path, img, "rot.jpg", exif=exif.tobytes())
    assert read_image(path).size == (20, 40)


def test_read_image_draft_mode_decodes_near_target_size(tmp_path):
    path = _save(tmp_path, Image.new("RGB", (1600, 1200), (10, 200, 30)), "big.jpg")
    img = read_image(path, draft_size=256)
    assert min(img.size) >= 256 and img.size[0] <= 800


def test_unreadable_files_name_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_text("<html>404 not found</html>")
    with pytest.raises(ImageReadError, match="broken.jpg"):
        read_image(bad)
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, format="JPEG")
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(buf.getvalue()[:100])
    with pytest.raises(ImageReadError, match="trunc.jpg"):
        read_image(trunc)
    with pytest.raises(ImageReadError, match="missing.jpg"):
        read_image(tmp_path / "missing.jpg")


def test_unreadable_policy_raise_warn_collect():
    with pytest.raises(ImageReadError, match="bad.jpg.*stops here"):
        Unreadable("raise", hint=" (stops here)")("Cannot read image 'bad.jpg'")
    warn = Unreadable("warn")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for name in ("a", "a", "b"):  # the same file again (next epoch) counts once
            warn(f"Cannot read image '{name}.jpg'")
    assert [str(w.message) for w in record] == [
        "Skipped: Cannot read image 'a.jpg'",
        "Skipped: Cannot read image 'b.jpg'",
    ]
    assert all(w.category is PetalnetWarning for w in record)
    assert warn.messages == ["Cannot read image 'a.jpg'", "Cannot read image 'b.jpg'"]
    collect = Unreadable("collect")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # collecting never warns
        collect("x")
    assert collect.messages == ["x"]
    assert Unreadable.for_training(strict=True).mode == "raise"
    assert Unreadable.for_training(strict=False).mode == "warn"


def test_in_memory_images_of_every_kind():
    def to_tensor(im):
        return torch.as_tensor(np.array(im)).permute(2, 0, 1)

    gray = np.full((4, 5), 200, np.uint8)
    assert image_to_tensor(gray, to_tensor).shape == (3, 4, 5)
    rgba = np.zeros((4, 5, 4), np.uint8)  # fully transparent: composited on white
    assert int(image_to_tensor(rgba, to_tensor).min()) == 255
    floats = np.full((4, 5, 3), 0.5, np.float32)  # float arrays in [0, 1] are scaled
    assert int(image_to_tensor(floats, to_tensor)[0, 0, 0]) == 128
    with pytest.raises(ValueError, match="uint8 image array"):
        image_to_tensor(np.zeros((4, 5, 3), np.int64), to_tensor)
    with pytest.raises(ValueError, match="HxW or HxWxC"):
        image_to_tensor(np.zeros((2, 4, 5, 3), np.uint8), to_tensor)
    with pytest.raises(ValueError, match="CxHxW"):
        image_to_tensor(torch.zeros(2, 4, 5), lambda t: t)
    assert image_to_tensor(torch.zeros(1, 4, 5), lambda t: t).shape == (3, 4, 5)
    with pytest.raises(TypeError, match="Cannot predict on int"):
        image_to_tensor(42, to_tensor)  # type: ignore[arg-type]


def test_loader_carries_on_past_bad_files_and_says_where(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (6, 6), (10, 20, 30)).save(good)
    html = tmp_path / "page.jpg"
    html.write_text("<html>not an image</html>")
    items = [good, html, Image.new("RGB", (6, 6)), tmp_path / "missing.jpg", good]
    loader = image_loader(
        items, lambda im: torch.as_tensor(np.array(im)).float(), draft_size=None, batch_size=2
    )
    kept, bad = [], []
    for batch, positions, errors in loader:
        assert batch is None or len(batch) == len(positions)
        kept += positions
        bad += errors
    assert kept == [0, 2, 4]
    assert [p for p, _ in bad] == [1, 3]
    assert "page.jpg" in str(bad[0][1]) and "missing.jpg" in str(bad[1][1])
    assert isinstance(bad[0][1], NotAnImageError)  # typed: the kind travels with it
