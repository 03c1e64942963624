"""The generated default library: counts, normalisation, determinism, orientation, manifest."""
from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import trimesh

from shape_library.procedural import ProceduralShape, default_shapes, write_default_library


@pytest.fixture(scope="module")
def shapes() -> list[ProceduralShape]:
    return default_shapes()


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    return write_default_library(tmp_path_factory.mktemp("default") / "lib")


def _by_category(shapes, category):
    return [s for s in shapes if s.category == category]


def test_counts_and_names(shapes):
    assert len(shapes) >= 24
    cats = [s.category for s in shapes]
    assert set(cats) == {"aeroplane", "boat", "car"}
    assert cats.count("aeroplane") >= 8
    assert cats.count("boat") >= 6
    assert cats.count("car") >= 10
    names = [s.name for s in shapes]
    assert len(set(names)) == len(names)
    for s in shapes:
        assert s.name.replace("_", "").isalnum() and s.name == s.name.lower()
        assert s.subtype


def test_meshes_are_small_finite_and_normalised(shapes):
    for s in shapes:
        m = s.mesh
        assert isinstance(m, trimesh.Trimesh)
        assert 500 <= len(m.faces) <= 20_000, (s.name, len(m.faces))
        v = np.asarray(m.vertices)
        assert np.isfinite(v).all(), s.name
        assert abs(np.linalg.norm(v, axis=1).max() - 1.0) < 1e-5, s.name
        centre = (v.min(0) + v.max(0)) / 2
        assert np.abs(centre).max() < 1e-5, s.name
        assert m.is_winding_consistent, s.name
        assert not np.isclose(m.area_faces, 0).all()
        for key, pts in s.landmarks.items():
            assert np.isfinite(pts).all() and pts.shape[1] == 3, (s.name, key)


def test_deterministic(shapes):
    again = default_shapes()
    assert [s.name for s in again] == [s.name for s in shapes]
    for a, b in zip(shapes, again):
        assert np.array_equal(a.mesh.vertices, b.mesh.vertices), a.name
        assert np.array_equal(a.mesh.faces, b.mesh.faces), a.name


