"""The row store: reuse, invalidation, bounds, crashes, concurrent writers, mapped rows."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import QUICK_FIT, draw_flower, make_class_folders
from petalnet import FlowerClassifier, rowstore
from petalnet import precision as precision_module
from petalnet import rows as rows_module
from petalnet.cache import default_cache_dir
from petalnet.data import load_training_data
from petalnet.features import View
from petalnet.images import Unreadable
from petalnet.precision import resolve_precision
from petalnet.rows import compact, empty_rows
from petalnet.rowstore import RowStore

TESTS = Path(__file__).resolve().parent

FAST = {**QUICK_FIT, "epochs": 4, "cache": True}


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    make_class_folders(root / "train", per_class=4, seed=1, n_classes=3)
    make_class_folders(root / "valid", per_class=2, seed=2, n_classes=3)
    return root


def fit(data, cache_dir, **kw):
    return FlowerClassifier("tiny_test", cache_dir=cache_dir, **{**FAST, **kw}).fit(data)


def shards(cache_dir):
    return sorted(Path(cache_dir).glob("rows-v2/*/*.rows"))


def stored_rows(cache_dir):
    with sqlite3.connect(Path(cache_dir) / "rows-v2" / "index.sqlite") as con:
        return con.execute("SELECT COUNT(*) FROM rows").fetchone()[0]


def test_second_fit_reuses_every_feature(data, tmp_path, backbone_calls):
    fit(data, tmp_path / "cache")
    assert sum(backbone_calls) == 18  # 12 train + 6 valid
    assert stored_rows(tmp_path / "cache") == 18 and len(shards(tmp_path / "cache")) == 1
    backbone_calls.clear()
    clf = fit(data, tmp_path / "cache", hidden_units=[8, 8], learning_rate=0.005)
    assert backbone_calls == []
    clf.evaluate(data / "valid")  # evaluate reads the same store
    assert backbone_calls == []


def test_changed_file_is_recomputed_alone(data, tmp_path, backbone_calls):
    fit(data, tmp_path / "cache")
    backbone_calls.clear()
    target = data / "train" / "2" / "img_001.jpg"
    draw_flower("3", seed=777, size=(50, 44)).save(target)
    fit(data, tmp_path / "cache")
    assert sum(backbone_calls) == 1


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"backbone": "tiny_test_wide_crop"}, 18),  # preprocessing differs
        ({"weights": "OTHER"}, 18),  # parameters differ
        ({"amp": True}, 18),  # precision differs
        ({"dropout": 0.5}, 0),  # head settings do not matter
    ],
)
def test_what_invalidates_the_cache(data, tmp_path, backbone_calls, change, expected):
    fit(data, tmp_path / "cache")
    backbone_calls.clear()
    FlowerClassifier(
        **{"backbone": "tiny_test", "cache_dir": tmp_path / "cache", **FAST, **change}
    ).fit(data)
    assert sum(backbone_calls) == expected


@pytest.mark.parametrize("mapped", [False, True])
def test_results_agree_cold_warm_and_without_store(data, tmp_path, monkeypatch, mapped):
    if mapped:  # every row array a memory-mapped file, as for a large data set
        monkeypatch.setattr(rows_module, "IN_MEMORY_BYTES", 0)
    cold = fit(data, tmp_path / "cache")
    warm = fit(data, tmp_path / "cache")
    off = fit(data, None, cache=False)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(cold.history_) == strip(warm.history_) == strip(off.history_)
    images = sorted((data / "valid").glob("*/*.jpg"))
    np.testing.assert_array_equal(warm.predict_proba(images), off.predict_proba(images))


def mapping_of(address):
    """The /proc/self/maps line of the region holding ``address``."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if lo <= address < hi:
            return line
    return ""


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc")
def test_large_row_arrays_are_file_backed_and_compact_in_place(monkeypatch):
    monkeypatch.setattr(rows_module, "IN_MEMORY_BYTES", 0)
    rows = empty_rows((10, 4))
    line = mapping_of(rows.data_ptr())
    assert "(deleted)" in line  # a mapped file without a name: nothing is left behind
    small = torch.empty(10, 4)
    assert "(deleted)" not in mapping_of(small.data_ptr())
    rows[:] = torch.arange(40.0).reshape(10, 4)
    kept = torch.tensor([1, 4, 5, 9])
    expected = rows[kept].clone()
    assert torch.equal(compact(rows, kept), expected)


def test_cache_off_writes_nothing(data, tmp_path, monkeypatch):
    monkeypatch.setenv("PETALNET_CACHE_DIR", str(tmp_path / "default"))
    fit(data, None, cache=False)
    assert not (tmp_path / "default").exists()
    fit(data, None)
    assert (tmp_path / "default").exists()  # cache_dir=None means the default location


