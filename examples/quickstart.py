"""Quickstart: train on a flower folder, evaluate, predict one image, save and reload.

    python examples/quickstart.py                        # the shared Flowers-102 copy
    python examples/quickstart.py path/to/flowers --backbone efficientnet_lite0 --epochs 5

DATA_DIR is a root with train/ and valid/ class folders (and maybe test/ and
cat_to_name.json), or one folder of class folders.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from petalnet import FlowerClassifier

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "flowers102"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Train, evaluate, predict, save, reload.")
    ap.add_argument("data_dir", nargs="?", type=Path, default=DEFAULT_DATA.resolve())
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--weights", default="DEFAULT")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("runs/quickstart.pt"))
    args = ap.parse_args(argv)

    weights = None if args.weights == "none" else args.weights
    clf = FlowerClassifier(args.backbone, weights=weights, epochs=args.epochs, random_state=0)
    clf.fit(args.data_dir)
    print(f"best epoch {clf.best_epoch_} of {len(clf.history_)}")

    report = clf.evaluate(args.data_dir)
    print(
        f"accuracy {report['accuracy']:.1%}, top-5 {report['top5_accuracy']:.1%} "
        f"on {report['n_images']} images of {report['folder']}"
    )

    first_class = clf.classes_[0]
    image = next((args.data_dir / "valid" / first_class).glob("*"), None) or next(
        (args.data_dir / first_class).glob("*")
    )
    print(f"\n{image} (true class {first_class}):")
    top = clf.predict(image, topk=5)
    if top.unknown:  # its novelty score is above the threshold chosen on the valid split
        print("  unknown flower: not one of those it knows; the closest are")
    for p in top:
        print(f"  {p.label:30} {p.probability:6.1%}")

    path = clf.save(args.out)
    again = FlowerClassifier.load(path)
    assert again.predict(image, topk=1)[0].class_id == clf.predict(image, topk=1)[0].class_id
    print(f"\nsaved and reloaded {path}")


if __name__ == "__main__":
    main()
