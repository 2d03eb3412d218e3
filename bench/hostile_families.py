"""Probe: every seeded mutation of the round-3 families (IPTC, BLP, ICO, PBM, FITS, QOI, RLE BMP) sent to a live
service beside three good requests; counts per family how many were tried and how many passed.

A case passes when the hostile request gets a 4xx in the error shape, the three good ones are answered 200
within 2 s of their time alone, and the server's RSS (the server process and its decode workers) stays
under 2 GB (the sum of proportional set sizes: pages a forked worker shares with the server count once).
A valid RLE BMP that decodes within the time limit may be answered 200. The old families (PNG, JPEG, WebP, GIF mutations of tests/hostile_images.py) are counted too,
where a 200 for the hostile file is also a pass (a mutation may still be a valid image).

    .venv/bin/python bench/hostile_families.py [--per-family 20] [--decode-timeout 1.0] [--out bench/results/hostile_families.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import httpx  # noqa: E402

from hostile_formats import family_mutations  # noqa: E402
from hostile_images import mutations  # noqa: E402
from server import LiveServer, rss_mb  # noqa: E402

EXAMPLES = REPO / "data_manifests" / "examples" / "images"
GOODS = [(n, (EXAMPLES / n).read_bytes()) for n in ("cat.jpg", "coffee.jpg", "rocket.jpg")]


def post(url: str, name: str, data: bytes) -> tuple[float, int, bool]:
    t = time.perf_counter()
    with httpx.Client(base_url=url, timeout=120) as c:
        r = c.post("/v1/interrogate", files={"file": (name, data, "application/octet-stream")})
    shaped = r.status_code == 200 or set(r.json()) == {"error"}
    return time.perf_counter() - t, r.status_code, shaped


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-family", type=int, default=20)
    ap.add_argument("--decode-timeout", type=float, default=1.0)
    ap.add_argument("--old-per-format", type=int, default=10, help="mutations per old format (PNG, JPEG, WebP, GIF)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from api.app import create_app
    from api.connections import uvicorn_options
    from api.settings import Settings
    from retriever.pipeline import Interrogator

    settings = Settings(max_batch_size=8, max_wait_ms=20, decode_timeout_s=args.decode_timeout)
    # RLE BMP is an accepted format: a mutation that still decodes within the time limit may be answered 200
    cases = [(f, n, d, f == "bmp_rle") for f, n, d in family_mutations(args.per_family)]
    cases += [(n.split("-")[0], n, d, True) for n, d in mutations(args.old_per_format)]
    counts: dict[str, dict] = {}
    with LiveServer(create_app(settings, Interrogator.load("lite")), **uvicorn_options(settings)) as server, \
            ThreadPoolExecutor(4) as pool:
        alone = max(t for t, _, _ in pool.map(lambda g: post(server.url, *g), GOODS))
        peak = 0.0
        for family, name, data, may_pass in cases:
            answers = list(pool.map(lambda g: post(server.url, *g), [(name, data), *GOODS]))
            peak = max(peak, rss_mb())
            (_, status, shaped), goods = answers[0], answers[1:]
            ok_hostile = shaped and (400 <= status < 500 or (may_pass and status == 200))
            ok_goods = all(s == 200 and t < alone + 2 for t, s, _ in goods)
            c = counts.setdefault(family, {"tried": 0, "passed": 0, "statuses": {}, "failed": []})
            c["tried"] += 1
            c["statuses"][str(status)] = c["statuses"].get(str(status), 0) + 1
            if ok_hostile and ok_goods and peak < 2048:
                c["passed"] += 1
            else:
                c["failed"].append({"case": name, "status": status, "goods_s": [round(t, 2) for t, _, _ in goods]})
    result = {"command": " ".join(["bench/hostile_families.py", *sys.argv[1:]]), "good_alone_s": round(alone, 3),
              "peak_rss_mb": round(peak), "decode_timeout_s": args.decode_timeout, "families": counts,
              "total": {"tried": sum(c["tried"] for c in counts.values()),
                        "passed": sum(c["passed"] for c in counts.values())}}
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["total"]["tried"] == result["total"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
