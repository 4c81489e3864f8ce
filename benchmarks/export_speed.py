"""Latency and throughput of the exports beside eager PyTorch, one run, side by side.

Usage (from the repository root)::

    python benchmarks/export_speed.py [--backbone efficientnet_lite0] [--json out.json]

A classifier is fitted for one epoch on 5 classes of ``../shared`` Flowers-102 (accuracy
does not matter here, only the network's shape), exported to ``.pt2`` and ONNX, and timed on
the same preprocessed batches: one image (median latency) and batches of 32 (images per
second). ``predict`` (eager) is timed both from a decoded photo (what a user calls) and on
the preprocessed tensor like the exports. All float32, on the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _shared import DEFAULT_DATA, emit, machine

import petalnet
from petalnet.images import read_image


def _subset(data: Path, root: Path, classes: int = 5) -> None:
    for split in ("train", "valid"):
        for folder in sorted((data / split).iterdir(), key=lambda p: p.name)[:classes]:
            (root / split).mkdir(parents=True, exist_ok=True)
            (root / split / folder.name).symlink_to(folder.resolve())


def _time(fn: Callable[[], Any], repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if not (args.data / "train").is_dir():
        sys.exit(f"No train/ under {args.data}; pass --data DIR.")
    tmp = Path(tempfile.mkdtemp(prefix="petalnet-export-speed-"))
    _subset(args.data, tmp / "data")
    clf = petalnet.FlowerClassifier(
        args.backbone, epochs=1, device="cpu", amp=False, verbose=0, random_state=0
    ).fit(tmp / "data")
    files = sorted((args.data / "valid").rglob("*.jpg"))[:32]
    photos = [read_image(f) for f in files]
    transform = clf.backbone_.preprocessing.transform()
    batch = torch.stack([transform(p) for p in photos])
    one = batch[:1]

    pt2 = torch.export.load(clf.export(tmp / "m.pt2")).module()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(clf.export(tmp / "m.onnx", format="onnx")), options)
    head, runner = clf.head_, clf.pipeline_.runner
    temperature = clf.model_.calibration.temperature

    def eager(x: torch.Tensor) -> torch.Tensor:  # the folded backbone predict runs, then the head
        with torch.inference_mode():
            features = runner(x.contiguous(memory_format=torch.channels_last))
            return (head[:-1](features) / temperature).softmax(-1)

    def program(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out: torch.Tensor = pt2(x)
            return out

    engines: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
        "predict (decoded photo in)": (
            lambda: clf.predict_proba(photos[0]),
            lambda: clf.predict_proba(photos),
        ),
        "eager PyTorch (tensor in)": (lambda: eager(one), lambda: eager(batch)),
        "torch.export .pt2": (lambda: program(one), lambda: program(batch)),
        "ONNX Runtime": (
            lambda: session.run(None, {"images": one.numpy()}),
            lambda: session.run(None, {"images": batch.numpy()}),
        ),
    }
    reference = eager(batch).numpy()
    agreement = {
        ".pt2": float(np.abs(program(batch).numpy() - reference).max()),
        "onnx": float(np.abs(session.run(None, {"images": batch.numpy()})[0] - reference).max()),
    }
    rows = {}
    for name, (single, many) in engines.items():
        latency = statistics.median(_time(single, args.repeats)) * 1000
        seconds = statistics.median(_time(many, max(3, args.repeats // 4)))
        rows[name] = {
            "single_image_ms": round(latency, 2),
            "batch32_images_per_s": round(len(batch) / seconds, 1),
        }
        print(f"{name:<28} {latency:8.2f} ms   {len(batch) / seconds:8.1f} img/s", flush=True)
    return emit(
        {
            "date": date.today().isoformat(),
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
            **machine(),
            "threads": torch.get_num_threads(),
            "backbone": args.backbone,
            "command": " ".join(["python benchmarks/export_speed.py", *(argv or sys.argv[1:])]),
            "max_abs_difference_vs_eager": agreement,
            "engines": rows,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
