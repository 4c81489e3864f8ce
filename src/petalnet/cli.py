"""The ``petalnet`` command line: train, predict, evaluate, list backbones.

Every petalnet error is printed as one line prefixed with ``petalnet: error:`` and exits
with status 1 (2 for bad usage); no traceback is shown.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from petalnet._version import __version__
from petalnet.errors import PetalnetError

__all__ = ["main"]

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


def _device(gpu: bool, device: str | None) -> str:
    if device:
        return device
    return "auto" if gpu else "cpu"


def _cmd_train(args: argparse.Namespace) -> int:
    from petalnet.classifier import FlowerClassifier

    clf = FlowerClassifier(
        args.arch,
        weights=None if args.weights.lower() == "none" else args.weights,
        hidden_units=args.hidden_units,
        dropout=args.dropout,
        learning_rate=args.learning_rate,
        epochs=args.epochs,
        batch_size=args.batch_size,
        device=_device(args.gpu, args.device),
        category_names=args.category_names,
        random_state=args.seed,
        amp=args.amp,
        verbose=0 if args.quiet else 1,
    )
    clf.fit(args.data_dir)
    path = clf.save(Path(args.save_dir) / args.checkpoint_name)
    best = clf.history_[clf.best_epoch_ - 1] if clf.best_epoch_ else None
    if best is not None:
        print(f"best epoch {clf.best_epoch_}: valid accuracy {best['valid_accuracy']:.2%}")
    print(f"saved {path}")
    return 0


def _expand_images(inputs: Sequence[str]) -> list[Path]:
    images: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            images += sorted(
                f
                for f in p.rglob("*")
                if f.suffix.lower() in _IMAGE_SUFFIXES and not f.name.startswith(".")
            )
        else:
            images.append(p)
    return images


def _cmd_predict(args: argparse.Namespace) -> int:
    from petalnet.classifier import FlowerClassifier
    from petalnet.data import load_category_names

    clf = FlowerClassifier.load(args.checkpoint, device=_device(args.gpu, args.device))
    if args.category_names:
        clf.category_names_ = load_category_names(args.category_names)
    images = _expand_images(args.images)
    if not images:
        raise PetalnetError(f"No images found in {', '.join(args.images)}.")
    preds = clf.predict(images, topk=args.top_k)
    for path, top in zip(images, preds, strict=True):
        if args.json:
            print(json.dumps({"image": str(path), "top": [p.to_dict() for p in top]}))
            continue
        print(path)
        for rank, p in enumerate(top, 1):  # type: ignore[arg-type]
            print(f"  {rank}. {p.label:<32} {p.probability:7.2%}  (class {p.class_id})")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from petalnet.classifier import FlowerClassifier

    clf = FlowerClassifier.load(args.checkpoint, device=_device(args.gpu, args.device))
    report = clf.evaluate(args.data_dir)
    print(
        f"{report['folder']}: accuracy {report['accuracy']:.2%}, top-5 "
        f"{report['top5_accuracy']:.2%}, loss {report['loss']:.4f} on {report['n_images']} images"
    )
    return 0


def _cmd_backbones(args: argparse.Namespace) -> int:
    from petalnet.backbones import list_backbones

    for name in list_backbones(args.pattern or None):
        print(name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser (also used by the docs)."""
    parser = argparse.ArgumentParser(
        prog="petalnet", description="Train and use flower-photo classifiers."
    )
    parser.add_argument("--version", action="version", version=f"petalnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a classifier on an image folder")
    t.add_argument("data_dir", help="root with train/ valid/ class folders, or one class folder")
    t.add_argument("--save_dir", default=".", help="folder for the checkpoint (default: .)")
    t.add_argument("--checkpoint_name", default="checkpoint.pt")
    t.add_argument("--arch", default="vgg16", help="backbone name (see `petalnet backbones`)")
    t.add_argument("--weights", default="DEFAULT", help="DEFAULT, a weights name, a file, none")
    t.add_argument("--learning_rate", type=float, default=1e-3)
    t.add_argument("--hidden_units", type=int, nargs="*", default=[512])
    t.add_argument("--dropout", type=float, default=0.2)
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch_size", type=int, default=64)
    t.add_argument("--category_names", help="JSON mapping class folders to flower names")
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--amp", action="store_true", help="mixed-precision feature extraction")
    t.add_argument("--quiet", action="store_true")
    _device_flags(t)
    t.set_defaults(func=_cmd_train)

    p = sub.add_parser("predict", help="top-k flower names for images")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("checkpoint")
    p.add_argument("--top_k", type=int, default=5)
    p.add_argument("--category_names", help="JSON mapping class folders to flower names")
    p.add_argument("--json", action="store_true", help="one JSON line per image")
    _device_flags(p)
    p.set_defaults(func=_cmd_predict)

    e = sub.add_parser("evaluate", help="accuracy of a checkpoint on a labelled folder")
    e.add_argument("data_dir")
    e.add_argument("checkpoint")
    _device_flags(e)
    e.set_defaults(func=_cmd_evaluate)

    b = sub.add_parser("backbones", help="list the available backbones")
    b.add_argument("pattern", nargs="?", help="wildcard filter, e.g. 'vgg*'")
    b.set_defaults(func=_cmd_backbones)
    return parser


def _device_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpu", action="store_true", help="use a GPU (cuda or mps) if available")
    p.add_argument("--device", help="explicit device, e.g. cpu, cuda:1 (overrides --gpu)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        The exit status.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except PetalnetError as exc:
        print(f"petalnet: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("petalnet: interrupted", file=sys.stderr)
        return 130
