"""The three test-time crops from one pass over the band that holds them, against three passes.

Usage::

    python benchmarks/band_windows.py

fast-cpu (frozen efficientnet_lite0) is fitted on ``train/`` minus the grouped 15 %
hold-out. Each hold-out image is resized (shorter side 256) and cut to the 224-pixel band
along its longer side that holds the centre crop and the crops at both ends. Then, in
float32 at batch 1, once per image and its mirror:

* **crops**: each 224 x 224 crop through the whole front (what petalnet does),
* **band windows**: the band through the front without its global pool; each crop's row
  is the mean of the 7 x 7 window of the map under it.

The head scores both sets of rows at the fitted temperature. Prints the correct hold-out
images of the centre crop, the three crops and the six views each way, and the time of
each way (docs/benchmarks.md, "Levers measured today").
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms.v2.functional as TF
from _shared import DEFAULT_DATA, emit, holdout_preset, labelled_images, link_holdout, machine

from petalnet.backbones.lite import EfficientNetLite
from petalnet.features import prepare_backbone
from petalnet.images import read_image


def _cut(x: torch.Tensor, start: int, size: int, wide: bool) -> torch.Tensor:
    """``size`` columns (``wide``) or rows from ``start`` of the last two dimensions."""
    return x[..., start : start + size] if wide else x[..., start : start + size, :]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="petalnet-holdout-"))
    link_holdout(args.data, 0.15, root, split="grouped")
    cache = Path(tempfile.mkdtemp(prefix="petalnet-bench-cache-"))
    clf = holdout_preset("fast-cpu", cache_dir=cache, random_state=0, verbose=0).fit(root)
    classes = list(clf.classes_)
    paths, listed = labelled_images(root / "valid", classes)
    labels = torch.tensor(listed)
    front = prepare_backbone(clf.model_.backbone, torch.device("cpu"))
    net = next(m for m in front.modules() if isinstance(m, EfficientNetLite))
    body = torch.nn.Sequential(*[m for n, m in net.named_children() if n != "pool"]).eval()
    head, temperature = clf.model_.head.eval(), clf.model_.calibration.temperature
    pre = clf.model_.backbone.meta.preprocessing
    mean = torch.tensor(pre.mean).view(3, 1, 1)
    std = torch.tensor(pre.std).view(3, 1, 1)
    crop, side = pre.crop_size, pre.crop_size // 32  # lite's map is 1/32 of its input
    probs: dict[str, list[torch.Tensor]] = {"crops": [], "band windows": []}
    seconds = {"crops": 0.0, "band windows": 0.0}
    with torch.inference_mode():
        for path in paths:
            x = TF.to_image(read_image(path, pre.resize_size))
            x = TF.resize(x, pre.resize_size, antialias=True)
            x = (TF.to_dtype(x, torch.float32, scale=True) - mean) / std
            h, w = x.shape[-2:]
            wide = w >= h
            start = ((h if wide else w) - crop) // 2
            band = x[:, start : start + crop] if wide else x[:, :, start : start + crop]
            band = band[None].contiguous(memory_format=torch.channels_last)
            long = band.shape[-1] if wide else band.shape[-2]
            bands = (band, band.flip(-1))
            start_t = time.perf_counter()
            offsets = (0, (long - crop) // 2, long - crop)
            views = [_cut(b, o, crop, wide) for b in bands for o in offsets]
            rows = torch.cat([front(v).flatten(1) for v in views])
            seconds["crops"] += time.perf_counter() - start_t
            probs["crops"].append((head(rows) / temperature).softmax(-1))
            start_t = time.perf_counter()
            windows = []
            for b in bands:
                m = body(b)
                cells = m.shape[-1] if wide else m.shape[-2]
                for o in (0, (cells - side) // 2, cells - side):
                    windows.append(_cut(m, o, side, wide).mean((-2, -1)))
            seconds["band windows"] += time.perf_counter() - start_t
            probs["band windows"].append((head(torch.cat(windows)) / temperature).softmax(-1))
    correct: dict[str, dict[str, int]] = {}
    for way, got in probs.items():
        stacked = torch.stack(got)  # (N, 6 views, C)
        correct[way] = {
            name: int((stacked[:, sel].mean(1).argmax(-1) == labels).sum())
            for name, sel in (("centre", [1]), ("crops", [0, 1, 2]), ("crops+flip", range(6)))
        }
        print(way, correct[way], f"{seconds[way]:.1f} s", flush=True)
    return emit(
        {
            "command": "python benchmarks/band_windows.py",
            "date": time.strftime("%Y-%m-%d"),
            **machine(),
            "holdout_images": len(labels),
            "correct": correct,
            "seconds": {k: round(v, 1) for k, v in seconds.items()},
        },
        args.json,
    )


if __name__ == "__main__":
    main()
