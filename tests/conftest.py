import os
from pathlib import Path

import pytest
import trimesh

SHARED_LIBRARY = Path(__file__).resolve().parents[2] / "shared" / "shape_library"
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")


@pytest.fixture()
def data_dir(tmp_path, monkeypatch):
    """A fresh data folder and settings pointing at it."""
    from service import indexing
    from shape_library import library, settings

    d = tmp_path / "var"
    monkeypatch.setenv("SHAPESEARCH_DATA_DIR", str(d))
    monkeypatch.delenv("SHAPESEARCH_LIBRARY", raising=False)
    settings.get_settings.cache_clear()
    library.open_library.cache_clear()
    indexing.reset()          # a new data folder has no index build yet, whatever an earlier test left
    yield d
    settings.get_settings.cache_clear()
    library.open_library.cache_clear()
    indexing.reset()


def marked_box() -> trimesh.Trimesh:
    """A tall box with a knob on its front (-y) face near the top: tells front, back, up and down apart."""
    body = trimesh.creation.box(extents=[0.6, 0.4, 1.6])
    knob = trimesh.creation.box(extents=[0.2, 0.3, 0.2])
    knob.apply_translation([0.0, -0.3, 0.55])
    return trimesh.util.concatenate([body, knob])


@pytest.fixture()
def shared_library() -> Path:
    if not (SHARED_LIBRARY / "MANIFEST.json").is_file():
        pytest.skip("../shared/shape_library not present")
    return SHARED_LIBRARY


def three_shape_index(tmp: Path, cfg):
    """A box, a cylinder (category misc) and a cone (other), their views rendered with `cfg`, and the
    codes of a small random matching network: (library, views, model, features)."""
    import torch

    from models.matching import MatchingConfig, MatchingNet
    from shape_library.features import FeatureIndex
    from shape_library.index import ViewIndex
    from shape_library.library import ShapeLibrary

    lib = ShapeLibrary(tmp / "var")
    for name, cat, mesh in [("box", "misc", marked_box()), ("cyl", "misc", trimesh.creation.cylinder(0.3, 1.5)),
                            ("cone", "other", trimesh.creation.cone(0.5, 1.2))]:
        f = tmp / f"{name}.ply"
        mesh.export(f)
        lib.add(f, name=name, category=cat)
    views = ViewIndex(tmp / "index", lib, cfg)
    views.sync(progress=False)
    torch.manual_seed(0)
    model = MatchingNet(MatchingConfig(input_size=32, widths=(8, 8, 8, 8, 8), fusion_channels=8, init_std=0.2)).eval()
    return lib, views, model, FeatureIndex(views, model, "test-weights")

