"""Rows that scale: fit memory, time and store files from thousands to a million images.

Usage (from the repository root)::

    python benchmarks/scale.py --sizes 3000 30000                 # memory growth, cheap backbone
    python benchmarks/scale.py --sizes 100000 1000000 --epochs 1  # warm fit time, 1 M rows
    python benchmarks/scale.py --sizes 10000 30000 --backbone efficientnet_lite0
    python benchmarks/scale.py --sizes 30000 --ranks 1 2          # torchrun: rows per rank
    python benchmarks/scale.py --sizes 3000 30000 --src /path/to/old/checkout  # another version
    python benchmarks/scale.py --sizes 20000 --valid 20000 --tta crops --no-warm  # calibration

Synthetic class folders of small JPEGs (``--classes`` classes, 48x40 px, a pool of noisy
images per class written again under new names) are made once per size under ``--work``;
``valid/`` holds 1 000 images whatever the size (``--valid``: another count; with ``--tta``
the fit calibrates on those images' test-time views, at most
``petalnet.calibration.CALIBRATION_SIZE`` of them). Each measurement is a fresh process (so its
peak memory is its own): a **cold** fit (empty row store) and then a **warm** fit (every row
in the store), both of a linear head on a frozen backbone. The child samples its
``RssAnon`` (memory of its own, not the page cache that holds memory-mapped rows) and
``VmRSS`` every 20 ms.

The default backbone ``scale_cheap`` is registered here as a plugin: one strided
convolution, 1 728 features per image, so rows are large next to everything else and
decoding dominates the time; ``efficientnet_lite0`` gives real figures at 10 k and 30 k.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve()
FEATURES = 1728  # scale_cheap: 27 channels x 8 x 8


def register_cheap() -> None:
    """Register ``scale_cheap``: one strided convolution, 1 728 features (seeded weights)."""
    import torch
    from torch import nn

    from petalnet import FeatureExtractor, Preprocessing, register_backbone

    @register_backbone("scale_cheap", overwrite=True)
    def scale_cheap(weights: str | None = "DEFAULT") -> FeatureExtractor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            body = nn.Sequential(nn.Conv2d(3, 27, 4, stride=4), nn.ReLU(), nn.Flatten(1))
        pre = Preprocessing(resize_size=36, crop_size=32)
        return FeatureExtractor(body, feature_dim=FEATURES, preprocessing=pre, weights="SEEDED")


def make_folders(root: Path, n_train: int, classes: int, n_valid: int = 1000) -> Path:
    """``root/train`` with ``n_train`` images and ``root/valid`` with ``n_valid`` (made once)."""
    done = root / ".complete"
    if done.exists():
        return root
    rng = np.random.default_rng(0)
    pool = []
    for _ in range(classes):  # 16 noisy JPEGs per class, colour by class
        base = rng.uniform(0, 255, size=3)
        shots = []
        for _ in range(16):
            pixels = np.clip(base + rng.normal(0, 30, size=(40, 48, 3)), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="JPEG", quality=85)
            shots.append(buf.getvalue())
        pool.append(shots)
    for split, count in (("train", n_train), ("valid", n_valid)):
        for c in range(classes):
            (root / split / f"c{c:04d}").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            c = i % classes
            (root / split / f"c{c:04d}" / f"{i:07d}.jpg").write_bytes(pool[c][i % 16])
    done.touch()
    return root


class MemorySampler(threading.Thread):
    """Peak ``RssAnon`` and ``VmRSS`` of this process, read from /proc every 20 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = {"RssAnon": 0, "VmRSS": 0}
        self.running = True

    def sample(self) -> None:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in self.peak:
                self.peak[key] = max(self.peak[key], int(value.split()[0]))  # KiB

    def run(self) -> None:
        while self.running:
            self.sample()
            time.sleep(0.02)

    def stop(self) -> dict[str, float]:
        self.running = False
        self.sample()
        return {f"peak_{k.lower()}_mib": round(v / 1024, 1) for k, v in self.peak.items()}


