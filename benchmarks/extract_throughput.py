"""End-to-end feature-extraction throughput from JPEG files (decode + preprocess + backbone).

Usage::

    python benchmarks/extract_throughput.py                                   # lite0, 512 images
    python benchmarks/extract_throughput.py --backbone vgg16 --weights none --images 96

Runs ``ImagePipeline.features`` as ``fit`` does, cache off, for each batch size
and worker count asked for, over the first ``--images`` images of ``DATA/train`` (by class
folder, round-robin so every class is used). Reports images per second.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _shared import DEFAULT_DATA

import petalnet
from petalnet.data import load_training_data
from petalnet.images import Unreadable
from petalnet.pipeline import ImagePipeline
from petalnet.precision import resolve_precision


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--weights", default="DEFAULT")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--amp", default="auto", choices=["auto", "on", "off"])  # as before
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device("cpu")
    amp = {"auto": "auto", "on": True, "off": False}[args.amp]
    precision = resolve_precision(amp, device)
    weights = None if args.weights == "none" else args.weights
    backbone = petalnet.build_backbone(args.backbone, weights=weights)

    def pipeline(batch_size: int, workers: int) -> ImagePipeline:
        return ImagePipeline(
            backbone,
            device=device,
            precision=precision,
            use_cache=False,
            batch_size=batch_size,
            num_workers=workers,
        )

    samples = load_training_data(args.data).train
    by_class: dict[int, list] = {}
    for s in samples:
        by_class.setdefault(s[1], []).append(s)
    picked = [s for group in zip(*by_class.values(), strict=False) for s in group][: args.images]
    print(
        f"{args.backbone}: {len(picked)} images, {torch.get_num_threads()} threads, "
        f"precision {precision}"
    )
    print("| batch | workers | img/s |")
    print("|---|---|---|")
    paths = [p for p, _ in picked]
    pipeline(16, 0).features(paths[:16], unreadable=Unreadable(), quiet=True)  # warm-up
    for bs in args.batch_sizes:
        for workers in args.workers:
            pipe = pipeline(bs, workers)  # the BN-folded copy is made outside the timing
            start = time.perf_counter()
            pipe.features(paths, unreadable=Unreadable(), quiet=True)
            rate = len(picked) / (time.perf_counter() - start)
            print(f"| {bs} | {workers} | {rate:.1f} |", flush=True)


if __name__ == "__main__":
    main()
