"""Predict every image of a folder (recursively) into a CSV file, in bounded memory.

    python examples/predict_folder_to_csv.py CHECKPOINT IMAGE_FOLDER preds.csv [--top_k 3]

The same as ``petalnet predict IMAGE_FOLDER CHECKPOINT --output preds.csv``, written out
with the Python API: images are predicted in chunks and each chunk is written before the
next is read, so a folder of any size fits in memory.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from petalnet import FlowerClassifier
from petalnet.data import IMG_EXTENSIONS

CHUNK = 64


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Predict a folder of images into a CSV file.")
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("folder", type=Path)
    ap.add_argument("output", type=Path)
    ap.add_argument("--top_k", "--top-k", type=int, default=3)  # as `petalnet predict`
    args = ap.parse_args(argv)

    clf = FlowerClassifier.load(args.checkpoint)
    clf.verbose = 0
    images = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS)
    with args.output.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["image"]
            + [
                f"{field}_{k}"
                for k in range(1, args.top_k + 1)
                for field in ("label", "probability")
            ]
        )
        for i in range(0, len(images), CHUNK):
            chunk = images[i : i + CHUNK]
            for image, top in zip(chunk, clf.predict(chunk, topk=args.top_k), strict=True):
                row = [str(image)]
                for p in top:
                    row += [p.label, f"{p.probability:.4f}"]
                writer.writerow(row)
    print(f"wrote {len(images)} rows to {args.output}")


if __name__ == "__main__":
    main()