def test_random_init_is_not_cached(data, tmp_path):
    fit(data, tmp_path / "cache", weights=None)
    assert not shards(tmp_path / "cache")


@pytest.mark.parametrize("damage", ["truncate_shard", "delete_shard", "garbage_index", "no_index"])
def test_deleting_or_damaging_the_store_is_safe(data, tmp_path, backbone_calls, damage):
    cache = tmp_path / "cache"
    first = fit(data, cache)
    shard, index = shards(cache)[0], cache / "rows-v2" / "index.sqlite"
    if damage == "truncate_shard":
        shard.write_bytes(shard.read_bytes()[: 5 * 32 * 4])  # 5 of 18 rows left
    elif damage == "delete_shard":
        shard.unlink()
    else:
        for f in cache.glob("rows-v2/index.sqlite*"):
            f.unlink()
        if damage == "garbage_index":
            index.write_bytes(b"not a database" * 100)
    backbone_calls.clear()
    second = fit(data, cache)
    assert sum(backbone_calls) == 18  # recomputed (a shortened shard is started again)
    backbone_calls.clear()
    third = fit(data, cache)  # and stored again
    assert backbone_calls == []
    shutil.rmtree(cache)
    fourth = fit(data, cache)
    losses = {r.history_[-1]["train_loss"] for r in (first, second, third, fourth)}
    assert len(losses) == 1


def test_shards_hold_many_rows_and_a_read_writes_nothing(tmp_path):
    row = np.arange(64, dtype=np.float32)
    store = RowStore(tmp_path, {"x": 1}, shard_bytes=100 * row.nbytes)
    keys = [i.to_bytes(16, "little") for i in range(250)]
    with store.appender() as app:
        for start in range(0, 250, 7):
            part = keys[start : start + 7]
            app.add(part, np.stack([row + i for i in range(start, start + len(part))]))
    assert len(shards(tmp_path)) == 3  # 100 + 100 + 50 rows
    before = {f: f.stat().st_mtime_ns for f in shards(tmp_path)}
    out = np.zeros((252, 64), dtype=np.float32)
    found = store.read_into([*keys[::-1], None, b"missing".ljust(16)], out)
    assert found.tolist() == [True] * 250 + [False, False]
    np.testing.assert_array_equal(out[0], row + 249)
    np.testing.assert_array_equal(out[249], row)
    assert {f: f.stat().st_mtime_ns for f in shards(tmp_path)} == before


def test_store_is_bounded_least_recently_used_shard_first(tmp_path, monkeypatch):
    clock = iter(range(1000, 2000))
    monkeypatch.setattr(rowstore.time, "time", lambda: float(next(clock)))
    row = np.zeros(256, dtype=np.float32)  # 1 kB: one row per shard below
    store = RowStore(tmp_path, {"x": 1}, max_bytes=3 * row.nbytes, shard_bytes=row.nbytes)
    store.max_bytes = 10**9  # fill first, then bound
    for i in range(5):
        with store.appender() as app:
            app.add([bytes([i]) * 16], row[None])
    out = np.zeros((1, 256), dtype=np.float32)
    assert store.read_into([bytes([0]) * 16], out).all()  # using 00 makes it most recent
    store.max_bytes = 3 * row.nbytes
    assert store.evict() == 2 * row.nbytes
    left = [k for k in range(5) if store.read_into([bytes([k]) * 16], out).all()]
    assert left == [0, 3, 4] and len(shards(tmp_path)) == 3


def test_namespace_and_key_depend_on_their_inputs(tmp_path):
    a = RowStore(tmp_path, {"backbone": "x", "preprocessing": {"crop": 224}})
    b = RowStore(tmp_path, {"backbone": "x", "preprocessing": {"crop": 256}})
    assert a.namespace != b.namespace
    image = tmp_path / "i.jpg"
    draw_flower("1", seed=0).save(image)
    assert a.key(image) == a.key(image) != a.key(image, "aug1")
    before = a.key(image)
    draw_flower("2", seed=1).save(image)
    assert a.key(image) != before


