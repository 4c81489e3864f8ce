"""Perceptual hashes: what tells a copy of a photo from another shot of the same plant.

Backbone features say *what* a photo shows, so two shots of one plant a second apart score as
high as a re-encoded copy of one of them. A perceptual hash (pHash, via the ``imagehash``
library: the DCT of a 32x32 grey thumbnail, one bit per low frequency) says what the picture
*looks like*, and survives re-encoding, resizing and small brightness changes almost
unchanged, while different shots differ in a third of its 64 bits or more.

A crop moves every frequency, so each image's row holds the hash of the whole picture and of
ten crops of it (the centre and each corner, keeping 95 % and 90 % of each side); two images
are compared as the whole of one against every crop of the other, both ways, so a copy
trimmed by up to 10 % at any corner or evenly all round matches a crop of its original. The
row ends with an 8-byte digest of the decoded pixels (exact copies).

Rows are float16 ``0``/``1`` bits (and digest bytes, each an exact small integer), so the
Hamming distances of a block of rows against others are one matrix product, and rows live
in the same row store as features.
"""

from __future__ import annotations

import hashlib

import imagehash
import numpy as np
import torch
from PIL import Image

__all__ = [
    "COPY_DISTANCE",
    "CROPS",
    "HASH_BITS",
    "ROW_SIZE",
    "copy_pairs",
    "digests",
    "distance",
    "hash_row",
]

HASH_BITS = 64
"""Bits of one pHash (8x8 low frequencies)."""

CROPS: tuple[tuple[float, float, float], ...] = (
    (1.0, 0.5, 0.5),
    *(
        (keep, x, y)
        for keep in (0.95, 0.9)
        for x, y in ((0.5, 0.5), (0, 0), (1, 0), (0, 1), (1, 1))
    ),
)
"""``(fraction of each side kept, horizontal anchor, vertical anchor)`` of each hashed crop:
the whole picture first, then the centre and the four corners at 95 % and 90 %."""

_DIGEST_BYTES = 8
ROW_SIZE = len(CROPS) * HASH_BITS + _DIGEST_BYTES
"""Values in one image's hash row."""

COPY_DISTANCE = 5
"""Two images are copies when one's whole-picture hash is within this many bits (of 64) of
any hashed crop of the other. Chosen with ``benchmarks/check_deep.py`` on Flowers-102: every
planted copy (JPEG quality 95/75/50, scaled to 0.9/0.7/0.5, 5 % and 10 % crops centred and
at a corner, brightness +-10 %) is within 4 bits; among the natural photos, the pairs at 6
and 8 bits looked at were other shots of one plant or unrelated photos (a daisy and a
dandelion), those within 4 the same shot."""


def _crop(image: Image.Image, keep: float, x: float, y: float) -> Image.Image:
    if keep == 1.0:
        return image
    w, h = image.size
    cw, ch = max(1, round(w * keep)), max(1, round(h * keep))
    left, top = round((w - cw) * x), round((h - ch) * y)
    return image.crop((left, top, left + cw, top + ch))


def hash_row(image: Image.Image) -> torch.Tensor:
    """The hash row of one decoded RGB image (see the module docs).

    Args:
        image: The decoded picture.

    Returns:
        ``(ROW_SIZE,)`` float16: the bits of each crop's pHash, then the pixel digest bytes.
    """
    bits = [imagehash.phash(_crop(image, keep, x, y)).hash.reshape(-1) for keep, x, y in CROPS]
    pixels = np.asarray(image)
    raw = hashlib.blake2b(str(pixels.shape).encode() + pixels.tobytes(), digest_size=8).digest()
    row = np.concatenate([*bits, np.frombuffer(raw, dtype=np.uint8)]).astype(np.float16)
    return torch.from_numpy(row)


def digests(rows: torch.Tensor) -> list[bytes]:
    """The pixel digest at the end of each hash row: equal digests, the same pixels."""
    return [bytes(d) for d in rows[:, -_DIGEST_BYTES:].to(torch.uint8).numpy()]


def copy_pairs(
    rows: torch.Tensor, max_distance: int = COPY_DISTANCE, block: int = 1024
) -> list[tuple[int, int, int]]:
    """Pairs ``(i, j, distance)``, ``i < j``, of images within ``max_distance`` bits.

    The distance is the smallest Hamming distance between one image's whole-picture hash and
    any hashed crop of the other, either way round. Blocks of ``block`` rows are compared
    with the rows after them, so memory holds a strip, never the ``N x N`` matrix.

    Args:
        rows: ``(N, ROW_SIZE)`` hash rows (in memory or memory-mapped).
        max_distance: The largest distance reported.
        block: Rows compared at a time.

    Returns:
        The pairs, by ``i`` then ``j``.
    """
    n = len(rows)
    pairs: list[tuple[int, int, int]] = []
    for start in range(0, n, block):
        a = _bits(rows[start : start + block])
        for later in range(start, n, block):
            b = _bits(rows[later : later + block])
            distance = torch.minimum(_whole_vs_crops(a, b), _whole_vs_crops(b, a).T)
            i_index = torch.arange(start, start + len(a))[:, None]
            j_index = torch.arange(later, later + len(b))[None, :]
            distance[j_index <= i_index] = HASH_BITS + 1  # each pair once, not itself
            for i, j in (distance <= max_distance).nonzero().tolist():
                pairs.append((start + i, later + j, int(distance[i, j])))
    return pairs


def _bits(rows: torch.Tensor) -> torch.Tensor:
    """``(N, crops, 64)`` float bits of hash rows (the digest left off)."""
    return rows[:, : len(CROPS) * HASH_BITS].float().reshape(len(rows), len(CROPS), HASH_BITS)


def _whole_vs_crops(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(len(a), len(b))``: fewest differing bits of ``a``'s whole hash and ``b``'s crops."""
    whole = a[:, 0]  # (A, 64)
    agree = whole @ b.reshape(-1, HASH_BITS).T  # (A, B * crops) ones in common
    ones_a = whole.sum(1)[:, None]
    ones_b = b.reshape(-1, HASH_BITS).sum(1)[None, :]
    hamming = ones_a + ones_b - 2 * agree
    return hamming.reshape(len(a), len(b), -1).amin(2)


def distance(a: torch.Tensor, b: torch.Tensor) -> int:
    """The distance :func:`copy_pairs` uses, between two hash rows."""
    x, y = _bits(a[None]), _bits(b[None])
    return int(torch.minimum(_whole_vs_crops(x, y), _whole_vs_crops(y, x)))
