"""petalnet keeps batch-sized CPU buffers in glibc's heap unless told or tuned otherwise."""

from __future__ import annotations

import platform
import sys

import pytest

from petalnet import _allocator

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.parametrize(
    "environ",
    [
        {"PETALNET_MALLOC": "default"},
        {"PETALNET_MALLOC": "OFF"},
        {"PETALNET_MALLOC": "0"},
        {"MALLOC_MMAP_THRESHOLD_": "65536"},
        {"MALLOC_TRIM_THRESHOLD_": "0"},
        {"MALLOC_TOP_PAD_": "0"},
        {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"},
    ],
)
def test_an_opt_out_or_the_users_own_tuning_is_left_alone(environ: dict[str, str]) -> None:
    assert not _allocator.wanted(environ)


def test_tuned_on_glibc_only() -> None:
    assert _allocator.wanted({}) is GLIBC
    other = {"PETALNET_MALLOC": "on", "GLIBC_TUNABLES": "glibc.pthread.rseq=0"}
    assert _allocator.wanted(other) is GLIBC


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_glibc_accepts_both_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PETALNET_MALLOC", *_allocator._USER_TUNED, "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    _allocator.keep_cpu_buffers.cache_clear()
    try:
        assert _allocator.keep_cpu_buffers()  # mallopt returned 1 for both
    finally:
        _allocator.keep_cpu_buffers.cache_clear()


def test_a_cpu_pipeline_tunes_malloc(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from petalnet.pipeline import ImagePipeline

    calls: list[int] = []
    monkeypatch.setattr("petalnet.pipeline.keep_cpu_buffers", lambda: calls.append(1) or True)
    ImagePipeline(object(), device=torch.device("cpu"))  # type: ignore[arg-type]
    ImagePipeline(object(), device=torch.device("meta"))  # type: ignore[arg-type]
    assert calls == [1]
