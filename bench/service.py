"""HTTP service under concurrent load, micro-batching on against off, from a second process.

    .venv/bin/python bench/service.py                       # lite profile, concurrency 1, 8, 32

Starts `unprompt serve` in a subprocess on a loopback port (once with batching, once
without), sends POST /v1/interrogate from this process at each concurrency, and prints p50
and p99 latency and images/s. Baseline: the same server with micro-batching off. The 7 example images repeat, so the
server's memory of prompt strings it has embedded is warm, as for a service that sees repeats.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
IMAGES = [p.read_bytes() for p in sorted((REPO / "data_manifests" / "examples" / "images").glob("*.jpg"))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(batching: bool, profile: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    exe = str(Path(sys.executable).parent / "unprompt")
    args = [exe, "serve", "--port", str(port), "--profile", profile] + ([] if batching else ["--no-batching"])
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "UNPROMPT_LOG_JSON": "false"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("server exited during start-up")
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become ready")


def load(url: str, concurrency: int, requests: int) -> tuple[list[float], float]:
    clients = [httpx.Client(base_url=url, timeout=120) for _ in range(concurrency)]

    def one(i: int) -> float:
        c = clients[i % concurrency]
        t = time.perf_counter()
        r = c.post("/v1/interrogate", content=IMAGES[i % len(IMAGES)], headers={"content-type": "image/jpeg"})
        r.raise_for_status()
        return time.perf_counter() - t

    for i in range(concurrency):  # warm each connection
        one(i)
    t = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - t
    for c in clients:
        c.close()
    return latencies, wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="lite")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests-per-client", type=int, default=8)
    ap.add_argument("--min-requests", type=int, default=40)
    args = ap.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    rows = {}
    for batching in (True, False):
        proc, url = start_server(batching, args.profile)
        try:
            for c in levels:
                n = max(args.min_requests, c * args.requests_per_client)
                lat, wall = load(url, c, n)
                rows[(batching, c)] = (statistics.median(lat) * 1000, float(np.percentile(lat, 99)) * 1000, n / wall)
            batches = [l for l in httpx.get(url + "/metrics").text.splitlines() if l.startswith("unprompt_batch_size_")]
            count = float(next(l.split()[-1] for l in batches if l.startswith("unprompt_batch_size_count")))
            total = float(next(l.split()[-1] for l in batches if l.startswith("unprompt_batch_size_sum")))
            rows[(batching, "mean_batch")] = total / count
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"profile {args.profile}; server and load generator on this machine ({os.cpu_count()} cores), loopback HTTP\n")
    print(f"{'batching':<10}{'conc.':>6}{'p50 ms':>10}{'p99 ms':>10}{'images/s':>10}")
    for batching in (True, False):
        for c in levels:
            p50, p99, rate = rows[(batching, c)]
            print(f"{'on' if batching else 'off':<10}{c:>6}{p50:>10.1f}{p99:>10.1f}{rate:>10.1f}")
    print(f"\nmean model batch: on {rows[(True, 'mean_batch')]:.2f}, off {rows[(False, 'mean_batch')]:.2f}")
    print("ratios, batching on / off (baseline):")
    for c in levels:
        on, off = rows[(True, c)], rows[(False, c)]
        print(f"  concurrency {c:>2}: images/s {on[2] / off[2]:.2f}x, p50 {on[0] / off[0]:.2f}x, p99 {on[1] / off[1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
