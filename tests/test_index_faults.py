"""Index faults: a full disk, an unwritable index folder, damaged files.

Writes are atomic (no partial file, the old file intact), every index file carries a checksum
checked on load, a damaged file is removed and rendered again from the catalog's mesh with the
same content, and through the API a failed write fails the indexing item with the folder and the
cause while search over the shapes already indexed keeps answering. The read-only folder is tested
with chmod where the tests do not run as root (root ignores permissions) and, everywhere, by
making the file system calls fail as a read-only or forbidden folder makes them fail.
"""
import errno
import io
import logging
import os
import shutil
import time

import numpy as np
import pytest
import torch
import trimesh
from fastapi.testclient import TestClient
from PIL import Image

from conftest import marked_box
from shape_library import atomic
from shape_library.atomic import IndexWriteError
from shape_library.catalog import IndexStatus
from shape_library.features import FeatureIndex
from shape_library.grid import PoseGrid
from shape_library.index import DamagedIndexFile, ViewIndex, ViewIndexConfig
from shape_library.library import ShapeLibrary

CFG = ViewIndexConfig(grid=PoseGrid(4, 3, 2), canvas=64, crop=32)
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
FAULTS = {
    "ENOSPC": (errno.ENOSPC, "No space left on device (ENOSPC)"),
    "EROFS": (errno.EROFS, "Read-only file system (EROFS)"),
    "EACCES": (errno.EACCES, "Permission denied (EACCES)"),
}


def _oserror(code: int) -> OSError:
    return (PermissionError if code == errno.EACCES else OSError)(code, os.strerror(code))


def _library(tmp_path, names=("box", "cyl")) -> ShapeLibrary:
    lib = ShapeLibrary(tmp_path / "var")
    meshes = {"box": marked_box(), "cyl": trimesh.creation.cylinder(0.3, 1.5), "cone": trimesh.creation.cone(0.5, 1.2)}
    for name in names:
        f = tmp_path / "in" / f"{name}.ply"
        f.parent.mkdir(parents=True, exist_ok=True)
        meshes[name].export(f)
        lib.add(f, name=name, category="misc")
    return lib


@pytest.fixture()
def indexed(tmp_path):
    lib = _library(tmp_path)
    index = ViewIndex(tmp_path / "index", lib, CFG)
    index.sync(progress=False)
    atomic.record_write_error(None)
    yield lib, index
    atomic.record_write_error(None)


def _temp_files(folder):
    return sorted(p.name for p in folder.rglob("*.tmp"))


def _fail_writes_with(monkeypatch, code: int) -> None:
    """What a read-only or forbidden folder does: no file can be created in it."""
    def refuse(folder, prefix):
        raise _oserror(code)

    monkeypatch.setattr(atomic, "_mkstemp", refuse)


def _disk_full_after(monkeypatch, n_bytes: int) -> None:
    """A disk that fills up part-way through a write: some bytes land, then ENOSPC."""
    written = {"n": 0}
    real = atomic._write_chunk

    def write(f, chunk):
        if written["n"] + len(chunk) > n_bytes:
            real(f, chunk[: max(0, n_bytes - written["n"])])
            raise _oserror(errno.ENOSPC)
        written["n"] += len(chunk)
        real(f, chunk)

    monkeypatch.setattr(atomic, "CHUNK", 1024)
    monkeypatch.setattr(atomic, "_write_chunk", write)


# Writing ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["write", "replace"])
def test_disk_full_mid_write_keeps_the_old_file_and_leaves_no_partial_file(indexed, monkeypatch, where):
    lib, index = indexed
    sid = lib.shapes()[0].id
    before = index.path(sid).read_bytes()
    if where == "write":
        _disk_full_after(monkeypatch, 300)
    else:
        monkeypatch.setattr(atomic, "_replace", lambda src, dst: (_ for _ in ()).throw(_oserror(errno.ENOSPC)))
    with pytest.raises(IndexWriteError) as err:
        index.build(sid, progress=False)
    msg = str(err.value)
    assert str(index.root) in msg and "No space left on device (ENOSPC)" in msg, msg
    assert err.value.errno == errno.ENOSPC and isinstance(err.value, OSError)
    assert index.path(sid).read_bytes() == before                  # the old file, untouched
    assert _temp_files(index.root) == []                            # nothing half-written left
    assert lib.get(sid).index_status == IndexStatus.failed.value
    assert atomic.last_write_error()["errno"] == "ENOSPC"
    monkeypatch.undo()
    assert index.load(sid).crops.shape == (len(CFG.grid), 32, 32)   # still served as it was
    index.build(sid, progress=False)                                # space again: works, error cleared
    assert atomic.last_write_error() is None and lib.get(sid).index_status == IndexStatus.indexed.value


