"""Every Python snippet in README.md and docs/ runs, page by page, on a tiny fitted model.

Each page's ```python blocks run in order in one namespace (as a reader would paste them),
in a folder holding what the prose assumes: ``flowers/`` (train/ valid/ test/ and
``cat_to_name.json``), ``photo.jpg``/``rose.jpg``/``a.jpg``/``b.jpg``,
``runs/checkpoint.pt``, ``tiny_cnn.pth``, and the names ``clf`` (fitted), ``pil_image``,
``many_paths`` and ``FlowerClassifier``. The backbones the docs name (``vgg16``,
``efficientnet_lite0``, ``resnet50``) are a tiny CNN of three blocks here: what is checked is
that the code runs as printed, not its accuracy.
"""

from __future__ import annotations

import json
import re
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from conftest import draw_flower, tiny_blocks
from petalnet import FlowerClassifier
from petalnet.backbones.registry import registered

ROOT = Path(__file__).parents[1]
STAND_INS = ("vgg16", "efficientnet_lite0", "efficientnet_lite1", "resnet50")


def _blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


PAGES = [p for p in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))) if _blocks(p)]


def test_the_docs_have_python_snippets():
    assert len(PAGES) >= 8 and sum(len(_blocks(p)) for p in PAGES) >= 15


def _stand_in(weights: str | None = "DEFAULT"):
    return tiny_blocks(weights)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("docs")
    classes = {"1": "pink primrose", "73": "water lily"}
    for split, count, seed in (("train", 8, 1), ("valid", 3, 2), ("test", 3, 3)):
        for label in classes:
            folder = root / "flowers" / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                draw_flower(label, seed * 1000 + int(label) * 10 + i).save(folder / f"{i}.jpg")
    (root / "flowers" / "cat_to_name.json").write_text(json.dumps(classes))
    for name, label in (("photo.jpg", "1"), ("rose.jpg", "73"), ("a.jpg", "1"), ("b.jpg", "73")):
        draw_flower(label, 99).save(root / name)
    body = nn.Sequential(nn.Conv2d(3, 32, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    torch.save(body.state_dict(), root / "tiny_cnn.pth")
    return root


@pytest.mark.timeout(300)
@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_python_snippet_runs(page: Path, sandbox: Path, monkeypatch) -> None:
    monkeypatch.chdir(sandbox)
    monkeypatch.setenv("PETALNET_CACHE_DIR", str(sandbox / "cache"))
    with ExitStack() as stack:
        for name in STAND_INS:
            stack.enter_context(registered(name, _stand_in))
        clf = FlowerClassifier("efficientnet_lite0", epochs=2, random_state=0, verbose=0)
        clf.fit("flowers/")
        clf.save("runs/checkpoint.pt")
        namespace = {
            "__name__": "__doc_snippet__",
            "clf": clf,
            "pil_image": Image.open("photo.jpg"),
            "many_paths": ["a.jpg", "missing.jpg", "b.jpg"],
            "FlowerClassifier": FlowerClassifier,
        }
        for i, block in enumerate(_blocks(page)):
            code = compile(block, f"{page.relative_to(ROOT)} (python block {i + 1})", "exec")
            exec(code, namespace)  # the docs' own code, run as a reader would
