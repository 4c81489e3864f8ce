"""The seed's plain training loop against FlowerClassifier, same images, same epochs, one process.

Usage::

    python benchmarks/seed_vs_petalnet.py                 # VGG16, 10 classes x 20 train / 5 valid
    python benchmarks/seed_vs_petalnet.py --classes 5 --epochs 3

The seed loop is the classic Udacity project's: frozen VGG16, a new classifier
(Linear-ReLU-Dropout-Linear-LogSoftmax) trained with NLLLoss and Adam, training-time
augmentation (rotation, random resized crop, flip), a validation pass after every epoch, and
the backbone re-run on every image in every epoch. ``FlowerClassifier`` runs the same recipe
with frozen features computed once. Both use ``weights=None``: the cost per image is the same
as with ImageNet weights (which cannot be downloaded here), so the time ratio is honest, but
accuracies on random features only show that both learn. The feature cache is off, so
petalnet's figure is a cold first run.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import torch
from _shared import DEFAULT_DATA
from torch import nn
from torchvision import datasets, models, transforms

import petalnet

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def make_subset(src: Path, dst: Path, classes: int, n_train: int, n_valid: int) -> None:
    """Symlink a small Udacity-layout subset of ``src`` into ``dst``."""
    names = sorted(p.name for p in (src / "train").iterdir())[:classes]
    for split, n in (("train", n_train), ("valid", n_valid)):
        for c in names:
            (dst / split / c).mkdir(parents=True)
            for f in sorted((src / split / c).glob("*.jpg"))[:n]:
                (dst / split / c / f.name).symlink_to(f.resolve())


def frozen_backbone(name: str, weights: str | None) -> tuple[nn.Module, int, list, list]:
    """The seed's torchvision VGG16 as-is, or another petalnet backbone used the plain way."""
    if name == "vgg16":
        model = models.vgg16(weights=weights)
        model.classifier = nn.Identity()
        return model, 25088, MEAN, STD
    fx = petalnet.build_backbone(name, weights=weights)  # no folding, no channels-last
    return fx, fx.feature_dim, list(fx.preprocessing.mean), list(fx.preprocessing.std)


def seed_loop(
    data: Path,
    backbone: str,
    weights: str | None,
    epochs: int,
    hidden: int,
    lr: float,
    batch: int,
) -> dict:
    """The classic notebook loop, kept as close to the seed as possible."""
    features, n_features, mean, std = frozen_backbone(backbone, weights)
    train_tf = transforms.Compose(
        [
            transforms.RandomRotation(30),
            transforms.RandomResizedCrop(224),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    valid_tf = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    train_ds = datasets.ImageFolder(data / "train", transform=train_tf)
    valid_ds = datasets.ImageFolder(data / "valid", transform=valid_tf)
    trainloader = torch.utils.data.DataLoader(train_ds, batch_size=batch, shuffle=True)
    validloader = torch.utils.data.DataLoader(valid_ds, batch_size=batch)
    for p in features.parameters():
        p.requires_grad = False
    classifier = nn.Sequential(
        OrderedDict(
            [
                ("fc1", nn.Linear(n_features, hidden)),
                ("relu", nn.ReLU()),
                ("drop", nn.Dropout(0.2)),
                ("fc2", nn.Linear(hidden, len(train_ds.classes))),
                ("output", nn.LogSoftmax(dim=1)),
            ]
        )
    )
    model = nn.Sequential(features, classifier)
    criterion = nn.NLLLoss()
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr)
    history = []
    for epoch in range(epochs):
        model.train()
        features.eval()  # frozen: batch norm (if any) keeps its ImageNet statistics
        running = 0.0
        for images, labels in trainloader:
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
            running += loss.item()
        model.eval()
        correct = 0
        with torch.no_grad():
            for images, labels in validloader:
                correct += (model(images).argmax(1) == labels).sum().item()
        history.append(correct / len(valid_ds))
        print(
            f"seed epoch {epoch + 1}/{epochs}: train loss {running / len(trainloader):.3f}, "
            f"valid accuracy {history[-1]:.2%}",
            flush=True,
        )
    return {"best_valid_accuracy": max(history), "history": history}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--train", type=int, default=20, help="training images per class")
    ap.add_argument("--valid", type=int, default=5, help="validation images per class")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--hidden-units", type=int, default=512)
    ap.add_argument("--learning-rate", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu", help="petalnet's device; the seed loop is CPU")
    ap.add_argument("--backbone", default="vgg16")
    ap.add_argument("--weights", default="none", help="'none' (random init) or DEFAULT")
    args = ap.parse_args(argv)
    random.seed(0)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "flowers"
        make_subset(args.data, subset, args.classes, args.train, args.valid)

        start = time.perf_counter()
        weights = None if args.weights == "none" else args.weights
        seed = seed_loop(
            subset,
            args.backbone,
            weights,
            args.epochs,
            args.hidden_units,
            args.learning_rate,
            args.batch_size,
        )
        seed_s = time.perf_counter() - start

        start = time.perf_counter()
        clf = petalnet.FlowerClassifier(
            args.backbone,
            weights=weights,
            hidden_units=args.hidden_units,
            learning_rate=args.learning_rate,
            epochs=args.epochs,
            batch_size=args.batch_size,
            cache=False,
            random_state=0,
            device=args.device,
        ).fit(subset)
        ours_s = time.perf_counter() - start
    ours_acc = max(r["valid_accuracy"] for r in clf.history_)
    n = args.classes * (args.train + args.valid)
    print("\n| loop | wall time | best valid accuracy |\n|---|---|---|")
    print(f"| seed (backbone every epoch) | {seed_s:.1f} s | {seed['best_valid_accuracy']:.1%} |")
    print(f"| petalnet FlowerClassifier | {ours_s:.1f} s | {ours_acc:.1%} |")
    print(f"\n{n} images, {args.epochs} epochs: petalnet is {seed_s / ours_s:.1f}x faster")


if __name__ == "__main__":
    main()