def _occupancy(mesh: trimesh.Trimesh, n: int = 16) -> np.ndarray:
    """Which cells of an n^3 grid over [-1, 1]^3 the surface passes through."""
    pts = mesh.sample(6000, seed=0)
    idx = np.clip(((pts + 1) / 2 * n).astype(int), 0, n - 1)
    grid = np.zeros((n, n, n), bool)
    grid[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    return grid


def test_shapes_pairwise_distinct(shapes):
    occ = {s.name: _occupancy(s.mesh) for s in shapes}
    for a, b in itertools.combinations(shapes, 2):
        same_extents = np.allclose(a.mesh.extents, b.mesh.extents, atol=0.01)
        same_faces = len(a.mesh.faces) == len(b.mesh.faces)
        assert not (same_extents and same_faces), (a.name, b.name)
        ga, gb = occ[a.name], occ[b.name]
        jaccard_distance = (ga ^ gb).sum() / (ga | gb).sum()
        assert jaccard_distance > 0.12, (a.name, b.name, jaccard_distance)


def _slice(v, axis, lo, hi):
    return v[(v[:, axis] >= lo) & (v[:, axis] <= hi)]


def test_aeroplane_orientation(shapes):
    for s in _by_category(shapes, "aeroplane"):
        v = s.mesh.vertices
        ext = s.mesh.extents
        # flat in z: wingspan along x, fuselage along y
        assert ext[0] > 2.5 * ext[2] and ext[1] > 2.0 * ext[2], s.name
        # the most forward points are on the centreline (nose or spinner), not a wing tip
        front = v[v[:, 1] < v[:, 1].min() + 0.01]
        assert np.abs(front[:, 0]).max() < 0.05, s.name
        # the nose is narrower than the tail (tailplane) end
        ymin, ymax = v[:, 1].min(), v[:, 1].max()
        L = ymax - ymin
        nose_slice = _slice(v, 1, ymin, ymin + 0.12 * L)
        tail_slice = _slice(v, 1, ymax - 0.12 * L, ymax)
        assert np.ptp(nose_slice[:, 0]) < np.ptp(tail_slice[:, 0]), s.name
        # the fin stands up at the back: higher there than anything at the nose
        assert tail_slice[:, 2].max() > nose_slice[:, 2].max(), s.name
        # landmarks measured on the parts agree
        nose = s.landmarks["nose"][0]
        assert nose[1] - ymin < 0.02 and abs(nose[0]) < 0.02, s.name
        tips = s.landmarks["wing_tips"]
        assert np.abs(tips[:, 0]).min() > 0.9 * np.abs(v[:, 0]).max(), s.name
        assert tips[:, 0].max() > 0 > tips[:, 0].min(), s.name
        fin = s.landmarks["fin_tip"][0]
        assert fin[1] > 0.3 and fin[2] > nose[2] and fin[2] > tips[:, 2].max(), s.name


def test_car_orientation(shapes):
    for s in _by_category(shapes, "car"):
        v = s.mesh.vertices
        ext = s.mesh.extents
        assert ext[1] > ext[0] and ext[1] > ext[2], s.name  # long along y
        # the lowest points are tyre contact patches at the sides, front and back
        zmin = v[:, 2].min()
        low = v[v[:, 2] < zmin + 0.01]
        assert np.abs(low[:, 0]).min() > 0.5 * np.abs(v[:, 0]).max(), s.name
        assert low[:, 1].min() < 0 < low[:, 1].max(), s.name
        wheels = s.landmarks["wheel_contacts"]
        assert len(wheels) >= 4
        assert np.allclose(wheels[:, 2], zmin, atol=0.01), s.name
        assert (wheels[:, 1] < 0).sum() >= 2 and (wheels[:, 1] > 0).sum() >= 2, s.name
        assert (wheels[:, 0] < 0).sum() >= 2 and (wheels[:, 0] > 0).sum() >= 2, s.name
        # headlights at the front (-y), below the roof
        lights = s.landmarks["headlights"]
        ymin, ymax = v[:, 1].min(), v[:, 1].max()
        assert (lights[:, 1] - ymin).max() < 0.06, s.name
        assert lights[:, 2].max() < v[:, 2].max() - 0.15, s.name
        # bonnet at the front, cabin/load further back: the front quarter is lower than the rear quarter
        L = ymax - ymin
        front = _slice(v, 1, ymin, ymin + 0.25 * L)
        rear = _slice(v, 1, ymax - 0.25 * L, ymax)
        assert front[:, 2].max() < rear[:, 2].max(), s.name


def test_boat_orientation(shapes):
    for s in _by_category(shapes, "boat"):
        v = s.mesh.vertices
        ymin, ymax = v[:, 1].min(), v[:, 1].max()
        L = ymax - ymin
        assert L > s.mesh.extents[0], s.name  # long along y
        # hull (or keel fin) bottom at min z, on the centreline
        keel = s.landmarks["keel"][0]
        assert keel[2] - v[:, 2].min() < 0.01 and abs(keel[0]) < 0.02, s.name
        # the bow is the foremost point and the hull tapers there
        bow = s.landmarks["bow"][0]
        assert bow[1] - ymin < 0.03 and abs(bow[0]) < 0.02, s.name
        bow_slice = _slice(v, 1, ymin, ymin + 0.03 * L)
        stern_slice = _slice(v, 1, ymax - 0.15 * L, ymax)
        hull_width = np.ptp(_slice(v, 2, keel[2], bow[2])[:, 0])
        assert np.ptp(bow_slice[:, 0]) < 0.6 * hull_width, s.name
        assert np.ptp(bow_slice[:, 0]) <= np.ptp(stern_slice[:, 0]) + 1e-6, s.name
        # masts, cabins and bows are above the keel, in the upper half
        top = s.landmarks["top"][0]
        assert top[2] > 0 > keel[2], s.name


def test_manifest_matches_files(library, shapes):
    folder = library.parent
    manifest = json.loads(library.read_text())
    assert manifest["description"]
    entries = manifest["shapes"]
    assert [e["name"] for e in entries] == [s.name for s in shapes]
    for e, s in zip(entries, shapes):
        assert e["file"] == f"{s.category}/{s.name}.glb"
        assert e["category"] == s.category and e["subtype"] == s.subtype and e["format"] == "glb"
        data = (folder / e["file"]).read_bytes()
        assert e["sha256"] == hashlib.sha256(data).hexdigest()
        assert e["size_bytes"] == len(data)
        assert e["to_library_rotation"] == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
        assert e["license"] == "CC0-1.0" and e["author"] == "shapesearch procedural generator"
        assert e["attribution"]
        loaded = trimesh.load(folder / e["file"], force="mesh")
        assert len(loaded.faces) == e["faces"] == len(s.mesh.faces)
        assert len(loaded.vertices) == e["vertices"] == len(s.mesh.vertices)
        assert np.allclose(np.sort(loaded.vertices, axis=0), np.sort(s.mesh.vertices, axis=0), atol=1e-6)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.glb"))
    assert files == sorted(e["file"] for e in entries)


def test_write_is_deterministic(library, tmp_path):
    again = write_default_library(tmp_path / "again")
    assert again.name == "MANIFEST.json"
    assert again.read_bytes() == library.read_bytes()
    for e in json.loads(again.read_text())["shapes"]:
        assert hashlib.sha256((again.parent / e["file"]).read_bytes()).hexdigest() == e["sha256"]
