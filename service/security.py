"""API keys (stored hashed), per-client rate limits and a bound on concurrent heavy requests.

Reading is open. Writing (adding or removing shapes, re-indexing, cancelling jobs) needs a key once
any key exists: `shapesearch api-key add NAME` prints a new key once and keeps only its SHA-256.
Keys are 256-bit random tokens, so a plain hash is enough (no password stretching needed), and
the comparison is constant-time.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from fastapi import Header, HTTPException, Request
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import JSONResponse

from shape_library.library import atomic_write
from shape_library.settings import get_settings

KEY_PREFIX = "ss_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyRecord:
    name: str
    sha256: str


class KeyStore:
    def __init__(self, path: Path, extra_hashes: str | None = None):
        self.path = Path(path)
        self.extra = [KeyRecord(*item.split(":", 1)) for item in (extra_hashes or "").split(",") if ":" in item]

    def records(self) -> list[KeyRecord]:
        recs = list(self.extra)
        if self.path.is_file():
            recs += [KeyRecord(r["name"], r["sha256"]) for r in json.loads(self.path.read_text())]
        return recs

    def enabled(self) -> bool:
        return bool(self.records())

    def add(self, name: str) -> str:
        if not name or len(name) > 100 or not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError("key name: 1-100 letters, digits, '-' or '_'")
        rows = json.loads(self.path.read_text()) if self.path.is_file() else []
        if any(r["name"] == name for r in rows):
            raise ValueError(f"a key named {name!r} exists; remove it first")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        rows.append({"name": name, "sha256": hash_key(key), "created": datetime.now(timezone.utc).isoformat()})
        atomic_write(self.path, json.dumps(rows, indent=1).encode())
        return key

    def remove(self, name: str) -> bool:
        rows = json.loads(self.path.read_text()) if self.path.is_file() else []
        kept = [r for r in rows if r["name"] != name]
        atomic_write(self.path, json.dumps(kept, indent=1).encode())
        return len(kept) != len(rows)

    def lookup(self, key: str) -> str | None:
        h = hash_key(key)
        found = None
        for r in self.records():
            if hmac.compare_digest(r.sha256, h):
                found = r.name
        return found


def key_store() -> KeyStore:
    s = get_settings()
    return KeyStore(s.api_keys_path, s.api_key_hashes)


def _presented(x_api_key: str | None, authorization: str | None) -> str | None:
    if x_api_key:
        return x_api_key.strip()
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


def caller(x_api_key: str | None = Header(None, description="API key (write endpoints, when keys are configured)"),
           authorization: str | None = Header(None, include_in_schema=False)) -> str | None:
    """The key's name when a valid key is presented, None when none is (or no keys exist); 401 for a wrong key."""
    key = _presented(x_api_key, authorization)
    store = key_store()
    if key is None or not store.enabled():  # no keys configured: access control is off, a key means nothing
        return None
    name = store.lookup(key)
    if name is None:
        raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": "ApiKey"})
    return name


def require_writer(x_api_key: str | None = Header(None, description="API key, required when keys are configured"),
                   authorization: str | None = Header(None, include_in_schema=False)) -> str | None:
    """Write endpoints: open while no key exists; afterwards a valid key is required."""
    name = caller(x_api_key, authorization)
    if name is None and key_store().enabled():
        raise HTTPException(401, "this endpoint needs an API key (header X-API-Key)", headers={"WWW-Authenticate": "ApiKey"})
    return name


# Rate limits ---------------------------------------------------------------------------
class TokenBuckets:
    """Per-client token buckets: `rate` requests per minute, bursts up to `burst`."""

    def __init__(self, per_minute: float, burst: int):
        self.rate = per_minute / 60.0
        self.burst = burst
        self._b: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """0 when allowed, else the seconds until a token is available."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._b.get(client, (float(self.burst), now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._b[client] = (tokens - 1, now)
                if len(self._b) > 100_000:  # forget idle clients
                    self._b = {k: v for k, v in self._b.items() if now - v[1] < 600}
                return 0.0
            self._b[client] = (tokens, now)
            return (1 - tokens) / self.rate


class RateLimitMiddleware(BaseHTTPMiddleware):
    """429 with Retry-After once a client (its API key, else its address) exceeds its rate on /v1."""

    def __init__(self, app, per_minute: float, burst: int):
        super().__init__(app)
        self.buckets = TokenBuckets(per_minute, burst)

    async def dispatch(self, request: Request, call_next):
        if not request.url.path.startswith("/v1/"):
            return await call_next(request)
        key = _presented(request.headers.get("x-api-key"), request.headers.get("authorization"))
        client = "key:" + hash_key(key)[:16] if key else "ip:" + (request.client.host if request.client else "?")
        wait = self.buckets.take(client)
        if wait > 0:
            return JSONResponse({"detail": f"rate limit exceeded; retry in {math.ceil(wait)} s"}, status_code=429,
                                headers={"Retry-After": str(math.ceil(wait))})
        return await call_next(request)


class Capacity:
    """A bound on heavy requests in flight: past it, 503 with Retry-After at once instead of a slow timeout."""

    def __init__(self, limit: int):
        self._sem = threading.BoundedSemaphore(limit)

    def __enter__(self):
        if not self._sem.acquire(blocking=False):
            raise HTTPException(503, "server busy: too many searches in flight; retry shortly", headers={"Retry-After": "1"})
        return self

    def __exit__(self, *exc):
        self._sem.release()


_capacity: Capacity | None = None
_capacity_lock = threading.Lock()


def heavy() -> Capacity:
    global _capacity
    with _capacity_lock:
        if _capacity is None:
            _capacity = Capacity(get_settings().max_inflight_searches)
        return _capacity