def test_disk_full_on_a_new_shape_leaves_no_file(tmp_path, monkeypatch):
    lib = _library(tmp_path, ("box",))
    index = ViewIndex(tmp_path / "index", lib, CFG)
    sid = lib.shapes()[0].id
    _disk_full_after(monkeypatch, 300)
    with pytest.raises(IndexWriteError, match="ENOSPC"):
        index.build(sid, progress=False)
    assert not index.has(sid) and list(index.root.iterdir()) == []


@pytest.mark.parametrize("fault", ["EROFS", "EACCES"])
def test_unwritable_folder_fails_at_once_with_the_folder_and_the_cause(indexed, monkeypatch, fault):
    lib, index = indexed
    code, words = FAULTS[fault]
    rendered = []
    monkeypatch.setattr(ViewIndex, "render_shape", lambda self, *a, **k: rendered.append(a) or None)
    _fail_writes_with(monkeypatch, code)
    sid = lib.shapes()[0].id
    before = index.path(sid).read_bytes()
    with pytest.raises(IndexWriteError) as err:
        index.build(sid, progress=False)
    assert str(index.root) in str(err.value) and words in str(err.value)
    assert rendered == []                                           # no rendering spent on a doomed write
    lib.set_status(sid, IndexStatus.pending)
    index.remove(lib.shapes()[1].id)
    with pytest.raises(IndexWriteError, match=words.split(" (")[0]):  # start-up's sync: one clear error
        index.sync(progress=False)
    assert rendered == [] and index.path(sid).read_bytes() == before
    assert index.load(sid).shape_id == sid                          # reading still works


@pytest.mark.skipif(IS_ROOT, reason="root ignores file permissions; the monkeypatched variants cover this path")
def test_read_only_folder_with_chmod(indexed):
    lib, index = indexed
    sid = lib.shapes()[0].id
    before = index.path(sid).read_bytes()
    os.chmod(index.root, 0o555)
    try:
        with pytest.raises(IndexWriteError) as err:
            index.build(sid, progress=False)
        assert str(index.root) in str(err.value) and "Permission denied" in str(err.value)
        assert index.path(sid).read_bytes() == before and _temp_files(index.root) == []
        assert index.load(sid).shape_id == sid
    finally:
        os.chmod(index.root, 0o755)


def test_an_index_folder_that_cannot_be_created_does_not_stop_the_constructor(tmp_path, caplog):
    lib = _library(tmp_path, ("box",))
    blocker = tmp_path / "index"
    blocker.write_text("a file where the folder should be")
    with caplog.at_level(logging.ERROR):
        index = ViewIndex(blocker, lib, CFG)
    assert "cannot write the view index" in caplog.text
    assert not index.has(lib.shapes()[0].id)
    with pytest.raises(IndexWriteError):
        index.build(lib.shapes()[0].id, progress=False)


