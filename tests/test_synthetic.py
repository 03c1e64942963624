"""The synthetic photo generator and its dataset CLI, on a tiny library of primitives."""
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import trimesh
from PIL import Image

from conftest import marked_box
from shape_library import camera as cam
from shape_library.dataset import main as dataset_main
from shape_library.importers import import_folder
from shape_library.library import ShapeLibrary
from shape_library.synthetic import (
    PoseHoldout,
    SyntheticConfig,
    SyntheticGenerator,
    box_of,
    generate,
    make_sample,
    split_shapes,
    surface_points,
)

SIZE = 80


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """category/*.ply: two crates (a box, the marked box) and two cans (a cylinder, a cone)."""
    root = tmp_path_factory.mktemp("tree")
    meshes = {
        "crate/box": trimesh.creation.box(extents=[1.2, 0.8, 0.6]),
        "crate/marked": marked_box(),
        "can/cylinder": trimesh.creation.cylinder(radius=0.4, height=1.2, sections=24),
        "can/cone": trimesh.creation.cone(radius=0.5, height=1.0, sections=24),
    }
    for name, mesh in meshes.items():
        path = root / f"{name}.ply"
        path.parent.mkdir(parents=True, exist_ok=True)
        mesh.export(path)
    return root


@pytest.fixture(scope="module")
def library(tree, tmp_path_factory) -> ShapeLibrary:
    lib = ShapeLibrary(tmp_path_factory.mktemp("var"))
    import_folder(lib, tree, progress=False)
    assert len(lib.shapes()) == 4
    return lib


@pytest.fixture(scope="module")
def ids(library):
    return [s.id for s in library.shapes()]


@pytest.fixture(scope="module")
def samples(library, ids):
    """A dozen samples with the default (photo-like) configuration."""
    return list(generate(library, ids, 12, 7, SyntheticConfig().with_size(SIZE)))


def test_same_seed_same_pixels_independent_of_n_and_order(library, ids, samples):
    cfg = SyntheticConfig().with_size(SIZE)
    with SyntheticGenerator(library, ids, 7, cfg) as gen:
        again = [gen.sample(i) for i in (5, 2, 0)]  # other order, other generator
    for s in again:
        ref = samples[s.index]
        assert np.array_equal(s.image, ref.image)
        assert s.pose == ref.pose and s.box == ref.box and s.shape_id == ref.shape_id
        assert np.array_equal(s.visible_mask, ref.visible_mask)
    tail = list(generate(library, ids, 2, 7, cfg, start=10))
    assert [t.index for t in tail] == [10, 11]
    assert all(np.array_equal(t.image, samples[t.index].image) for t in tail)
    other = list(generate(library, ids, 3, 8, cfg))
    assert all(not np.array_equal(o.image, s.image) for o, s in zip(other, samples))


def test_labels_are_consistent(library, samples):
    cfg = SyntheticConfig()
    for s in samples:
        H, W = s.image.shape[:2]
        assert s.image.dtype == np.uint8 and s.image.shape == (SIZE, SIZE, 3)
        assert s.mask.shape == (H, W) and s.mask.dtype == bool
        assert not (s.visible_mask & ~s.mask).any()
        assert s.box is not None and s.box == box_of(s.visible_mask)
        a, e, t, d = s.pose
        assert 0 <= a < 360 and cfg.elevation_range[0] <= e <= cfg.elevation_range[1]
        assert abs(t) <= cfg.theta_max and cfg.distance_range[0] <= d <= cfg.distance_range[1]
        assert s.category == library.get(s.shape_id).category
        assert (s.depth[s.mask] > 0).all() and (s.depth[~s.mask] == 0).all()
        n = s.normals[s.mask]
        assert np.allclose(np.linalg.norm(n, axis=1), 1, atol=1e-3) and (n[:, 2] > -0.1).all()
        assert s.visible_mask.sum() >= 0.35 * s.mask.sum()
        json.dumps(s.record())


def test_mask_and_box_match_projected_mesh(library, ids):
    cfg = SyntheticConfig.clean(width=96, height=72, p_truncate=0.5)  # rectangular, some objects cut by the border
    for s in generate(library, ids, 10, 3, cfg):
        mesh = library.mesh(s.shape_id)
        uv = cam.project(mesh.vertices, *s.pose, s.intrinsics)
        full = (uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max())
        assert np.allclose(s.full_box, full, atol=1e-6)
        clipped = np.clip(full, 0, [96, 72, 96, 72])
        assert np.allclose(s.box, clipped, atol=1.01), (s.box, clipped)
        assert s.occluded_fraction == 0 and np.array_equal(s.mask, s.visible_mask)
        # on a white background, the object is where the mask says
        assert (s.image[~s.mask] >= 250).mean() > 0.97


