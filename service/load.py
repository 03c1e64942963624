"""Load script: N concurrent clients on /v1/search (and job submission) against a running server.

    python -m service.load --url http://127.0.0.1:8000 --clients 8 --requests 200 --seconds 60

Bounded by both a request count and a time limit. Reports throughput, p50/p99 latency, and the
status codes: overload must show as 429/503 with Retry-After, never as a 5xx or a timeout.
"""
from __future__ import annotations

import argparse
import io
import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from PIL import Image


def photo(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (160, 120), tuple(int(v) for v in rng.integers(120, 255, 3)))
    img.paste(Image.new("RGB", (60, 40), tuple(int(v) for v in rng.integers(0, 120, 3))), (50, 40))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def run(url: str, clients: int, requests: int, seconds: float, jobs_every: int = 0, refine: bool = False) -> dict:
    deadline = time.monotonic() + seconds
    counter = iter(range(requests))
    lock = threading.Lock()
    lat: dict[str, list[float]] = {"search": [], "jobs": []}
    codes: Counter = Counter()
    retry_after_missing = 0
    errors: Counter = Counter()

    def client(cid: int) -> None:
        nonlocal retry_after_missing
        with httpx.Client(base_url=url, timeout=60) as http:
            while time.monotonic() < deadline:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                kind = "jobs" if jobs_every and i % jobs_every == 0 else "search"
                t0 = time.perf_counter()
                try:
                    if kind == "search":
                        r = http.post("/v1/search", files={"image": ("p.jpg", photo(i), "image/jpeg")},
                                      data={"top_k": "3", "refine": str(refine).lower()})
                    else:
                        r = http.post("/v1/jobs", files=[("image", (f"p{k}.jpg", photo(i * 10 + k), "image/jpeg")) for k in range(3)],
                                      data={"top_k": "1", "refine": "false"})
                except httpx.HTTPError as exc:
                    with lock:
                        errors[type(exc).__name__] += 1
                    continue
                dt = time.perf_counter() - t0
                with lock:
                    codes[r.status_code] += 1
                    if r.status_code in (200, 202):
                        lat[kind].append(dt)
                    if r.status_code in (429, 503) and "retry-after" not in r.headers:
                        retry_after_missing += 1

    t0 = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.monotonic() - t0
    ok = sum(v for k, v in codes.items() if k in (200, 202))

    def pct(v, q):
        return round(float(np.percentile(v, q)) * 1000, 1) if v else None

    return {"url": url, "clients": clients, "wall_s": round(wall, 1), "requests": sum(codes.values()), "ok": ok,
            "throughput_rps": round(ok / wall, 2), "status": {str(k): v for k, v in sorted(codes.items())},
            "server_errors_5xx": sum(v for k, v in codes.items() if k >= 500 and k != 503),
            "overload_without_retry_after": retry_after_missing, "client_errors": dict(errors),
            "search_p50_ms": pct(lat["search"], 50), "search_p99_ms": pct(lat["search"], 99),
            "jobs_p50_ms": pct(lat["jobs"], 50), "jobs_p99_ms": pct(lat["jobs"], 99)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m service.load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--jobs-every", type=int, default=10, help="every n-th request submits a 3-image job (0: none)")
    p.add_argument("--refine", action="store_true")
    args = p.parse_args(argv)
    print(json.dumps(run(args.url, args.clients, args.requests, args.seconds, args.jobs_every, args.refine), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
