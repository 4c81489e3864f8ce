"""`petalnet serve` under load: concurrent clients on loopback, good and bad uploads mixed.

Usage (from the repository root)::

    python benchmarks/serve_load.py CHECKPOINT [--clients 8] [--seconds 30] [--bad 0.2]

Starts ``petalnet serve CHECKPOINT`` in its own process, then ``--clients`` threads post
photos from ``../shared`` valid/ for ``--seconds`` (bounded in count and time). A share
``--bad`` of requests are bad on purpose (text posing as a photo, a truncated JPEG, an
upload over the limit): they must get their 4xx and the good ones must keep getting 200.
Reports throughput, p50/p99 latency of the good requests, unexpected answers (must be 0),
and the server's resident memory before and after.
"""

from __future__ import annotations

import argparse
import itertools
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx
from _shared import DEFAULT_DATA, emit, machine


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--max_requests", type=int, default=5000)
    ap.add_argument("--bad", type=float, default=0.2, help="share of bad uploads")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    photos = [p.read_bytes() for p in sorted((args.data / "valid").rglob("*.jpg"))[:200]]
    bad = {
        415: ("notes.jpg", b"this is not a photo" * 10),
        400: ("cut.jpg", photos[0][: len(photos[0]) // 3]),
        413: ("huge.jpg", b"\xff" * (2 * 1024 * 1024 + 1)),
    }
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "petalnet", "serve", str(args.checkpoint), "--port", str(port)]
    server = subprocess.Popen([*cmd, "--max_upload_mb", "2"])
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        rss_before = _rss_mib(server.pid)
        latencies: list[float] = []
        answers: dict[str, int] = {}
        unexpected: list[str] = []
        counter = itertools.count()
        lock = threading.Lock()
        stop = time.monotonic() + args.seconds

        def client(seed: int) -> None:
            rng = random.Random(seed)
            with httpx.Client(base_url=base, timeout=60) as http:
                while time.monotonic() < stop and next(counter) < args.max_requests:
                    want = 200
                    upload = ("photo.jpg", rng.choice(photos))
                    if rng.random() < args.bad:
                        want = rng.choice(list(bad))
                        upload = bad[want]
                    start = time.perf_counter()
                    try:
                        got = http.post("/predict", files={"file": upload}).status_code
                    except httpx.HTTPError as exc:
                        got = -1
                        with lock:
                            unexpected.append(f"{type(exc).__name__}: {exc}")
                    took = time.perf_counter() - start
                    with lock:
                        answers[f"{want}->{got}"] = answers.get(f"{want}->{got}", 0) + 1
                        if got != want:
                            unexpected.append(f"wanted {want}, got {got}")
                        elif want == 200:
                            latencies.append(took)

        start = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        rss_after = _rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(30)
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else 0.0
    return emit(
        {
            "date": date.today().isoformat(),
            **machine(),
            "command": " ".join(["python benchmarks/serve_load.py", *(argv or sys.argv[1:])]),
            "clients": args.clients,
            "seconds": round(wall, 1),
            "requests": sum(answers.values()),
            "answers": answers,
            "good_per_second": round(len(latencies) / wall, 2),
            "p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
            "p99_ms": round(p99 * 1000, 1),
            "unexpected": len(unexpected),
            "unexpected_examples": unexpected[:5],
            "server_rss_mib_before": round(rss_before),
            "server_rss_mib_after": round(rss_after),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
