"""API keys (hashed), write protection, job ownership, CORS, rate limits with Retry-After, capacity 503."""
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conftest import marked_box

REPO = Path(__file__).resolve().parents[1]


def _mesh() -> bytes:
    buf = io.BytesIO()
    marked_box().export(buf, file_type="ply")
    return buf.getvalue()


def _app(monkeypatch, **env):
    from shape_library import settings

    monkeypatch.setenv("SHAPESEARCH_INDEX_ON_START", "false")
    monkeypatch.setenv("SHAPESEARCH_DEFAULT_LIBRARY", "false")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings.get_settings.cache_clear()
    from service.app import create_app

    return TestClient(create_app())


def test_cli_prints_a_key_once_and_stores_only_its_hash(data_dir):
    env = {"SHAPESEARCH_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "shape_library.cli", "api-key", "add", "alice"], cwd=REPO, env=env,
                         capture_output=True, text=True, check=True)
    key = out.stdout.strip()
    assert key.startswith("ss_") and len(key) > 40
    stored = (data_dir / "api_keys.json").read_text()
    assert key not in stored and json.loads(stored)[0]["name"] == "alice"
    listed = subprocess.run([sys.executable, "-m", "shape_library.cli", "api-key", "list"], cwd=REPO, env=env,
                            capture_output=True, text=True, check=True)
    assert listed.stdout.split() == ["alice"]
    from service.security import KeyStore

    assert KeyStore(data_dir / "api_keys.json").lookup(key) == "alice"
    assert KeyStore(data_dir / "api_keys.json").lookup(key + "x") is None


def test_writes_are_open_without_keys_and_need_one_with_keys(data_dir, monkeypatch):
    client = _app(monkeypatch)
    r = client.post("/v1/shapes", files={"mesh": ("a.ply", _mesh())}, data={"name": "a", "category": "misc"})
    assert r.status_code == 201, r.text

    from service.security import key_store

    alice, bob = key_store().add("alice"), key_store().add("bob")
    sid = r.json()["id"]
    assert client.get("/v1/shapes").status_code == 200                      # reading stays open
    r = client.delete(f"/v1/shapes/{sid}")
    assert r.status_code == 401 and "API key" in r.json()["detail"] and r.headers["www-authenticate"] == "ApiKey"
    assert client.delete(f"/v1/shapes/{sid}", headers={"X-API-Key": "ss_wrong"}).status_code == 401
    assert client.post("/v1/jobs", data={"kind": "reindex"}).status_code == 401
    assert client.delete(f"/v1/shapes/{sid}", headers={"Authorization": f"Bearer {alice}"}).status_code == 200

    # jobs remember who submitted them; another key may not cancel them
    png = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 10, 10)).save(png, "PNG")
    monkeypatch.setattr("worker.dispatch.submit", lambda pairs: None)   # keep the job queued
    job = client.post("/v1/jobs", files=[("image", ("p.png", png.getvalue(), "image/png"))], headers={"X-API-Key": alice}).json()
    assert job["owner"] == "alice"
    assert client.delete(f"/v1/jobs/{job['job_id']}").status_code == 401
    assert client.delete(f"/v1/jobs/{job['job_id']}", headers={"X-API-Key": bob}).status_code == 403
    assert client.delete(f"/v1/jobs/{job['job_id']}", headers={"X-API-Key": alice}).json()["status"] == "cancelled"


def test_cors_is_off_by_default_and_configurable(data_dir, monkeypatch):
    client = _app(monkeypatch)
    r = client.options("/v1/shapes", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in r.headers
    client = _app(monkeypatch, SHAPESEARCH_CORS_ORIGINS='["https://app.example"]')
    r = client.get("/v1/shapes", headers={"Origin": "https://app.example"})
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    r = client.get("/v1/shapes", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_rate_limit_answers_429_with_retry_after_per_client(data_dir, monkeypatch):
    client = _app(monkeypatch, SHAPESEARCH_RATE_LIMIT_PER_MINUTE="60", SHAPESEARCH_RATE_LIMIT_BURST="5")
    codes = [client.get("/v1/shapes").status_code for _ in range(8)]
    assert codes[:5] == [200] * 5 and codes[5:] == [429] * 3
    r = client.get("/v1/shapes")
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "rate limit" in r.json()["detail"]
    assert client.get("/healthz").status_code == 200                  # health and metrics are not limited
    from service.security import key_store

    key = key_store().add("carol")
    assert client.get("/v1/shapes", headers={"X-API-Key": key}).status_code == 200   # its own bucket


def test_capacity_turns_overload_into_503_with_retry_after():
    from fastapi import HTTPException

    from service.security import Capacity

    cap = Capacity(2)
    with cap, cap:
        with pytest.raises(HTTPException) as exc:
            with cap:
                pass
    assert exc.value.status_code == 503 and exc.value.headers["Retry-After"] == "1"
    with cap:  # released again
        pass


def test_hostile_mesh_uploads_get_clear_4xx(data_dir, monkeypatch):
    client = _app(monkeypatch, SHAPESEARCH_MAX_MESH_BYTES="100000", SHAPESEARCH_MAX_FACES="5000")
    post = lambda fname, data, **form: client.post("/v1/shapes", files={"mesh": (fname, data)},  # noqa: E731
                                                   data={"name": "x", "category": "misc", **form})
    r = post("a.ply", b"ply\nformat garbage\n")
    assert r.status_code == 422 and r.json()["detail"]
    r = post("a.exe", b"MZ\x90\x00")
    assert r.status_code == 415 and "unsupported mesh format" in r.json()["detail"]
    r = post("a.obj", b"v 0 0 0\n" * 20000)
    assert r.status_code == 413 and "larger than" in r.json()["detail"]
    r = post("a.off", b"OFF\n3 1 0\n0 0 0\nnan 0 0\n0 1 0\n3 0 1 2\n")
    assert r.status_code == 422
    import trimesh

    big = io.BytesIO()
    trimesh.creation.icosphere(subdivisions=5).export(big, file_type="ply")   # 20,480 faces
    r = client.post("/v1/shapes", files={"mesh": ("s.ply", big.getvalue())}, data={"name": "x", "category": "misc"})
    assert r.status_code in (413, 422) and r.json()["detail"]
    r = post("a.ply", _mesh(), name="\x00\x01")
    assert r.status_code == 422 and "printable" in r.json()["detail"]
    r = client.post("/v1/shapes", files={"mesh": ("a.ply", _mesh())}, data={"category": "misc"})
    assert r.status_code == 422 and "name" in r.json()["detail"]
    # mesh archives: traversal and bombs are refused before anything is written
    import zipfile

    def _zip(members):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for n, d in members.items():
                z.writestr(n, d)
        return buf.getvalue()

    r = post("m.zip", _zip({"../../evil.ply": _mesh()}))
    assert r.status_code == 422 and "unsafe path" in r.json()["detail"]
    r = post("m.zip", _zip({"bomb.obj": b"\0" * (50 * 2**20)}))
    assert r.status_code == 422 and "zip bomb" in r.json()["detail"]
    r = post("m.zip", b"PK\x03\x04garbage")
    assert r.status_code == 422 and "zip" in r.json()["detail"]
    assert client.get("/v1/shapes").json() == []
    r = post("m.zip", _zip({"box/box.ply": _mesh(), "box/LICENSE.txt": b"CC0"}))
    assert r.status_code == 201 and r.json()["faces"] > 0
