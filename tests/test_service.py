import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import trimesh
from PIL import Image
from fastapi.testclient import TestClient

from conftest import marked_box

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def client(data_dir, tmp_path):
    from service.app import create_app
    from shape_library.bootstrap import library_from_settings

    lib = library_from_settings()
    f = tmp_path / "box.ply"
    marked_box().export(f)
    lib.add(f, name="marked box", category="misc", subtype="test box")
    return TestClient(create_app())


def test_shapes_list_and_get(client):
    shapes = client.get("/v1/shapes").json()
    assert len(shapes) == 1
    s = shapes[0]
    assert {"id", "name", "category", "vertices", "faces", "indexed"} <= set(s)
    assert s["indexed"] is False and s["faces"] == 24
    assert client.get(f"/v1/shapes/{s['id']}").json()["name"] == "marked box"
    assert client.get("/v1/shapes", params={"category": "nothing"}).json() == []


def test_mesh_is_normalised_glb(client):
    sid = client.get("/v1/shapes").json()[0]["id"]
    r = client.get(f"/v1/shapes/{sid}/mesh")
    assert r.status_code == 200 and r.headers["content-type"] == "model/gltf-binary"
    mesh = trimesh.load(io.BytesIO(r.content), file_type="glb", force="mesh")
    assert np.isclose(np.linalg.norm(mesh.vertices, axis=1).max(), 1.0, atol=1e-5)
    lo, hi = mesh.bounds
    assert np.allclose((lo + hi) / 2, 0, atol=1e-5)
    assert mesh.extents[2] > mesh.extents[0] > mesh.extents[1] * 0.9  # still upright (+z)


def test_unknown_shape_is_404_and_bad_id_is_422(client):
    r = client.get("/v1/shapes/99999/mesh")
    assert r.status_code == 404 and "99999" in r.json()["detail"]
    r = client.get("/v1/shapes/not-a-number")
    assert r.status_code == 422 and "shape_id" in r.json()["detail"]


def test_healthz(client):
    body = client.get("/healthz").json()
    assert body["status"] == "ok" and body["shapes"] == 1 and body["device"] in ("cpu", "cuda")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_server_serves_the_generated_default_library(tmp_path):
    """`shapesearch serve` on loopback: the default library is generated and imported on first start."""
    port = _free_port()
    env = {**os.environ, "SHAPESEARCH_DATA_DIR": str(tmp_path / "var"), "PYOPENGL_PLATFORM": "egl"}
    env.pop("SHAPESEARCH_LIBRARY", None)
    cmd = [sys.executable, "-m", "shape_library.cli", "serve", "--no-index", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        shapes = httpx.get(f"http://127.0.0.1:{port}/v1/shapes", timeout=10).json()
        cats = {c: sum(s["category"] == c for s in shapes) for c in ("aeroplane", "boat", "car")}
        assert len(shapes) >= 24 and cats["aeroplane"] >= 8 and cats["boat"] >= 6 and cats["car"] >= 10
        r = httpx.get(f"http://127.0.0.1:{port}/v1/shapes/{shapes[0]['id']}/mesh", timeout=10)
        assert r.status_code == 200 and r.content[:4] == b"glTF"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_background_index_build_reports_progress(data_dir, tmp_path, monkeypatch):
    """On start the API answers at once while the view index builds in a thread; /healthz reports it."""
    from service import indexing
    from service.app import create_app
    from shape_library.bootstrap import library_from_settings

    monkeypatch.setenv("SHAPESEARCH_MATCHING_WEIGHTS", str(tmp_path / "absent.pt"))
    monkeypatch.setenv("SHAPESEARCH_DEFAULT_LIBRARY", "false")
    from shape_library import settings

    settings.get_settings.cache_clear()
    lib = library_from_settings()
    f = tmp_path / "box.ply"
    trimesh.creation.box(extents=[0.5, 1.0, 0.3]).export(f)
    lib.add(f, name="flat box", category="misc")
    with TestClient(create_app()) as client:
        assert client.get("/v1/shapes").status_code == 200
        deadline = time.time() + 120
        while time.time() < deadline:
            idx = client.get("/healthz").json()["index"]
            if idx["state"] in ("ready", "failed"):
                break
            time.sleep(0.5)
        assert idx["state"] == "ready" and idx["done"] == idx["total"] == 1, idx
        assert client.get("/v1/shapes").json()[0]["indexed"] is True
    assert indexing.status()["state"] == "ready"


def test_search_with_nothing_indexed_is_503_naming_the_index_not_a_no_match(client, monkeypatch):
    from service import indexing

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 130, 140)).save(buf, "PNG")
    post = lambda **form: client.post("/v1/search", files={"image": ("p.png", buf.getvalue(), "image/png")}, data=form)  # noqa: E731
    monkeypatch.setattr(indexing, "_state", {**indexing._state, "state": "idle", "error": None})
    r = post()
    assert r.status_code == 503, r.text
    assert "no shape is indexed yet" in r.json()["detail"] and r.headers["retry-after"] == "15"
    monkeypatch.setattr(indexing, "_state", {**indexing._state, "state": "building", "done": 3, "total": 27})
    r = post()
    assert r.status_code == 503 and "building (3 of 27 shapes done)" in r.json()["detail"]
