"""Generic non-library shapes for outlier exposure: what a tagger should learn to call "none of these".

A tagger trained only on its vocabulary (plus a few unlabelled animals) learns "an object is in
the picture, so it is one of mine" and is confident on anything (method §3: the quasibinary head
can say "none" only about what its zero-label training images taught it).  These shapes widen
that set without naming any held-out category: random assemblies of boxes, ellipsoids, cones and
tori, convex hulls of random point clouds ("rocks") and spheres with smooth random bumps
("blobs").  Nothing here was shaped after the categories held out for evaluation; some random
shapes will still resemble a bottle or a cup now and then, as any broad outlier set does.

The shapes live in a library of their own (category "outlier") so they never enter the search
index, the fine-grained label sets or the evaluation's out-of-distribution sets.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from .library import ShapeLibrary

KINDS = ("assembly", "rock", "blob")
CATEGORY = "outlier"


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    M = np.eye(4)
    M[:3, :3] = Rotation.random(random_state=int(rng.integers(2**31))).as_matrix()
    return M


def _primitive(rng: np.random.Generator) -> trimesh.Trimesh:
    kind = rng.choice(["box", "ellipsoid", "cone", "torus"])
    s = rng.uniform(0.15, 0.6, 3)
    if kind == "box":
        m = trimesh.creation.box(extents=2 * s)
    elif kind == "ellipsoid":
        m = trimesh.creation.icosphere(subdivisions=2)
        m.apply_scale(s)
    elif kind == "cone":
        m = trimesh.creation.cone(radius=s[0], height=2 * s[2], sections=int(rng.integers(3, 12)))
    else:
        r = s[0] + 0.1
        m = trimesh.creation.torus(major_radius=r, minor_radius=r * rng.uniform(0.15, 0.45), major_sections=24, minor_sections=10)
    m.apply_transform(_random_rotation(rng))
    return m


def assembly(rng: np.random.Generator) -> trimesh.Trimesh:
    """2-5 random primitives, each touching or overlapping the ones before."""
    parts = [_primitive(rng)]
    for _ in range(int(rng.integers(1, 5))):
        p = _primitive(rng)
        anchor = parts[int(rng.integers(len(parts)))]
        surface = anchor.vertices[int(rng.integers(len(anchor.vertices)))]
        p.apply_translation(surface - p.centroid * rng.uniform(0.0, 0.5))
        parts.append(p)
    return trimesh.util.concatenate(parts)


def rock(rng: np.random.Generator) -> trimesh.Trimesh:
    """Convex hull of a stretched random point cloud."""
    pts = rng.normal(size=(int(rng.integers(8, 40)), 3)) * rng.uniform(0.3, 1.0, 3)
    return trimesh.convex.convex_hull(pts)


def blob(rng: np.random.Generator) -> trimesh.Trimesh:
    """A sphere whose radius is modulated by a few smooth random waves."""
    m = trimesh.creation.icosphere(subdivisions=3)
    d = m.vertices / np.linalg.norm(m.vertices, axis=1, keepdims=True)
    r = np.ones(len(d))
    for _ in range(int(rng.integers(2, 6))):
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        r += rng.uniform(0.1, 0.5) * np.sin(rng.uniform(1.0, 4.0) * (d @ axis) * np.pi + rng.uniform(0, 2 * np.pi))
    m.vertices = d * np.clip(r, 0.2, None)[:, None] * rng.uniform(0.4, 1.0, 3)
    return m


def outlier_mesh(kind: str, rng: np.random.Generator) -> trimesh.Trimesh:
    if kind not in KINDS:
        raise ValueError(f"unknown outlier kind {kind!r}; choose one of {KINDS}")
    return {"assembly": assembly, "rock": rock, "blob": blob}[kind](rng)


def outlier_library(data_dir: Path, n: int, seed: int = 0, progress: bool = True) -> ShapeLibrary:
    """A library of n generic shapes (kinds in turn), created once in data_dir and reused."""
    library = ShapeLibrary(Path(data_dir))
    have = len(library.shapes(CATEGORY))
    for i in tqdm(range(have, n), desc="outlier shapes", disable=not progress or have >= n):
        kind = KINDS[i % len(KINDS)]
        mesh = outlier_mesh(kind, np.random.default_rng([seed, i]))
        library.add(mesh.export(file_type="ply"), name=f"{kind}-{i:04d}", category=CATEGORY, file_type="ply",
                    origin=f"shape_library.outliers seed {seed} #{i}")
    return library
