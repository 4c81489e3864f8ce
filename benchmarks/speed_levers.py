"""Side by side, one process: what makes a preset's CPU work cheaper (issue 25, item 2).

Usage::

    python benchmarks/speed_levers.py                       # 256 images of DATA/train
    python benchmarks/speed_levers.py --images 512 --json out.json

Each lever is timed against the way petalnet does it now, on the same images, one after
the other, in this process:

* **decode**: Pillow (``read_image`` with draft mode, then the evaluation transform on the
  picture) against ``torchvision.io.decode_jpeg`` (then the same transform on the tensor);
  milliseconds per image, one thread, as ``fit`` decodes on a 2-core machine.
* **front**: efficientnet_lite0 (BN folded, channels-last) eager against ``torch.compile``
  (Inductor, with and without ``freezing``), in float32 and, where the CPU has native
  bfloat16, in bfloat16 autocast; images per second on preprocessed batches, and the
  compile time a fit would pay once.
* **threads**: the front at 1 and 2 intra-op threads.
* **malloc**: end-to-end extraction (``benchmarks/extract_throughput.py``, batch 8, no
  workers) in child processes with glibc's thresholds as petalnet sets them against glibc's
  defaults (``PETALNET_MALLOC=default``), alternated twice.

The figures go to docs/benchmarks.md ("Speed levers"), with the CPU flags printed here.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torchvision
from _shared import DEFAULT_DATA, emit, machine

import petalnet
from petalnet._allocator import keep_cpu_buffers
from petalnet.data import load_training_data
from petalnet.features import prepare_backbone
from petalnet.images import read_image
from petalnet.precision import autocast, cpu_has_native_bf16


def _picked(data: Path, n: int) -> list[str]:
    """``n`` training images, round-robin over the classes."""
    by_class: dict[int, list[str]] = {}
    for path, label in load_training_data(data).train:
        by_class.setdefault(label, []).append(str(path))
    return [p for group in zip(*by_class.values(), strict=False) for p in group][:n]


def _decode(paths: list[str], pre: petalnet.Preprocessing) -> dict[str, float]:
    transform = pre.transform()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    for name, load in (
        ("pillow_draft", lambda p: transform(read_image(p, pre.resize_size))),
        (
            "decode_jpeg",
            lambda p: transform(
                torchvision.io.decode_jpeg(
                    torchvision.io.read_file(p), mode=torchvision.io.ImageReadMode.RGB
                )
            ),
        ),
    ):
        load(paths[0])
        start = time.perf_counter()
        for p in paths:
            load(p)
        out[name] = round(1000 * (time.perf_counter() - start) / len(paths), 2)
    torch.set_num_threads(threads)
    return out


def _rate(module: Any, batches: list[torch.Tensor], precision: torch.dtype) -> float:
    device = torch.device("cpu")
    with torch.inference_mode(), autocast(device, precision):
        module(batches[0])  # warm-up (and, compiled, the compilation)
        start = time.perf_counter()
        for b in batches:
            module(b)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def _front(batches: list[torch.Tensor], threads: list[int]) -> list[dict[str, Any]]:
    backbone = petalnet.build_backbone("efficientnet_lite0")
    eager = prepare_backbone(backbone, torch.device("cpu"))
    precisions = [torch.float32] + ([torch.bfloat16] if cpu_has_native_bf16() else [])
    rows = []
    for precision in precisions:
        for n in threads:
            torch.set_num_threads(n)
            rows.append(
                {
                    "lever": f"eager, {n} thread(s)",
                    "precision": str(precision),
                    "img_per_s": round(_rate(eager, batches, precision), 1),
                }
            )
        torch.set_num_threads(max(threads))
        for freezing in (False, True):
            torch._dynamo.reset()
            torch._inductor.config.freezing = freezing
            compiled = torch.compile(eager)
            start = time.perf_counter()
            with torch.inference_mode(), autocast(torch.device("cpu"), precision):
                compiled(batches[0])
            compile_s = time.perf_counter() - start
            rows.append(
                {
                    "lever": f"torch.compile (inductor{', freezing' if freezing else ''})",
                    "precision": str(precision),
                    "img_per_s": round(_rate(compiled, batches, precision), 1),
                    "compile_s": round(compile_s, 1),
                }
            )
            print(rows[-1], flush=True)
    torch._inductor.config.freezing = False
    return rows


def _malloc(data: Path, n: int) -> dict[str, list[float]]:
    """Extraction images/s with petalnet's malloc thresholds and with glibc's defaults."""
    script = Path(__file__).with_name("extract_throughput.py")
    cmd = [sys.executable, str(script), "--data", str(data), "--images", str(n)]
    cmd += ["--batch-sizes", "8", "--workers", "0"]
    out: dict[str, list[float]] = {"petalnet": [], "glibc_default": []}
    for _ in range(2):
        for name, value in (("glibc_default", "default"), ("petalnet", "on")):
            env = {**os.environ, "PETALNET_MALLOC": value}
            text = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            rate = re.findall(r"^\| 8 \| 0 \| ([0-9.]+) \|", text, flags=re.M)
            out[name].append(float(rate[-1]))
    print({"malloc_img_per_s": out}, flush=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    malloc = _malloc(args.data, args.images)
    keep_cpu_buffers()  # as a CPU fit does, for the levers below
    paths = _picked(args.data, args.images)
    pre = petalnet.build_backbone("efficientnet_lite0").meta.preprocessing
    decode = _decode(paths, pre)
    print({"decode_ms_per_image": decode}, flush=True)
    transform = pre.transform()
    images = torch.stack([transform(read_image(p, pre.resize_size)) for p in paths])
    images = images.contiguous(memory_format=torch.channels_last)
    batches = list(images.split(args.batch_size))
    front = _front(batches, threads=[1, 2])
    return emit(
        {
            "command": "python benchmarks/speed_levers.py "
            f"--images {args.images} --batch-size {args.batch_size}",
            "date": time.strftime("%Y-%m-%d"),
            "torch": torch.__version__,
            **machine(),
            "cpu_bf16": cpu_has_native_bf16(),
            "images": len(paths),
            "decode_ms_per_image": decode,
            "front": front,
            "malloc_img_per_s": malloc,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
