import os
from pathlib import Path

import pytest
import trimesh

SHARED_LIBRARY = Path(__file__).resolve().parents[2] / "shared" / "shape_library"
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")


@pytest.fixture()
def data_dir(tmp_path, monkeypatch):
    """A fresh data folder and settings pointing at it."""
    from shape_library import library, settings

    d = tmp_path / "var"
    monkeypatch.setenv("SHAPESEARCH_DATA_DIR", str(d))
    monkeypatch.delenv("SHAPESEARCH_LIBRARY", raising=False)
    settings.get_settings.cache_clear()
    library.open_library.cache_clear()
    yield d
    settings.get_settings.cache_clear()
    library.open_library.cache_clear()


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