def test_surface_points_lie_on_the_mesh(library, ids):
    crate = next(s.id for s in library.shapes() if s.name == "box")
    cfg = SyntheticConfig.clean(width=SIZE, height=SIZE)
    s = make_sample(library, crate, np.random.default_rng(0), cfg)
    X = surface_points(s.depth, s.intrinsics, s.pose)[s.mask]
    inner = s.mask & np.roll(s.mask, 1, 0) & np.roll(s.mask, -1, 0) & np.roll(s.mask, 1, 1) & np.roll(s.mask, -1, 1)
    X_in = surface_points(s.depth, s.intrinsics, s.pose)[inner]
    half = library.mesh(crate).extents / 2
    assert (np.abs(X) <= half + 0.05).all()
    # every interior pixel sees a point on one of the box's faces
    assert np.allclose(np.max(np.abs(X_in) / half, axis=1), 1.0, atol=0.03)


def test_backgrounds_vary_and_are_not_white(samples):
    ring = [s.image[~s.mask].reshape(-1, 3).astype(float) for s in samples]
    means = np.array([r.mean(axis=0) for r in ring])
    assert np.ptp(means, axis=0).max() > 40  # backgrounds differ between samples
    assert np.mean([(r >= 250).all(axis=1).mean() for r in ring]) < 0.3  # and are rarely plain white
    assert len({tuple(np.round(m)) for m in means}) == len(samples)


def test_object_appearance_is_randomised_not_grey(library, ids):
    cfg = SyntheticConfig.clean(width=SIZE, height=SIZE, albedo_weights=SyntheticConfig().albedo_weights)
    sats, colours = [], []
    for s in generate(library, ids, 10, 11, cfg):
        px = s.image[s.mask].astype(float)
        sats.append(np.mean(px.max(axis=1) - px.min(axis=1)))
        colours.append(px.mean(axis=0))
    assert np.median(sats) > 15  # coloured, not the index's grey
    assert np.ptp(np.array(colours), axis=0).max() > 60


def test_occlusion_reduces_visible_mask(library, ids):
    cfg = SyntheticConfig().with_size(SIZE)
    cfg.p_occlusion, cfg.min_visible = 1.0, 0.4
    occluded = 0
    for s in generate(library, ids, 8, 5, cfg):
        if s.occluded_fraction > 0:
            occluded += 1
            assert s.visible_mask.sum() < s.mask.sum()
            assert s.visible_mask.sum() >= 0.38 * s.mask.sum()
            assert s.box == box_of(s.visible_mask)
    assert occluded >= 6


def test_split_shapes_disjoint_stratified_deterministic(library):
    shapes = [SimpleNamespace(id=i, category=c, name=f"s{i}", mesh_sha256=f"h{i}")
              for i, c in enumerate(["car"] * 10 + ["boat"] * 5 + ["plane"] * 1)]
    train, held = split_shapes(shapes, 0.2, seed=0)
    assert not set(train) & set(held) and set(train) | set(held) == set(range(16))
    cats = {s.id: s.category for s in shapes}
    assert sum(cats[i] == "car" for i in held) == 2
    assert sum(cats[i] == "boat" for i in held) == 1
    assert 15 in train  # a lone shape is never held out
    assert split_shapes(shapes, 0.2, seed=0) == (train, held)
    assert split_shapes(list(reversed(shapes)), 0.2, seed=0) == (train, held)
    assert any(split_shapes(shapes, 0.2, seed=k)[1] != held for k in range(1, 5))
    # ids with a library: stratified by the catalog's categories
    lib_ids = [s.id for s in library.shapes()]
    tr, he = split_shapes(lib_ids, 0.5, seed=1, library=library)
    assert sorted({library.get(i).category for i in he}) == ["can", "crate"] and len(tr) == 2


def test_pose_holdout(library, ids):
    hold = PoseHoldout(fraction=0.3, seed=2)
    rng = np.random.default_rng(0)
    flags = [hold.is_heldout(a, e) for a, e in zip(rng.uniform(0, 360, 2000), rng.uniform(-90, 90, 2000))]
    assert 0.15 < np.mean(flags) < 0.45
    cfg = SyntheticConfig.clean(width=48, height=48, pose_subset="heldout", pose_holdout=hold)
    for s in generate(library, ids, 4, 0, cfg):
        assert hold.split(*s.pose[:3]) == "heldout"
    band = PoseHoldout(fraction=0.25, mode="azimuth", band_start=90)
    assert band.is_heldout(100, 0) and not band.is_heldout(190, 0)


def test_photo_backgrounds_from_a_folder(library, ids, tmp_path):
    folder = tmp_path / "photos" / "sub"
    folder.mkdir(parents=True)
    stripes = np.zeros((120, 200, 3), np.uint8)
    stripes[:, ::8] = (0, 200, 0)
    Image.fromarray(stripes).save(folder / "stripes.jpg")
    (folder / "notes.txt").write_text("not an image")
    cfg = SyntheticConfig.clean(width=SIZE, height=SIZE, backgrounds=tmp_path / "photos", background_weights={"photo": 1.0})
    s = next(iter(generate(library, ids, 1, 0, cfg)))
    bg = s.image[~s.mask].astype(int)
    assert bg[:, 1].mean() > bg[:, 0].mean() + 10  # green stripes on black, not white


