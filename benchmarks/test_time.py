"""Test-time levers on the grouped hold-out: a larger test crop (FixRes) and more views.

Usage (from the repository root)::

    python benchmarks/test_time.py --preset best-cpu --save /tmp/best-holdout.pt
    python benchmarks/test_time.py --model /tmp/best-holdout.pt     # again, without refitting

The preset is fitted once on ``train/`` minus the grouped 15 % hold-out (the split recipes
are chosen on; ``valid/`` is never read). Then every hold-out image is scored under each
test-time variant, with the fitted backbone and head as they are:

* ``crop``: the side of the centre crop the network sees; the resize keeps the backbone's
  own resize/crop ratio (256/224 for 224), so a larger crop shows the same field of view at
  a higher resolution. Training saw random resized crops, which enlarge objects, so a
  larger test crop can match their apparent size (Touvron et al., "Fixing the train-test
  resolution discrepancy", 2019).
* ``views``: ``center``; ``flip`` (it and its mirror, petalnet's ``tta=True``);
  ``three`` (the centre crop and the crops at both ends of the longer side) and
  ``three-flip`` (with their mirrors); ``five`` (the four corner crops and the centre one,
  torchvision's ``FiveCrop``) and ``ten`` (with their mirrors), all of the same resize.

Probabilities of the views are averaged (as :meth:`Calibration.judge` averages them).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch
from _shared import DEFAULT_DATA, emit, holdout_preset, link_holdout, machine
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

import petalnet
from petalnet.calibration import head_logits
from petalnet.data import load_training_data
from petalnet.features import prepare_backbone, run_backbone
from petalnet.precision import cpu_has_native_bf16, resolve_precision

VIEWS = ("center", "flip", "three", "three-flip", "five", "ten")


def _three(image: torch.Tensor, crop: int) -> list[torch.Tensor]:
    """Centre crop and the crops at both ends of the longer side (a ``(3, H, W)`` image)."""
    h, w = image.shape[-2:]
    top, left = (h - crop) // 2, (w - crop) // 2
    if w >= h:
        spots = [(top, 0), (top, left), (top, w - crop)]
    else:
        spots = [(0, left), (top, left), (h - crop, left)]
    return [image[..., y : y + crop, x : x + crop] for y, x in spots]


def _batches(
    images: list[Image.Image], crop: int, resize: int, interp: str, kind: str, mean: Any, std: Any
):
    """Yield ``(V, B, 3, crop, crop)`` normalised batches of 16 images for one variant."""
    mode = InterpolationMode(interp)
    base = v2.Compose([v2.ToImage(), v2.Resize(resize, interpolation=mode, antialias=True)])
    norm = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
    for start in range(0, len(images), 16):
        per_image = []
        for image in images[start : start + 16]:
            resized = base(image)
            if kind in ("five", "ten"):
                crops = list(v2.FiveCrop(crop)(resized))
            elif kind.startswith("three"):
                crops = _three(resized, crop)
            else:
                crops = [v2.CenterCrop(crop)(resized)]
            if kind in ("flip", "three-flip", "ten"):
                crops += [c.flip(-1) for c in crops]
            per_image.append(torch.stack([norm(c) for c in crops]))
        yield torch.stack(per_image, dim=1)


def score(
    clf: petalnet.FlowerClassifier, holdout: Path, crops: list[int], views: list[str]
) -> list[dict[str, Any]]:
    """Hold-out accuracy of every (crop, views) variant."""
    model = clf.fitted_model()
    device = torch.device("cpu")
    precision = resolve_precision(clf.amp, device)
    runner = prepare_backbone(model.backbone, device)
    head = model.head.eval()
    pre = model.backbone.preprocessing
    data = load_training_data(holdout, valid_fraction=0.0)
    index = model.class_to_idx
    images, labels = [], []
    for path, label in data.train:
        with Image.open(path) as im:
            images.append(im.convert("RGB"))
        labels.append(index[data.classes[label]])
    target = torch.tensor(labels)
    rows = []
    for crop in crops:
        resize = round(crop * pre.resize_size / pre.crop_size)
        for kind in views:
            start, hits = time.perf_counter(), 0
            pos = 0
            for batch in _batches(images, crop, resize, pre.interpolation, kind, pre.mean, pre.std):
                v, b = batch.shape[:2]
                feats = run_backbone(runner, batch.flatten(0, 1), device, precision)
                with torch.no_grad():
                    logits = head_logits(head, feats).view(v, b, -1)
                probs = logits.softmax(-1).mean(0)
                hits += int((probs.argmax(-1) == target[pos : pos + b]).sum())
                pos += b
            rows.append(
                {
                    "crop": crop,
                    "resize": resize,
                    "views": kind,
                    "accuracy": round(hits / len(images), 4),
                    "correct": hits,
                    "images": len(images),
                    "seconds": round(time.perf_counter() - start, 1),
                }
            )
            print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--preset", default="best-cpu")
    ap.add_argument("--model", type=Path, help="a checkpoint fitted on the same hold-out split")
    ap.add_argument("--save", type=Path, help="save the fitted model here")
    ap.add_argument("--crops", type=int, nargs="+", default=[224, 256, 288, 320])
    ap.add_argument("--views", nargs="+", choices=VIEWS, default=list(VIEWS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="petalnet-holdout-") as tmp:
        root = Path(tmp)
        link_holdout(args.data, 0.15, root, split="grouped")
        if args.model:
            clf = petalnet.FlowerClassifier.load(args.model)
        else:
            clf = holdout_preset(args.preset, random_state=args.seed)
            clf.fit(root)
            if args.save:
                clf.save(args.save)
        rows = score(clf, root / "valid", args.crops, args.views)
    result = {
        "preset": args.preset,
        "model": str(args.model) if args.model else None,
        "seed": args.seed,
        "date": date.today().isoformat(),
        "torch": torch.__version__,
        **machine(),
        "cpu_bf16": cpu_has_native_bf16(),
        "rows": rows,
    }
    return emit(result, args.json)


if __name__ == "__main__":
    main()