# Damaged files ------------------------------------------------------------------------------------
def _truncate(path, other):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip(path, other):
    data = bytearray(path.read_bytes())
    for i in (len(data) // 3, len(data) // 2):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _empty(path, other):
    path.write_bytes(b"")


def _garbage(path, other):
    path.write_bytes(os.urandom(4096))


def _other_shapes_file(path, other):
    shutil.copyfile(other, path)   # a valid file, but another shape's


@pytest.mark.parametrize("damage", [_truncate, _flip, _empty, _garbage, _other_shapes_file], ids=lambda f: f.__name__[1:])
def test_damaged_view_file_is_detected_removed_and_rebuilt_identically(indexed, damage, caplog):
    lib, index = indexed
    sid, other = (s.id for s in lib.shapes())
    good_bytes = index.path(sid).read_bytes()
    good = index.load(sid)
    damage(index.path(sid), index.path(other))
    with caplog.at_level(logging.WARNING), pytest.raises(DamagedIndexFile):
        index.load(sid)
    assert f"view index of shape {sid} is damaged" in caplog.text
    assert not index.has(sid) and lib.get(sid).index_status == IndexStatus.pending.value
    again = index.load(sid, rebuild=True)                           # rendered again from the mesh
    assert np.array_equal(again.crops, good.crops) and np.array_equal(again.boxes, good.boxes)
    assert index.path(sid).read_bytes() == good_bytes               # byte for byte the same file
    assert lib.get(sid).index_status == IndexStatus.indexed.value
    assert index.load(other).shape_id == other                      # the other shape untouched


def test_sync_rebuilds_damaged_files_and_clears_stale_temp_files(indexed):
    lib, index = indexed
    sid = lib.shapes()[0].id
    _truncate(index.path(sid), None)
    lib.set_status(sid, IndexStatus.pending)
    stale = index.root / ".shape-9.npz.abc.tmp"
    stale.write_bytes(b"left by a killed process")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    assert index.sync(progress=False) == [sid]
    assert not stale.exists() and index.load(sid).shape_id == sid


def test_first_format_files_are_still_read_and_checked(indexed):
    lib, index = indexed
    sid = lib.shapes()[0].id
    views = index.load(sid)
    buf = io.BytesIO()
    np.savez_compressed(buf, poses=views.poses, boxes=views.boxes, crops=views.crops)
    import hashlib

    index.path(sid).write_bytes(buf.getvalue())
    index.path(sid).with_suffix(".sha256").write_text(hashlib.sha256(buf.getvalue()).hexdigest())
    assert np.array_equal(index.load(sid).crops, views.crops)
    index.path(sid).with_suffix(".sha256").write_text("0" * 64)
    with pytest.raises(DamagedIndexFile):
        index.load(sid)
    assert not index.path(sid).exists() and not index.path(sid).with_suffix(".sha256").exists()


# Codes --------------------------------------------------------------------------------------------
@pytest.fixture()
def codes(indexed):
    from models.matching import MatchingConfig, MatchingNet

    lib, index = indexed
    torch.manual_seed(0)
    model = MatchingNet(MatchingConfig(input_size=32, widths=(8, 8, 8, 8, 8), fusion_channels=8, init_std=0.2)).eval()
    return lib, index, model, FeatureIndex(index, model, "w")


def test_damaged_codes_are_recomputed_identically(codes, caplog):
    lib, index, model, features = codes
    sid = lib.shapes()[0].id
    good = features.codes(sid).clone()
    for damage in (_truncate, _flip, _garbage):
        damage(features.path(sid), None)
        fresh = FeatureIndex(index, model, "w")
        with caplog.at_level(logging.WARNING):
            assert torch.equal(fresh.codes(sid), good)
        assert f"codes of shape {sid} are damaged" in caplog.text
        assert FeatureIndex(index, model, "w")._read(sid) is not None   # stored again, valid
    # the views behind them damaged too: rendered again from the mesh, same codes
    features.path(sid).unlink()
    _flip(index.path(sid), None)
    assert torch.equal(FeatureIndex(index, model, "w").codes(sid), good)
    assert index.load(sid).shape_id == sid


def test_codes_that_cannot_be_stored_are_served_from_memory(codes, monkeypatch, caplog):
    lib, index, model, features = codes
    sid = lib.shapes()[0].id
    good = features.codes(sid).clone()
    features.path(sid).unlink()
    _fail_writes_with(monkeypatch, errno.EROFS)
    fresh = FeatureIndex(index, model, "w")
    with caplog.at_level(logging.ERROR):
        assert torch.equal(fresh.codes(sid), good)
    assert "cannot write the codes in" in caplog.text and "EROFS" in caplog.text
    assert not features.path(sid).exists() and atomic.last_write_error()["errno"] == "EROFS"


# Through the API ---------------------------------------------------------------------------------
@pytest.fixture()
def small_grid(monkeypatch):
    """The service's view index on a 24-pose grid, so a shape indexes in about a second."""
    from shape_library import bootstrap, warm_engine

    def small(settings, library):
        return ViewIndex(settings.index_dir, library, ViewIndexConfig(grid=PoseGrid(4, 3, 2), canvas=settings.render_size))

    monkeypatch.setattr(bootstrap, "view_index_from_settings", small)
    monkeypatch.setattr(warm_engine, "view_index_from_settings", small)
    return small


@pytest.fixture()
def service(data_dir, monkeypatch, small_grid):
    from shape_library import settings, warm_engine

    monkeypatch.setenv("SHAPESEARCH_DEFAULT_LIBRARY", "false")
    monkeypatch.setenv("SHAPESEARCH_RENDER_SIZE", "64")
    monkeypatch.setenv("SHAPESEARCH_SEARCH_PRIOR_RADIUS_DEG", "none")
    monkeypatch.setenv("SHAPESEARCH_SEARCH_PRIOR_WEIGHT", "none")
    monkeypatch.setenv("SHAPESEARCH_INDEX_ON_START", "false")
    settings.get_settings.cache_clear()
    warm_engine.reset_engine()
    atomic.record_write_error(None)
    yield data_dir
    warm_engine.reset_engine()
    atomic.record_write_error(None)


def _client():
    from service.app import create_app

    return TestClient(create_app())


def _ply(mesh) -> bytes:
    buf = io.BytesIO()
    mesh.export(buf, file_type="ply")
    return buf.getvalue()


def _poll(client, jid, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        body = client.get(f"/v1/jobs/{jid}").json()
        if body["status"] in ("done", "failed", "cancelled"):
            return body
        time.sleep(0.1)
    raise AssertionError(body)


def _add(client, name, mesh):
    r = client.post("/v1/shapes", files={"mesh": (f"{name}.ply", _ply(mesh))}, data={"name": name, "category": "misc"})
    assert r.status_code == 201, r.text
    return r.json()["id"], _poll(client, r.json()["job_id"])


def _photo() -> bytes:
    img = Image.new("RGB", (96, 96), (255, 255, 255))
    img.paste(Image.new("RGB", (30, 60), (90, 90, 90)), (33, 18))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("fault", ["chmod", "EROFS", "EACCES", "ENOSPC"])
def test_indexing_into_an_unwritable_index_fails_the_item_clearly_and_search_goes_on(service, small_grid, monkeypatch, fault):
    if fault == "chmod" and IS_ROOT:
        pytest.skip("root ignores file permissions; EACCES and EROFS cover the same path")
    from shape_library.settings import get_settings
    from worker import dispatch

    with _client() as client:
        try:
            ids = []
            for name, mesh in [("box", marked_box()), ("cyl", trimesh.creation.cylinder(0.3, 1.5))]:
                sid, job = _add(client, name, mesh)
                assert job["status"] == "done" and job["results"][0]["result"]["views"] == 24, job
                ids.append(sid)
            folder = small_grid(get_settings(), None).root
            if fault == "chmod":
                os.chmod(folder, 0o555)
                words = "Permission denied"
            elif fault == "ENOSPC":
                _disk_full_after(monkeypatch, 300)
                words = FAULTS[fault][1]
            else:
                _fail_writes_with(monkeypatch, FAULTS[fault][0])
                words = FAULTS[fault][1]
            try:
                cone, job = _add(client, "cone", trimesh.creation.cone(0.5, 1.2))
            finally:
                if fault == "chmod":
                    os.chmod(folder, 0o755)
            item = job["results"][0]
            assert job["progress"]["failed"] == 1 and item["status"] == "failed", job
            assert str(folder) in item["error"] and words in item["error"], item["error"]
            assert item["attempts"] == 1                                     # not retried in vain
            assert not (folder / f"shape-{cone}.npz").exists() and _temp_files(folder.parent) == []
            assert client.get(f"/v1/shapes/{cone}").json()["index_status"] == "failed"
            health = client.get("/healthz")
            assert health.status_code == 200 and health.json()["status"] == "degraded"
            assert words.split(" (")[0] in health.json()["index"]["write_error"]["error"]

            r = client.post("/v1/search", files={"image": ("p.png", _photo(), "image/png")},
                            data={"top_k": "3", "refine": "false", "prior": "false"})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["candidates"] == 2 * 24 and {m["shape_id"] for m in body["matches"]} <= set(ids)
        finally:
            dispatch.stop()


def test_start_up_with_an_unwritable_index_folder_reports_it_and_keeps_serving(service, monkeypatch):
    from service import indexing
    from shape_library.bootstrap import library_from_settings
    from shape_library.settings import get_settings
    from worker import dispatch

    monkeypatch.setenv("SHAPESEARCH_INDEX_ON_START", "true")
    get_settings.cache_clear()
    f = service.parent / "box.ply"
    marked_box().export(f)
    library_from_settings(get_settings()).add(f, name="box", category="misc")
    _fail_writes_with(monkeypatch, errno.EROFS)
    with _client() as client:
        try:
            deadline = time.time() + 30
            while indexing.status()["state"] not in ("failed", "ready") and time.time() < deadline:
                time.sleep(0.1)
            health = client.get("/healthz")
            assert health.status_code == 200
            body = health.json()
            assert body["status"] == "degraded" and body["index"]["state"] == "failed", body
            assert "Read-only file system (EROFS)" in body["index"]["error"] and str(get_settings().index_dir) in body["index"]["error"]
            assert client.get("/v1/shapes").status_code == 200
        finally:
            dispatch.stop()