def child(args: argparse.Namespace) -> None:
    """One fit, in this process (under torchrun: one rank of it)."""
    sampler = MemorySampler()
    sampler.start()
    import torch

    import petalnet
    import petalnet.batches

    register_cheap()
    held: list[int] = []
    real = petalnet.batches.TensorBatches.__init__

    def recording(self: Any, inputs: torch.Tensor, labels: torch.Tensor, device: Any) -> None:
        held.append(len(labels))
        real(self, inputs, labels, device)

    petalnet.batches.TensorBatches.__init__ = recording  # type: ignore[method-assign]
    clf = petalnet.FlowerClassifier(
        args.backbone,
        hidden_units=None,
        epochs=args.epochs,
        batch_size=256,
        extract_batch_size=args.extract_batch,
        learning_rate=0.003,
        cache_dir=args.cache,
        device="cpu",
        amp=False,
        random_state=0,
        verbose=0,
        tta=False if args.tta == "none" else args.tta,
    )
    start = time.perf_counter()
    clf.fit(args.data)
    seconds = time.perf_counter() - start
    rank = int(os.environ.get("RANK", "0"))
    result = {
        "rank": rank,
        "seconds": round(seconds, 2),
        "n_train": clf.n_train_,
        "train_rows_held": held[0] if held else None,
        "valid_accuracy": round(clf.history_[-1]["valid_accuracy"], 4),
        "threads": torch.get_num_threads(),
        **sampler.stop(),
    }
    Path(f"{args.out}.rank{rank}").write_text(json.dumps(result))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        dist.destroy_process_group()


def store_files(cache: Path) -> int:
    return sum(1 for p in cache.rglob("*") if p.is_file())


def run_child(
    data: Path, cache: Path, args: argparse.Namespace, ranks: int = 1
) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        flags = ["--child", "--data", str(data), "--cache", str(cache), "--out", str(out)]
        flags += ["--backbone", args.backbone, "--epochs", str(args.epochs)]
        flags += ["--extract_batch", str(args.extract_batch), "--tta", args.tta]
        env = dict(os.environ)
        if args.src:
            env["PYTHONPATH"] = str(Path(args.src).resolve() / "src")
        if ranks > 1:  # each rank gets its share of the cores
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // ranks))
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
            cmd += ["--nproc_per_node", str(ranks), str(HERE), *flags]
        else:
            cmd = [sys.executable, str(HERE), *flags]
        subprocess.run(cmd, check=True, env=env)
        return [json.loads(Path(f"{out}.rank{r}").read_text()) for r in range(ranks)]


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[3000, 30000])
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--backbone", default="scale_cheap")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--extract_batch", type=int, default=64)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1])
    ap.add_argument("--valid", type=int, default=1000, help="images in valid/ (default 1000)")
    ap.add_argument("--tta", default="none", choices=["none", "crops", "crops+flip"])
    ap.add_argument("--no-warm", action="store_true", help="the cold fit only")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "petalnet-scale")
    ap.add_argument("--src", help="run the fits with another checkout's src/ (PYTHONPATH)")
    ap.add_argument("--no-cold", action="store_true", help="reuse the store of an earlier run")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:  # imports nothing of this checkout's benchmarks: --src may be older
        child(args)
        return []
    from _shared import emit, machine

    results = []
    for n in args.sizes:
        name = f"data-{n}" if args.valid == 1000 else f"data-{n}-valid{args.valid}"
        data = make_folders(args.work / name, n, args.classes, args.valid)
        for ranks in args.ranks:
            version = Path(args.src).name if args.src else "this checkout"
            cache = args.work / f"cache-{n}-{args.backbone}-{ranks}"
            if not args.no_cold:
                shutil.rmtree(cache, ignore_errors=True)
            cache.mkdir(parents=True, exist_ok=True)
            cold = None if args.no_cold else run_child(data, cache, args, ranks)
            warm = None if args.no_warm else run_child(data, cache, args, ranks)
            row_bytes = 4 * (FEATURES if args.backbone == "scale_cheap" else 1280)
            results.append(
                {
                    "images": n,
                    "ranks": ranks,
                    "valid_images": args.valid,
                    "tta": args.tta,
                    "backbone": args.backbone,
                    "code": version,
                    "rows_mib": round(n * row_bytes / 2**20, 1),
                    "cold": cold,
                    "warm": warm,
                    "cold_s_per_1k": round(cold[0]["seconds"] / n * 1000, 2) if cold else None,
                    "warm_s_per_1k": round(warm[0]["seconds"] / n * 1000, 3) if warm else None,
                    "store_files": store_files(cache),
                }
            )
            print(json.dumps(results[-1]), flush=True)
    report = {
        "date": date.today().isoformat(),
        **machine(),
        "command": " ".join(["python benchmarks/scale.py", *(argv or sys.argv[1:])]),
        "results": results,
    }
    emit(report, args.json)
    return results


if __name__ == "__main__":
    main()
