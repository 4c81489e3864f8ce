"""Fit + evaluate a FlowerClassifier on a Udacity-layout folder; report accuracy, time, memory.

Usage (from the repository root)::

    python benchmarks/fit_flowers.py                       # efficientnet_lite0, seed recipe
    python benchmarks/fit_flowers.py --data DIR --backbone vgg16 --epochs 5

The default data is ``../shared/data/flowers102`` (Flowers-102 train 6552 / valid 818).
It has no ``test/`` split, so ``evaluate`` runs on ``valid/``, the split that also picks the
best epoch: the figure is the seed's "valid accuracy", not an untouched test score.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from _shared import DEFAULT_DATA

import petalnet
from petalnet.strategy import STRATEGIES
from petalnet.training import SCHEDULES


def peak_rss_mib() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--weights", default="DEFAULT")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--hidden-units", type=int, nargs="*", default=[512])
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--learning-rate", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--amp", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--augment-views", type=int, default=0)
    ap.add_argument("--label-smoothing", type=float, default=0.0)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--lr-schedule", default="constant", choices=list(SCHEDULES))
    ap.add_argument("--warmup-epochs", type=int, default=0)
    ap.add_argument("--strategy", default="freeze", choices=list(STRATEGIES))
    ap.add_argument("--unfreeze-blocks", type=int, default=2, help="0: the whole backbone")
    ap.add_argument("--freeze-epochs", type=int, default=None)
    ap.add_argument("--backbone-lr-scale", type=float, default=0.1)
    ap.add_argument("--tta", action="store_true", help="evaluate with centre + mirror")
    ap.add_argument("--monitor", default="valid_loss", choices=["valid_loss", "valid_accuracy"])
    ap.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="feature cache; default: a new empty temporary folder, so the first fit is cold",
    )
    ap.add_argument("--fits", type=int, default=2, help="fits in a row (2nd+ use the cache)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        sys.exit(f"No data at {args.data}; pass --data DIR (train/ valid/ <class>/*.jpg).")

    cache_dir = args.cache_dir or Path(tempfile.mkdtemp(prefix="petalnet-bench-cache-"))
    params = dict(
        weights=None if args.weights == "none" else args.weights,
        hidden_units=args.hidden_units,
        dropout=args.dropout,
        learning_rate=args.learning_rate,
        epochs=args.epochs,
        batch_size=args.batch_size,
        amp=True if args.amp else "auto",
        augment_views=args.augment_views,
        label_smoothing=args.label_smoothing,
        weight_decay=args.weight_decay,
        lr_schedule=args.lr_schedule,
        warmup_epochs=args.warmup_epochs,
        strategy=args.strategy,
        unfreeze_blocks=args.unfreeze_blocks or None,
        freeze_epochs=args.freeze_epochs,
        backbone_lr_scale=args.backbone_lr_scale,
        tta=args.tta,
        monitor=args.monitor,
        cache_dir=cache_dir,
        random_state=args.seed,
    )
    fit_seconds, fit_accuracies = [], []
    for _ in range(args.fits):
        clf = petalnet.FlowerClassifier(args.backbone, **params)
        t0 = time.perf_counter()
        clf.fit(args.data)
        fit_seconds.append(round(time.perf_counter() - t0, 1))
        fit_accuracies.append(max(r["valid_accuracy"] for r in clf.history_))
    t0 = time.perf_counter()
    report = clf.evaluate(args.data)
    eval_s = time.perf_counter() - t0
    best = max(r["valid_accuracy"] for r in clf.history_)
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()} {platform.processor() or ''} "
        f"{torch.get_num_threads()} threads, device {clf.device_}".strip(),
        "torch": torch.__version__,
        "command": " ".join(["python benchmarks/fit_flowers.py", *(argv or sys.argv[1:])]),
        "backbone": args.backbone,
        "n_train": clf.n_train_,
        "n_valid": clf.n_valid_,
        "strategy": args.strategy,
        "best_epoch": clf.best_epoch_,
        "history": [{k: round(v, 4) for k, v in r.items()} for r in clf.history_],
        "best_valid_accuracy": best,
        "evaluate_accuracy": report["accuracy"],
        "evaluate_top5_accuracy": report["top5_accuracy"],
        "evaluate_folder": report["folder"],
        "precision": str(clf._precision),
        "fit_seconds": fit_seconds,
        "fit_best_valid_accuracies": fit_accuracies,
        "evaluate_seconds": round(eval_s, 1),
        "peak_rss_mib": round(peak_rss_mib()),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
