"""Where ``quantize="int8"`` pays off: a fit's time against its number of images, float and int8.

Usage (from the repository root; needs ``pip install 'petalnet[int8]'``)::

    python benchmarks/int8_scale.py                       # 2000 and 8000 images
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 PETALNET_CPU_BF16=0 \\
        python benchmarks/int8_scale.py                   # as on an AVX2-only CPU

Each fit runs in its own process: a frozen efficientnet_lite0 and fast-cpu's head trained
for one epoch (the head costs the same either way), with no row store (``cache=False``), on
``N`` training images (links cycling through Flowers-102 ``train/``, so every image is a
real JPEG decoded and run through the backbone) and 102 ``valid/`` images. The int8 fit
quantises the backbone (128 calibration images) and compiles it with an **empty** Inductor
cache (``TORCHINDUCTOR_CACHE_DIR`` a new folder): the worst case, what a first fit on a new
machine pays. A line ``seconds = a + b N`` through each mode's points gives the fixed cost
``a``, the cost per image ``b`` and the size from which int8 is faster. Natively the float
fit computes in bfloat16 where the CPU has it (``amp="auto"``), as petalnet does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _shared import DEFAULT_DATA, emit, peak_rss_mib, run_facts

_HELD = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "PETALNET_CPU_BF16")


def _folder(data: Path, n: int, root: Path) -> None:
    """``root/train`` with ``n`` links cycling through ``data/train``, ``root/valid`` 102."""
    classes = sorted(p for p in (data / "train").iterdir() if p.is_dir())
    files = [sorted(c.glob("*.jpg")) for c in classes]
    made = 0
    while made < n:  # round-robin over the classes, a new link name each time round
        for c, pool in zip(classes, files, strict=True):
            if made == n:
                break
            target = root / "train" / c.name / f"{made}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(pool[(made // len(classes)) % len(pool)])
            made += 1
    for c in classes:
        (root / "valid" / c.name).mkdir(parents=True)
        (root / "valid" / c.name / "0.jpg").symlink_to(
            sorted((data / "valid" / c.name).glob("*.jpg"))[0]
        )


def _child(data: Path, n: int, mode: str) -> dict[str, Any]:
    import petalnet

    with tempfile.TemporaryDirectory(prefix="petalnet-int8-scale-") as tmp:
        root = Path(tmp)
        _folder(data, n, root)
        clf = petalnet.FlowerClassifier.from_preset(
            "fast-cpu",
            epochs=1,
            refit=False,
            tta=False,
            cache=False,
            verbose=0,
            quantize="int8" if mode == "int8" else None,
        )
        start = time.perf_counter()
        clf.fit(root)
        seconds = time.perf_counter() - start
    return {"images": n, "mode": mode, "fit_s": round(seconds, 1), "peak_rss_mib": peak_rss_mib()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--images", type=int, nargs="+", default=[2000, 8000])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)  # N and mode: one fit
    args = ap.parse_args(argv)
    if args.child:
        return emit(_child(args.data, int(args.child[0]), args.child[1]), None)
    runs = []
    for n in args.images:
        for mode in ("float", "int8"):
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": tempfile.mkdtemp(prefix="inductor-")}
            cmd = [sys.executable, __file__, "--data", str(args.data), "--child", str(n), mode]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode:
                sys.stderr.write(out.stderr[-3000:])
                raise SystemExit(f"the {mode} fit of {n} images failed")
            runs.append(json.loads(out.stdout[out.stdout.index("{") :]))
            print(runs[-1], flush=True)
    fits = {}
    for mode in ("float", "int8"):
        mine = [r for r in runs if r["mode"] == mode]
        b, a = np.polyfit([r["images"] for r in mine], [r["fit_s"] for r in mine], 1)
        fits[mode] = {"fixed_s": round(a, 1), "ms_per_image": round(b * 1000, 2)}
    saved = fits["float"]["ms_per_image"] - fits["int8"]["ms_per_image"]
    extra = fits["int8"]["fixed_s"] - fits["float"]["fixed_s"]
    return emit(
        {
            **run_facts("int8_scale.py", argv),
            "env": {
                k: os.environ[k]
                for k in ("ONEDNN_MAX_CPU_ISA", "PETALNET_CPU_BF16")
                if k in os.environ
            },
            "runs": runs,
            "fits": fits,
            "int8_faster_from_images": round(extra / saved * 1000) if saved > 0 else None,
            "projected_300k_images_min": {
                mode: round((f["fixed_s"] + f["ms_per_image"] * 300) / 60, 1)
                for mode, f in fits.items()
            },
        },
        args.json,
    )


if __name__ == "__main__":
    main()
