"""Two CPU processes under torchrun (gloo): training completes, rank 0 saves a normal checkpoint."""

from __future__ import annotations

import json
import os
import re
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

    import petalnet.batches
    held = []  # the rows each training source of this rank holds
    real_init = petalnet.batches.TensorBatches.__init__
    def recording(self, inputs, labels, device):
        held.append(len(labels))
        real_init(self, inputs, labels, device)
    petalnet.batches.TensorBatches.__init__ = recording

    backbone, strategy = sys.argv[4], sys.argv[5]
    quantize, extra = json.loads(sys.argv[7]), json.loads(sys.argv[8])
    import petalnet.calibration
    from petalnet.pipeline import ImagePipeline
    if "calibration_size" in extra:  # a split larger than the cap: calibrate on a sample
        petalnet.calibration.CALIBRATION_SIZE = extra.pop("calibration_size")
    side = []  # the images whose side views this rank computed (its share)
    real_features = ImagePipeline.features
    def spying(self, images, labels=None, **kwargs):
        got = real_features(self, images, labels, **kwargs)
        if len(kwargs.get("views", ())) > 1:
            side.extend(str(images[i]) for i in got.positions.tolist())
        return got
    ImagePipeline.features = spying
    clf = FlowerClassifier(backbone, hidden_units=16, epochs=3, batch_size=8,
                           learning_rate=0.01, device="cpu", random_state=0, cache=False,
                           amp=False, verbose=1, strategy=strategy, unfreeze_blocks=1,
                           freeze_epochs=1, split="stratified",  # synthetic photos group whole
                           quantize=quantize, **extra)
    clf.fit(sys.argv[1])
    calibrated = clf.model_.calibration
    calibration = [calibrated.temperature, calibrated.threshold]
    side_in_fit = list(side)
    path = clf.save(sys.argv[2])
    dist.barrier()  # rank 0 has written the checkpoint
    weights = sum(float(p.double().sum()) for p in clf.backbone_.parameters())
    images = json.loads(sys.argv[6])
    loaded = FlowerClassifier.load(path, device="cpu")
    proba = loaded.predict_proba([i for i in images if "bad" not in i]).tolist()
    outcomes = [(str(r.image), r.error is not None, [p.label for p in r.predictions])
                for r in loaded.iter_predictions(images, topk=2)]
    # one file per rank: the ranks' stdout lines interleave (even mid-line)
    report = {"rank": dist.get_rank(), "world": dist.get_world_size(), "train": clf.n_train_,
              "backbone": weights, "history": clf.history_, "held": held, "proba": proba,
              "outcomes": outcomes, "calibration": calibration, "side": side_in_fit,
              "int8": [list(o) for o in clf.backbone_.meta.int8.observers] if quantize else None}
    with open(f"{sys.argv[2]}.rank{dist.get_rank()}.json", "w") as f:
        json.dump(report, f)
    dist.destroy_process_group()
    """
)


@pytest.mark.parametrize(
    ("backbone", "strategy", "quantize", "extra"),
    [
        ("tiny_test", "freeze", None, {}),
        ("tiny_blocks", "freeze_unfreeze", None, {}),
        pytest.param("tiny_test", "freeze", "int8", {}, id="int8"),
        # 5 validation images, a cap of 3: each rank computes the side views of its share
        # of one even sample, and both calibrate on all of it
        pytest.param(
            "tiny_test", "freeze", None, {"tta": "crops", "calibration_size": 3}, id="capped"
        ),
    ],
)
def test_two_process_gloo_training(single_folder, tmp_path, backbone, strategy, quantize, extra):
    if quantize:
        pytest.importorskip("torchao")
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    files = sorted(single_folder.rglob("*.jpg"))
    # repeats and a bad file (twice) among them: every answer must come back in input order
    images = [str(f) for f in [files[3], bad, *files[:7], files[3], bad, files[0]]]
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
            json.dumps(images),
            json.dumps(quantize),
            json.dumps(extra),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    reports = [json.loads((tmp_path / f"ddp.pt.rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world"]) for r in reports] == [(0, 2), (1, 2)]
    # 25 training images in all; each rank holds only its share of the rows
    assert all(r["train"] == 25 for r in reports)
    assert sorted(r["held"][0] for r in reports) == [12, 13]  # train rows, not 25 each
    assert sum(r["held"][1] for r in reports) == 5  # valid rows, split too
    strip = [
        [{k: v for k, v in e.items() if k != "seconds"} for e in r["history"]] for r in reports
    ]
    assert strip[0] == strip[1] and len(strip[0]) == 3
    # both ranks end with the same backbone (fine-tuned blocks kept in step by DDP)
    assert reports[0]["backbone"] == reports[1]["backbone"]
    assert len(re.findall(r"epoch \d/3 ", run.stdout)) == 3  # only rank 0 logs
    clf = FlowerClassifier.load(ckpt, device="cpu")
    raw = torch.load(ckpt, weights_only=True)
    assert raw["format"] == "petalnet.checkpoint" and len(clf.history_) == 3
    # under torchrun, predictions equal one process's, row for row, on every rank
    alone = clf.predict_proba([i for i in images if "bad" not in i])
    for r in reports:
        np.testing.assert_allclose(np.array(r["proba"]), alone, rtol=1e-5, atol=1e-6)
    expected = [
        [str(r.image), r.error is not None, [p.label for p in r.predictions]]
        for r in clf.iter_predictions(images, topk=2)
    ]
    assert [e[1] for e in expected] == [False, True] + [False] * 8 + [True, False]
    assert reports[0]["outcomes"] == reports[1]["outcomes"] == expected
    # both ranks fitted the same temperature and threshold, from all of the rows gathered
    assert reports[0]["calibration"] == reports[1]["calibration"]
    if "calibration_size" in extra:
        shares = [r["side"] for r in reports]
        assert sorted(map(len, shares)) == [1, 2]  # 3 images' side views, split between ranks
        assert not set(shares[0]) & set(shares[1])
        assert reports[0]["calibration"][1] is not None  # a threshold was fitted
    if quantize:  # rank 0 calibrated; every rank ran with its scales, which the file holds
        saved = [list(o) for o in clf.backbone_.meta.int8.observers]
        assert reports[0]["int8"] == reports[1]["int8"] == saved


def _gather_empty_share(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from petalnet import distributed

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        # rank 1 has no validation rows: its empty logits do not know their width
        local = torch.ones(2, 3) if rank == 0 else torch.zeros(0, 0)
        got = distributed.gather_tensor(local)
        Path(f"{out}.{rank}").write_text(json.dumps(list(got.shape)))
    finally:
        dist.destroy_process_group()


def test_gather_tensor_with_an_empty_share_of_unknown_width(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "shape")
    mp.spawn(_gather_empty_share, args=(port, out), nprocs=2, join=True)
    assert [json.loads(Path(f"{out}.{r}").read_text()) for r in (0, 1)] == [[2, 3], [2, 3]]
