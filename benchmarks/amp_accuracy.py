"""Does mixed precision change accuracy? float32 and autocast side by side, two ways.

Usage::

    python benchmarks/amp_accuracy.py --device cuda             # float16 autocast vs float32
    python benchmarks/amp_accuracy.py --device cpu              # bfloat16 autocast vs float32
    python benchmarks/amp_accuracy.py --device cpu --no-refit   # only the same-head check

1. **Same head**: fit in float32, then evaluate that one classifier on validation features
   computed in float32 and in mixed precision. The difference is due to precision alone.
2. **Refit** (unless ``--no-refit``): fit again with ``amp=True`` from scratch and compare the
   best validation accuracies; this includes training noise.

Features go through the normal feature cache (``--cache-dir``), so reruns are cheap.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _shared import DEFAULT_DATA

import petalnet
from petalnet.data import list_samples, resolve_eval_folder
from petalnet.images import Unreadable
from petalnet.pipeline import ImagePipeline
from petalnet.precision import resolve_precision
from petalnet.results import evaluation_report


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--no-refit", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    amp_dtype = resolve_precision(True, device)
    common = dict(
        epochs=args.epochs,
        batch_size=args.batch_size,
        device=args.device,
        cache_dir=args.cache_dir,
        random_state=0,
        verbose=0,
    )
    result: dict = {
        "backbone": args.backbone,
        "device": args.device,
        "data": str(args.data),
        "amp_dtype": str(amp_dtype),
        "torch": torch.__version__,
    }

    clf = petalnet.FlowerClassifier(args.backbone, amp=False, **common).fit(args.data)
    samples = list_samples(resolve_eval_folder(args.data / "valid"), clf.class_to_idx_)
    for name, dtype in (("fp32", torch.float32), ("amp", amp_dtype)):
        pipe = ImagePipeline(
            clf.backbone_, device=clf.device_, precision=dtype, use_cache=False, batch_size=8
        )
        start = time.perf_counter()
        paths, labels = [p for p, _ in samples], [t for _, t in samples]
        feats = pipe.features(paths, labels, unreadable=Unreadable(), quiet=True)
        seconds = time.perf_counter() - start
        log_probs = clf.model_.calibration.outputs(clf.head_, feats.features, clf.device_).log_probs
        acc = evaluation_report(log_probs, feats.labels, clf.classes_)["accuracy"]
        result[f"same_head_{name}"] = {"valid_accuracy": acc, "extract_seconds": round(seconds, 1)}
        print(f"same head, {name} features: valid accuracy {acc:.2%} ({seconds:.1f}s)", flush=True)
    result["same_head_difference_points"] = round(
        100
        * (result["same_head_amp"]["valid_accuracy"] - result["same_head_fp32"]["valid_accuracy"]),
        2,
    )
    print(f"same head difference: {result['same_head_difference_points']:+.2f} points")

    if not args.no_refit:
        best_fp32 = max(r["valid_accuracy"] for r in clf.history_)
        refit = petalnet.FlowerClassifier(args.backbone, amp=True, **common).fit(args.data)
        best_amp = max(r["valid_accuracy"] for r in refit.history_)
        result["refit"] = {
            "fp32": best_fp32,
            "amp": best_amp,
            "difference_points": round(100 * (best_amp - best_fp32), 2),
        }
        print(
            f"refit: fp32 {best_fp32:.2%}, amp {best_amp:.2%}, "
            f"difference {result['refit']['difference_points']:+.2f} points"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
