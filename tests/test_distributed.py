"""Two CPU processes under torchrun (gloo): training completes, rank 0 saves a normal checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from petalnet import FlowerClassifier

TESTS = Path(__file__).resolve().parent

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, sys.argv[3])
    import conftest  # registers the tiny_test backbone
    import torch.distributed as dist
    from petalnet import FlowerClassifier

    backbone, strategy = sys.argv[4], sys.argv[5]
    clf = FlowerClassifier(backbone, hidden_units=16, epochs=3, batch_size=8,
                           learning_rate=0.01, device="cpu", random_state=0, cache=False,
                           amp=False, verbose=1, strategy=strategy, unfreeze_blocks=1,
                           freeze_epochs=1)
    clf.fit(sys.argv[1])
    path = clf.save(sys.argv[2])
    weights = sum(float(p.double().sum()) for p in clf.backbone_.parameters())
    print("RANK", dist.get_rank(), "WORLD", dist.get_world_size(), "TRAIN", clf.n_train_,
          "BACKBONE", repr(weights), "HISTORY", json.dumps(clf.history_), flush=True)
    dist.destroy_process_group()
    """
)


@pytest.mark.parametrize(
    ("backbone", "strategy"), [("tiny_test", "freeze"), ("tiny_blocks", "freeze_unfreeze")]
)
def test_two_process_gloo_training(single_folder, tmp_path, backbone, strategy):
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    ckpt = tmp_path / "ddp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--standalone",
            str(script),
            str(single_folder),
            str(ckpt),
            str(TESTS),
            backbone,
            strategy,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("RANK")]
    assert len(lines) == 2
    # every rank saw all 25 training images and holds the same reduced metrics
    assert all(" TRAIN 25 " in line for line in lines)
    histories = [json.loads(line.split(" HISTORY ", 1)[1]) for line in lines]
    strip = [[{k: v for k, v in r.items() if k != "seconds"} for r in h] for h in histories]
    assert strip[0] == strip[1] and len(strip[0]) == 3
    # both ranks end with the same backbone (fine-tuned blocks kept in step by DDP)
    backbones = {line.split(" BACKBONE ", 1)[1].split()[0] for line in lines}
    assert len(backbones) == 1
    epoch_lines = [line for line in run.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 3  # only rank 0 logs
    clf = FlowerClassifier.load(ckpt, device="cpu")
    raw = torch.load(ckpt, weights_only=True)
    assert raw["format"] == "petalnet.checkpoint" and len(clf.history_) == 3
    proba = clf.predict_proba(single_folder / "2" / "img_000.jpg")
    np.testing.assert_allclose(proba.sum(), 1, rtol=1e-5)
