"""What int8 rows cost in accuracy: fast-cpu on the grouped hold-out, float against int8.

Usage (from the repository root; needs ``pip install 'petalnet[int8]'``)::

    python benchmarks/int8_holdout.py --tta crops
    PETALNET_CPU_BF16=0 python benchmarks/int8_holdout.py --tta none   # float32 against int8

``benchmarks/front_levers.py`` found the frozen front 1.5x faster in int8 on AVX2 (with
``reduce_range``) and 2.8-3.2x natively, with rows that move (relative error 0.13-0.15).
Whether a head trained on such rows still scores the same is what this measures. fast-cpu
(without its refit) is fitted on the grouped hold-out's training side twice, in separate
processes with new caches: as the preset is, and with ``quantize="int8"`` (the backbone
quantised by ``torchao``'s PT2E flow, 7-bit activations calibrated on 128 training images,
compiled by Inductor). Each fit's rows, for training and for the hold-out, come from its
own backbone. ``valid/`` is never read. (Until 2026-12-03 this script quantised the front
itself, with 8-bit and 7-bit activations; petalnet now does it, with 7-bit ones.)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch
from _shared import DEFAULT_DATA, emit, holdout_preset, link_holdout, machine

import petalnet


def _run(front: str, data: Path, tta: str) -> dict[str, Any]:
    """One fit and its hold-out score, in this process (a child of :func:`main`)."""
    with tempfile.TemporaryDirectory(prefix="petalnet-holdout-") as tmp:
        root = Path(tmp)
        link_holdout(data, 0.15, root, split="grouped")
        cache = Path(tempfile.mkdtemp(prefix="petalnet-int8-cache-"))
        start = time.perf_counter()
        views: Any = False if tta == "none" else tta
        quantize = "int8" if front == "int8" else None
        clf = holdout_preset(
            "fast-cpu", cache_dir=cache, random_state=0, tta=views, quantize=quantize
        )
        clf.fit(root)
        fit_s = time.perf_counter() - start
        report = clf.evaluate(root / "valid")
    return {
        "front": front,
        "tta": tta,
        "holdout_accuracy": report["accuracy"],
        "correct": round(report["accuracy"] * report["n_images"]),
        "images": report["n_images"],
        "fit_s": round(fit_s, 1),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--tta", default="none", help="none, flip, crops or crops+flip")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--front", help=argparse.SUPPRESS)  # a child: one front
    args = ap.parse_args(argv)
    if args.front:
        return emit(_run(args.front, args.data, args.tta), None)
    runs = []
    for front in ("float", "int8"):
        cmd = [sys.executable, __file__, "--data", str(args.data), "--tta", args.tta]
        out = subprocess.run([*cmd, "--front", front], capture_output=True, text=True)
        if out.returncode:
            sys.stderr.write(out.stderr[-3000:])
            raise SystemExit(f"the {front} run failed")
        runs.append(json.loads(out.stdout[out.stdout.index("{") :]))
        print(runs[-1], flush=True)
    return emit(
        {
            "command": f"python benchmarks/int8_holdout.py --tta {args.tta}",
            "date": date.today().isoformat(),
            "torch": torch.__version__,
            "petalnet": petalnet.__version__,
            **machine(),
            "runs": runs,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