def test_float16_rows_live_in_their_own_namespace(tmp_path):
    full = RowStore(tmp_path, {"backbone": "x"})
    half = RowStore(tmp_path, {"backbone": "x"}, dtype="float16")
    assert full.namespace == RowStore(tmp_path, {"backbone": "x"}, dtype="float32").namespace
    assert half.namespace != full.namespace
    vec = np.linspace(-3, 3, 64, dtype=np.float32)
    key = b"k" * 16
    for store in (full, half):
        with store.appender() as app:
            app.add([key], vec[None])
    got_full, got_half = np.zeros((1, 64), np.float32), np.zeros((1, 64), np.float16)
    assert full.read_into([key], got_full).all() and half.read_into([key], got_half).all()
    assert np.array_equal(got_full[0], vec)
    np.testing.assert_allclose(got_half[0], vec, rtol=1e-3)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("PETALNET_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "petalnet"
    monkeypatch.setenv("PETALNET_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"


def test_augmented_views_are_cached_reproducible_and_different(data, tmp_path, backbone_calls):
    clf = fit(data, tmp_path / "cache", augment_views=2)
    assert sum(backbone_calls) == 2 * 12 + 6
    paths = [p for p, _ in load_training_data(data).train]
    x = clf.pipeline_.features(paths, unreadable=Unreadable(), views=View.augmented(2))[0]
    assert x.shape == (2, 12, 32) and not torch.equal(x[0], x[1])
    backbone_calls.clear()
    again = fit(data, tmp_path / "cache", augment_views=2)
    assert backbone_calls == []
    fresh = fit(data, tmp_path / "other_cache", augment_views=2)  # recomputed, same draws
    assert again.history_[-1]["train_loss"] == fresh.history_[-1]["train_loss"]


# A fit that stores rows slowly, 2 per batch and 4 per commit, so it can be killed midway.
SLOW_FIT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, sys.argv[3])
    import conftest  # registers tiny_test
    from petalnet import FlowerClassifier, features, rowstore
    rowstore.COMMIT_ROWS = 4
    real = features.run_backbone
    def slow(*args, **kwargs):
        time.sleep(float(sys.argv[4]))
        return real(*args, **kwargs)
    features.run_backbone = slow
    FlowerClassifier("tiny_test", cache_dir=sys.argv[2], extract_batch_size=2,
                     **{**conftest.QUICK_FIT, "epochs": 2, "cache": True}).fit(sys.argv[1])
    print("done")
    """
)


def slow_fit(data, cache, delay):
    script = Path(cache).parent / "slow_fit.py"
    script.write_text(SLOW_FIT)
    args = [sys.executable, str(script), str(data), str(cache), str(TESTS), str(delay)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_9_during_extraction_keeps_committed_rows(data, tmp_path, backbone_calls):
    cache = tmp_path / "cache"
    proc = slow_fit(data, cache, delay=0.3)
    deadline = time.monotonic() + 120
    committed = 0
    while time.monotonic() < deadline and committed < 8:
        time.sleep(0.05)
        try:
            committed = stored_rows(cache)
        except sqlite3.Error:  # not created yet
            continue
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert 8 <= committed < 18, proc.stderr.read()[-2000:]
    committed = stored_rows(cache)  # the store opens after the kill
    backbone_calls.clear()
    fit(data, cache)  # reuses every committed row, computes the rest
    assert sum(backbone_calls) == 18 - committed
    assert stored_rows(cache) == 18
    backbone_calls.clear()
    fit(data, cache)
    assert backbone_calls == []


def test_two_fits_fill_one_store_at_once(tmp_path, backbone_calls):
    one, two = tmp_path / "one", tmp_path / "two"
    for root, seed in ((one, 1), (two, 5)):
        make_class_folders(root / "train", per_class=4, seed=seed, n_classes=3)
        make_class_folders(root / "valid", per_class=2, seed=seed + 1, n_classes=3)
    cache = tmp_path / "cache"
    procs = [slow_fit(root, cache, delay=0.02) for root in (one, two)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    assert stored_rows(cache) == 36
    backbone_calls.clear()
    fit(one, cache)
    fit(two, cache)
    assert backbone_calls == []


def test_precision_resolution(monkeypatch):
    cpu, cuda, mps = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", cpu) == torch.float32
    assert resolve_precision(True, cpu) == torch.bfloat16
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", cpu) == torch.bfloat16
    assert resolve_precision(False, cpu) == torch.float32
    assert resolve_precision("auto", cuda) == torch.float16
    assert resolve_precision("auto", mps) == torch.float32
    with pytest.raises(ValueError, match="amp"):
        resolve_precision("yes", cpu)


def test_parameter_fingerprint_covers_buffers_and_scalars():
    from torch import nn

    from petalnet.cache import parameter_fingerprint

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))  # has a 0-dim buffer
    before = parameter_fingerprint(net)
    assert parameter_fingerprint(net) == before
    net[1].running_mean += 1
    assert parameter_fingerprint(net) != before


def test_row_keys_of_several_views_match_row_key_one_by_one(tmp_path):
    from petalnet.rowstore import row_key, row_keys

    image = tmp_path / "a.jpg"
    image.write_bytes(b"x")
    views = ["center", "side1", "side2-mirror"]
    assert row_keys(image, views) == [row_key(image, v) for v in views]
    assert len(set(row_keys(image, views))) == 3
