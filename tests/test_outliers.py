"""Outlier exposure: generic shapes, their sprite bank, and scene sets that use them only in training."""
import numpy as np
import pytest

from shape_library.outliers import KINDS, outlier_library, outlier_mesh
from shape_library.tag_scenes import SpriteBank


@pytest.mark.parametrize("kind", KINDS)
def test_outlier_meshes_are_deterministic_solid_shapes(kind):
    a = outlier_mesh(kind, np.random.default_rng([0, 3]))
    b = outlier_mesh(kind, np.random.default_rng([0, 3]))
    c = outlier_mesh(kind, np.random.default_rng([0, 4]))
    assert np.array_equal(a.vertices, b.vertices) and not np.array_equal(a.vertices, c.vertices)
    assert len(a.faces) >= 4 and np.ptp(a.vertices, axis=0).min() > 0.01


def test_outlier_library_is_built_once_and_kept_apart(tmp_path):
    lib = outlier_library(tmp_path, 6, progress=False)
    shapes = lib.shapes()
    assert len(shapes) == 6 and {s.category for s in shapes} == {"outlier"}
    assert {s.name.split("-")[0] for s in shapes} == set(KINDS)
    assert len(outlier_library(tmp_path, 6, progress=False).shapes()) == 6   # reused, not added again


def _bank(ids, cat):
    n = len(ids)
    return SpriteBank(np.zeros((n, 8, 8, 4), np.uint8), np.zeros((n, 4), np.float32), np.asarray(ids, np.int64),
                      np.array([cat] * n), np.zeros(n, np.int64))


def test_concat_keeps_the_first_banks_rows_and_refuses_clashes():
    a, b = _bank([1, 2], "car"), _bank([10, 11, 12], "outlier")
    m = a.concat(b)
    assert list(m.shape_ids) == [1, 2, 10, 11, 12] and list(m.categories[:2]) == ["car", "car"]
    with pytest.raises(ValueError, match="share shape ids"):
        a.concat(_bank([2], "x"))
