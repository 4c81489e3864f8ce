"""The ``petalnet`` command line: train, predict, evaluate, check backbones, download data.

Errors are printed as one ``petalnet: error: ...`` line and exit with status 1 (2 for bad
usage); no traceback is shown.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from petalnet._version import __version__
from petalnet.data import IMG_EXTENSIONS
from petalnet.errors import PetalnetError

__all__ = ["build_parser", "main"]

_PREDICT_CHUNK = 64  # images per predict() call when streaming to --output


def _device(args: argparse.Namespace) -> str:
    if args.device:
        return args.device
    return "auto" if args.gpu else "cpu"


def _verbose(args: argparse.Namespace) -> int:
    return 0 if getattr(args, "quiet", False) else 1


def _plots_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True


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
        device=_device(args),
        category_names=args.category_names,
        random_state=args.seed,
        valid_fraction=args.valid_fraction,
        amp={"auto": "auto", "on": True, "off": False}[args.amp],
        augment_views=args.augment_views,
        augmentation=args.augmentation,
        cache=not args.no_cache,
        cache_dir=args.cache_dir,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        lr_schedule=args.lr_schedule,
        warmup_epochs=args.warmup_epochs,
        early_stopping=args.early_stopping,
        class_weight=args.class_weight,
        monitor=args.monitor,
        strategy=args.strategy,
        unfreeze_blocks=args.unfreeze_blocks or None,
        freeze_epochs=args.freeze_epochs,
        backbone_lr_scale=args.backbone_lr_scale,
        verbose=_verbose(args),
    )
    save_dir = Path(args.save_dir)
    try:
        clf.fit(args.data_dir, resume_from=args.resume)
    except Exception as exc:
        if not getattr(clf, "best_epoch_", 0):  # nothing trained yet: nothing to keep
            raise
        partial = clf.save(save_dir / f"{Path(args.checkpoint_name).stem}.partial.pt")
        raise PetalnetError(
            f"training stopped in epoch {len(clf.history_)}: {exc} The best weights so far "
            f"(epoch {clf.best_epoch_}) are saved in {partial}."
        ) from None
    path = clf.save(save_dir / args.checkpoint_name)
    from petalnet import distributed

    if not distributed.is_main():  # under torchrun, rank 0 reports and plots
        return 0
    best = clf.history_[clf.best_epoch_ - 1]
    print(f"best epoch {clf.best_epoch_}: valid accuracy {best['valid_accuracy']:.2%}")
    print(f"saved {path}")
    if _plots_available():
        from petalnet import plot

        curves = save_dir / f"{Path(args.checkpoint_name).stem}_curves.png"
        plot.training_curves(clf.history_, path=curves)
        print(f"training curves: {curves}")
    return 0


def _expand_images(inputs: Sequence[str]) -> list[Path]:
    images: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            images += sorted(
                f
                for f in p.rglob("*")
                if f.suffix.lower() in IMG_EXTENSIONS and not f.name.startswith(".")
            )
        elif p.exists():
            images.append(p)
        else:
            raise PetalnetError(f"{item!r} does not exist; pass image files or folders.")
    return images


def _chunks(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class _Writer:
    """Writes predictions as CSV or JSON lines, one image per row, flushed per chunk."""

    def __init__(self, stream: IO[str], fmt: str, topk: int) -> None:
        self.stream, self.fmt = stream, fmt
        if fmt == "csv":
            self.csv = csv.writer(stream)
            header = ["image"]
            for k in range(1, topk + 1):
                header += [f"label_{k}", f"class_id_{k}", f"probability_{k}"]
            self.csv.writerow(header)

    def write(self, image: Path, top: Sequence[Any]) -> None:
        if self.fmt == "csv":
            row: list[Any] = [str(image)]
            for p in top:
                row += [p.label, p.class_id, f"{p.probability:.6f}"]
            self.csv.writerow(row)
        else:
            record = {"image": str(image), "top": [p.to_dict() for p in top]}
            self.stream.write(json.dumps(record) + "\n")


def _cmd_predict(args: argparse.Namespace) -> int:
    from petalnet.classifier import FlowerClassifier
    from petalnet.data import load_category_names

    clf = FlowerClassifier.load(args.checkpoint, device=_device(args))
    clf.verbose = 0
    clf.tta = args.tta
    if args.category_names:
        clf.category_names_ = load_category_names(args.category_names)
    images = _expand_images(args.images)
    if not images:
        raise PetalnetError(f"No images found in {', '.join(args.images)}.")
    out_path = Path(args.output) if args.output else None
    fmt = "jsonl" if args.json or (out_path and out_path.suffix in (".jsonl", ".json")) else "csv"
    stream = out_path.open("w", newline="", encoding="utf-8") if out_path else None
    writer = _Writer(stream, fmt, args.top_k) if stream else None
    first: tuple[Path, Sequence[Any]] | None = None
    try:
        for chunk in _chunks(images, _PREDICT_CHUNK):  # bounded memory for any number
            for image, top in zip(chunk, clf.predict(list(chunk), topk=args.top_k), strict=True):
                first = first or (image, top)
                if writer is not None:
                    writer.write(image, top)
                elif args.json:
                    print(json.dumps({"image": str(image), "top": [p.to_dict() for p in top]}))
                else:
                    print(image)
                    for rank, p in enumerate(top, 1):
                        print(f"  {rank}. {p.label:<32} {p.probability:7.2%}  (class {p.class_id})")
            if stream is not None:
                stream.flush()
    finally:
        if stream is not None:
            stream.close()
    if out_path:
        print(f"wrote {len(images)} predictions to {out_path}")
    if args.plot and first is not None:
        from petalnet import plot

        plot.prediction(first[0], first[1], path=args.plot)
        print(f"chart: {args.plot}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from petalnet.classifier import FlowerClassifier

    clf = FlowerClassifier.load(args.checkpoint, device=_device(args))
    clf.verbose = _verbose(args)
    clf.tta = args.tta
    report = clf.evaluate(args.data_dir)
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "confusion_matrix"}))
    else:
        print(
            f"{report['folder']}: accuracy {report['accuracy']:.2%}, top-5 "
            f"{report['top5_accuracy']:.2%}, loss {report['loss']:.4f} "
            f"on {report['n_images']} images"
        )
        worst = sorted(report["per_class_accuracy"].items(), key=lambda kv: kv[1])[:5]
        names = clf.category_names_ or {}
        print("weakest classes: " + ", ".join(f"{names.get(c, c)} {a:.0%}" for c, a in worst))
    if args.plots:
        from petalnet import plot

        labels = [(clf.category_names_ or {}).get(c, c) for c in clf.classes_]
        target = Path(args.plots) / "confusion_matrix.png"
        plot.confusion_matrix(report["confusion_matrix"], labels, path=target)
        print(f"confusion matrix: {target}")
    return 0


def _cmd_backbones(args: argparse.Namespace) -> int:
    from petalnet.backbones.info import backbone_info
    from petalnet.backbones.registry import list_backbones

    names = list_backbones(args.pattern or None)
    if not names:
        raise PetalnetError(f"No backbone matches {args.pattern!r}; try `petalnet backbones`.")
    print(f"{'name':<22} {'features':>8} {'params':>9} {'blocks':>6}  weights offline")
    for name in names:
        info = backbone_info(name)
        params = f"{info['parameters'] / 1e6:.1f}M" if info["parameters"] else "?"
        dim = info["feature_dim"] or "?"
        blocks = len(info["blocks"]) if info["blocks"] is not None else "?"
        print(f"{name:<22} {dim:>8} {params:>9} {blocks:>6}  {info['offline']}")
        if len(names) == 1 and info["blocks"]:
            print(
                f"blocks, first to last (unfreeze_blocks counts from the end): "
                f"{', '.join(info['blocks'])}"
            )
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from petalnet.check import check_dataset

    report = check_dataset(args.data_dir, decode=not args.quick)
    print(report.summary())
    return 0 if report.ok else 1


def _cmd_export(args: argparse.Namespace) -> int:
    from petalnet.classifier import FlowerClassifier

    clf = FlowerClassifier.load(args.checkpoint, device="cpu")
    path = clf.export(args.output, format=args.format)
    print(f"exported {path} (+ {path.name}.json with classes, names and preprocessing)")
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from petalnet.datasets import download_flowers102

    out = download_flowers102(args.dir)
    counts = {s: sum(1 for _ in (out / s).rglob("*.jpg")) for s in ("train", "valid", "test")}
    print(f"Flowers-102 in {out}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return 0


def _device_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpu", action="store_true", help="use a GPU (cuda or mps) if available")
    p.add_argument("--device", help="explicit device, e.g. cpu or cuda:1 (overrides --gpu)")


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser."""
    parser = argparse.ArgumentParser(
        prog="petalnet", description="Train and use flower-photo classifiers."
    )
    parser.add_argument("--version", action="version", version=f"petalnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a classifier on an image folder")
    t.add_argument("data_dir", help="root with train/ valid/ class folders, or one class folder")
    t.add_argument("--save_dir", default=".", help="folder for the checkpoint (default: .)")
    t.add_argument("--checkpoint_name", default="checkpoint.pt")
    t.add_argument("--arch", default="vgg16", help="backbone (see `petalnet backbones`)")
    t.add_argument("--weights", default="DEFAULT", help="DEFAULT, a weights name, a file, none")
    t.add_argument("--learning_rate", type=float, default=1e-3)
    t.add_argument("--hidden_units", type=int, nargs="*", default=[512])
    t.add_argument("--dropout", type=float, default=0.2)
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch_size", type=int, default=64)
    t.add_argument("--valid_fraction", type=float, default=0.2)
    t.add_argument("--category_names", help="JSON mapping class folders to flower names")
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--amp", choices=["auto", "on", "off"], default="auto")
    t.add_argument("--augment_views", type=int, default=0)
    t.add_argument("--augmentation", choices=["seed", "trivialaugment"], default="seed")
    t.add_argument("--weight_decay", type=float, default=0.0)
    t.add_argument("--label_smoothing", type=float, default=0.0)
    t.add_argument("--lr_schedule", choices=["constant", "cosine", "onecycle"], default="constant")
    t.add_argument("--warmup_epochs", type=int, default=0)
    t.add_argument(
        "--early_stopping", type=int, metavar="PATIENCE", help="stop after N flat epochs"
    )
    t.add_argument("--class_weight", choices=["balanced"], help="weigh classes by 1/frequency")
    t.add_argument(
        "--monitor",
        choices=["valid_loss", "valid_accuracy"],
        default="valid_loss",
        help="what picks the epoch that is kept",
    )
    t.add_argument(
        "--strategy",
        choices=["freeze", "freeze_unfreeze", "full"],
        default="freeze",
        help="what trains: the head only (freeze), the head then the last backbone blocks "
        "(freeze_unfreeze), or everything (full)",
    )
    t.add_argument(
        "--unfreeze_blocks",
        type=int,
        default=2,
        help="blocks freeze_unfreeze trains, from the end (0: all; see `petalnet backbones NAME`)",
    )
    t.add_argument("--freeze_epochs", type=int, help="head-only epochs (default: half)")
    t.add_argument(
        "--backbone_lr_scale",
        type=float,
        default=0.1,
        help="fine-tuned backbone layers learn at learning_rate times this",
    )
    t.add_argument("--resume", metavar="CHECKPOINT", help="continue a run saved earlier")
    t.add_argument("--no_cache", action="store_true", help="do not cache backbone features")
    t.add_argument("--cache_dir", help="feature cache folder")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    _device_flags(t)
    t.set_defaults(func=_cmd_train)

    p = sub.add_parser("predict", help="top-k flower names for images")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("checkpoint")
    p.add_argument("--top_k", type=int, default=5)
    p.add_argument("--category_names", help="JSON mapping class folders to flower names")
    p.add_argument("--output", help="write predictions to a .csv or .jsonl file")
    p.add_argument("--json", action="store_true", help="JSON lines instead of text")
    p.add_argument("--plot", help="PNG of the (first) image beside its top-k chart")
    p.add_argument("--tta", action="store_true", help="average the image and its mirror")
    _device_flags(p)
    p.set_defaults(func=_cmd_predict)

    e = sub.add_parser("evaluate", help="accuracy of a checkpoint on a labelled folder")
    e.add_argument("data_dir", help="class folders, or a root with test/ or valid/")
    e.add_argument("checkpoint")
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    e.add_argument("--plots", help="folder for confusion_matrix.png")
    e.add_argument("--tta", action="store_true", help="average the image and its mirror")
    e.add_argument("--quiet", action="store_true")
    _device_flags(e)
    e.set_defaults(func=_cmd_evaluate)

    b = sub.add_parser("backbones", help="list the available backbones")
    b.add_argument("pattern", nargs="?", help="wildcard filter, e.g. 'vgg*'")
    b.set_defaults(func=_cmd_backbones)

    c = sub.add_parser("check", help="scan a data folder for problems before training")
    c.add_argument("data_dir")
    c.add_argument("--quick", action="store_true", help="do not decode the images")
    c.set_defaults(func=_cmd_check)

    x = sub.add_parser("export", help="export a checkpoint to TorchScript or ONNX")
    x.add_argument("checkpoint")
    x.add_argument("output", help="model file to write")
    x.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript")
    x.set_defaults(func=_cmd_export)

    d = sub.add_parser("download", help="download a data set in the train/valid/test layout")
    d.add_argument("dataset", choices=["flowers102"])
    d.add_argument("dir", help="destination folder")
    d.set_defaults(func=_cmd_download)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        The exit status: 0 on success, 1 on an error, 130 when interrupted.
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except PetalnetError as exc:
        print(f"petalnet: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # disk full, permission denied, ...
        print(f"petalnet: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("petalnet: interrupted", file=sys.stderr)
        return 130
