import numpy as np

from shape_library.grid import DEFAULT_GRID, PoseGrid


def test_grid_has_2541_unique_poses():
    poses = DEFAULT_GRID.poses()
    assert poses.shape == (2541, 3)
    assert len({tuple(np.round(p, 6)) for p in poses}) == 2541


def test_index_formula_of_contract():
    for i, j, k in [(0, 0, 0), (20, 10, 10), (3, 7, 2), (11, 0, 9)]:
        idx = (i * 11 + j) * 11 + k
        assert DEFAULT_GRID.index(i, j, k) == idx
        a, e, t = DEFAULT_GRID.poses(idx)
        assert np.isclose(a, (i + 0.5) * 360 / 21)
        assert np.isclose(e, -90 + (j + 0.5) * 180 / 11)
        assert np.isclose(t, -180 + (k + 0.5) * 360 / 11)
        assert tuple(int(x) for x in DEFAULT_GRID.bins(idx)) == (i, j, k)


def test_nearest_index_inverts_poses():
    idx = np.arange(2541)
    a, e, t = DEFAULT_GRID.poses(idx).T
    assert np.array_equal(DEFAULT_GRID.nearest_index(a, e, t), idx)
    # wrap-around of angles outside the API ranges
    assert DEFAULT_GRID.nearest_index(a[5] + 360, e[5], t[5] - 360) == 5


def test_coarser_grid_is_a_parameter():
    g = PoseGrid(4, 3, 2)
    assert len(g) == 24 and len(g.poses()) == 24 and g.key != DEFAULT_GRID.key