def test_dataset_cli_writes_images_manifest_and_mosaic(tree, tmp_path):
    out, data = tmp_path / "out", tmp_path / "var"
    rc = dataset_main(["write", "--library", str(tree), "--data-dir", str(data), "--out", str(out), "--n", "5",
                       "--seed", "3", "--size", "64", "--masks", "--mosaic", str(tmp_path / "m.png"), "--quiet"])
    assert rc == 0
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 5
    recs = [json.loads(x) for x in lines]
    for r in recs:
        img = Image.open(out / r["file"])
        assert img.size == (64, 64)
        assert {"shape_id", "shape", "category", "pose", "box", "split", "seed"} <= r.keys()
        assert set(r["pose"]) == {"azimuth", "elevation", "theta", "distance"} and r["seed"] == 3
        assert Image.open(out / r["mask_file"]).size == (64, 64)
    assert len(list(out.glob("0*[0-9].png"))) == 5
    assert Image.open(tmp_path / "m.png").size[0] == 6 * 64
    # the same seed writes the same data set; a held-out split only uses held-out shapes
    out2 = tmp_path / "out2"
    assert dataset_main(["write", "--library", str(tree), "--data-dir", str(data), "--out", str(out2), "--n", "5",
                         "--seed", "3", "--size", "64", "--quiet"]) == 0
    assert [json.loads(x) for x in (out2 / "manifest.jsonl").read_text().splitlines()] == [
        {k: v for k, v in r.items() if k != "mask_file"} for r in recs]
    assert (out / "000004.png").read_bytes() == (out2 / "000004.png").read_bytes()
    out3 = tmp_path / "out3"
    assert dataset_main(["write", "--library", str(tree), "--data-dir", str(data), "--out", str(out3), "--n", "4",
                         "--split", "heldout", "--held-out", "0.5", "--size", "48", "--quiet"]) == 0
    held = {json.loads(x)["shape"] for x in (out3 / "manifest.jsonl").read_text().splitlines()}
    assert len(held) >= 1 and all(json.loads(x)["split"] == "heldout" for x in (out3 / "manifest.jsonl").read_text().splitlines())
    assert held <= {"box", "marked", "cylinder", "cone"}
    # mosaic subcommand, temporary data folder
    m = tmp_path / "docs" / "mosaic.png"
    assert dataset_main(["mosaic", "--library", str(tree), "--out", str(m), "--n", "4", "--size", "48",
                         "--columns", "2", "--quiet"]) == 0
    assert Image.open(m).size[0] == 2 * 48
    assert dataset_main(["write", "--library", str(tmp_path / "nope"), "--out", str(tmp_path / "x"), "--n", "1",
                         "--quiet"]) == 2


def test_split_shapes_invariants_property():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=30), st.floats(0.0, 0.9), st.integers(0, 5))
    def check(cats, frac, seed):
        shapes = [SimpleNamespace(id=i, category=c, name=str(i), mesh_sha256=f"m{i}") for i, c in enumerate(cats)]
        train, held = split_shapes(shapes, frac, seed)
        assert sorted(train + held) == list(range(len(cats)))
        for c in set(cats):
            n = cats.count(c)
            k = sum(cats[i] == c for i in held)
            assert k < n or n == 0  # every category keeps training shapes
            if n >= 2:
                assert abs(k - frac * n) <= 1.0 and (k >= 1 or frac == 0)

    check()


def test_shape_scale_stretches_each_photo_and_keeps_box_render_and_pose_consistent(library, ids):
    crate = next(s.id for s in library.shapes() if s.name == "box")
    base = library.mesh(crate)
    plain = SyntheticGenerator(library, ids, 0, SyntheticConfig.clean(width=SIZE, height=SIZE))
    gen = SyntheticGenerator(library, ids, 0, SyntheticConfig.clean(width=SIZE, height=SIZE, shape_scale=(0.6, 1.6)))
    try:
        rng = np.random.default_rng(0)
        assert plain._jittered_mesh(crate, rng) is base and rng.random() == np.random.default_rng(0).random()
        ratios = []
        for seed in range(4):
            s = gen.make(crate, np.random.default_rng(seed))
            replay = np.random.default_rng(seed)
            mesh = gen._jittered_mesh(crate, replay)
            assert np.isclose(np.linalg.norm(mesh.vertices, axis=1).max(), 1.0)
            uv = cam.project(mesh.vertices, *s.pose, s.intrinsics)
            assert np.allclose(s.full_box, (*uv.min(0), *uv.max(0)), atol=1e-6)   # box of the stretched mesh
            assert (np.abs(surface_points(s.depth, s.intrinsics, s.pose)[s.mask]) <= mesh.extents / 2 + 0.05).all()
            r = (mesh.extents / base.extents) / (mesh.extents / base.extents).max()
            assert (r >= 0.6 / 1.6 - 1e-9).all()
            ratios.append(r)
        assert np.ptp(np.array(ratios), axis=0).max() > 0.05   # proportions differ from photo to photo
    finally:
        plain.close()
        gen.close()
