"""One photo through ``predict`` with test-time views: one decode for all views, or one each.

Usage (from the repository root)::

    python benchmarks/predict_latency.py                  # a 4032 x 3024 phone-sized JPEG

A small fast-cpu model (6 classes of DATA/train, 2 epochs: the head's accuracy does not
matter here, only the path) predicts one large JPEG, as ``petalnet predict`` and ``serve``
do for an upload. Side by side in this process, best of 3 rounds of 5 calls:

* ``tta="crops+flip"`` as petalnet does it: the six views (three crops and their
  mirrors) rendered from one decode and one resize of the photo;
* the same views with ``ImagePipeline.features`` split into one call per view, each
  decoding and resizing the photo again (what petalnet did before f26fb10);
* ``tta=False``, the centre crop alone, for scale.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch
from _shared import DEFAULT_DATA, emit, link, machine
from PIL import Image

import petalnet
from petalnet.features import CENTER, Features
from petalnet.pipeline import ImagePipeline
from petalnet.precision import cpu_has_native_bf16


def _one_call_per_view(self: ImagePipeline, images: Any, labels: Any = None, **kw: Any) -> Any:
    """``ImagePipeline.features`` with each view decoded on its own (the old path)."""
    views = list(kw.pop("views", [CENTER]))
    if len(views) < 2:
        return _features(self, images, labels, views=views, **kw)
    each = [_features(self, images, labels, views=[v], **kw) for v in views]
    return Features(torch.stack([f.features for f in each]), *each[0][1:])


_features = ImagePipeline.features


def _latency(model: Path, photo: Path, tta: Any, rounds: int = 3, calls: int = 5) -> float:
    clf = petalnet.FlowerClassifier.load(model, tta=tta)
    clf.predict(photo, topk=5)  # warm-up
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            clf.predict(photo, topk=5)
        best = min(best, (time.perf_counter() - start) / calls)
    return round(best * 1000, 1)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--size", type=int, nargs=2, default=(4032, 3024), help="photo width height")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="petalnet-latency-"))
    classes = sorted((args.data / "train").iterdir())[:6]
    for folder in classes:
        files = sorted(folder.glob("*.jpg"))[:12]
        for split, part in (("train", files[:9]), ("valid", files[9:])):
            for f in part:
                link(f, tmp / "data" / split / folder.name / f.name)
    photo = tmp / "photo.jpg"
    first = sorted(classes[0].glob("*.jpg"))[0]
    with Image.open(first) as im:
        im.convert("RGB").resize(tuple(args.size), Image.Resampling.BILINEAR).save(
            photo, quality=90
        )
    clf = petalnet.FlowerClassifier.from_preset(
        "fast-cpu", refit=False, epochs=2, cache_dir=tmp / "cache", verbose=0
    )
    clf.fit(tmp / "data")
    model = clf.save(tmp / "model.pt")
    shared = _latency(model, photo, "crops+flip")
    ImagePipeline.features = _one_call_per_view  # type: ignore[method-assign]
    try:
        apart = _latency(model, photo, "crops+flip")
    finally:
        ImagePipeline.features = _features  # type: ignore[method-assign]
    centre = _latency(model, photo, False)
    return emit(
        {
            "command": f"python benchmarks/predict_latency.py --size {args.size[0]} {args.size[1]}",
            "date": date.today().isoformat(),
            "torch": torch.__version__,
            **machine(),
            "cpu_bf16": cpu_has_native_bf16(),
            "photo": f"{args.size[0]} x {args.size[1]} JPEG",
            "crops+flip, one decode (ms)": shared,
            "crops+flip, a decode per view (ms)": apart,
            "centre crop only (ms)": centre,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
