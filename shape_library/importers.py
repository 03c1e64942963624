"""Importers for mesh folders in the layouts people actually have.

Each layout yields `MeshSource`s (file + labels + the rotation into the library
frame); `import_folder` detects the layout and adds everything to a library.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

from .library import ShapeLibrary
from .meshes import MESH_FORMATS, MeshError

# ShapeNetCore: +y up, front -z  ->  library: +z up, front -y (a proper rotation).
SHAPENET_TO_LIBRARY = np.array([[-1, 0, 0], [0, 0, 1], [0, 1, 0]], dtype=np.float64)
# ModelNet is +z up with no consistent front; PASCAL3D+ CAD models are in the
# PASCAL3D+ frame the contract's pose convention comes from: both need no rotation.
IDENTITY = np.eye(3)

# WordNet synsets of ShapeNetCore that share a name with PASCAL3D+ categories.
SHAPENET_SYNSETS = {
    "02691156": "aeroplane", "02834778": "bicycle", "02858304": "boat", "04530566": "boat",
    "02876657": "bottle", "02924116": "bus", "02958343": "car", "03001627": "chair",
    "04379243": "table", "03790512": "motorbike", "04256520": "sofa", "04468005": "train",
    "03211117": "tvmonitor", "02946921": "can", "03797390": "cup", "02808440": "bathtub",
}


@dataclass(frozen=True)
class MeshSource:
    path: Path
    name: str
    category: str
    subtype: str = ""
    rotation: np.ndarray | None = None
    license: str = ""
    attribution: str = ""
    extra: dict = field(default_factory=dict, hash=False, compare=False)


def _is_mesh(p: Path) -> bool:
    return p.is_file() and p.suffix.lower().lstrip(".") in MESH_FORMATS


def from_manifest(folder: Path) -> Iterator[MeshSource]:
    """A folder with MANIFEST.json (category, subtype, licence and to_library_rotation per file)."""
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    for entry in manifest.get("shapes", []):
        rel = Path(entry["file"])
        path = (folder / rel).resolve()
        if folder.resolve() not in path.parents:
            raise MeshError(f"manifest entry {entry['file']!r} points outside the folder")
        rot = entry.get("to_library_rotation")
        yield MeshSource(
            path=path,
            name=entry.get("name") or rel.stem,
            category=entry.get("category") or rel.parent.name,
            subtype=entry.get("subtype", ""),
            rotation=None if rot is None else np.asarray(rot, dtype=np.float64),
            license=entry.get("license", ""),
            attribution=entry.get("attribution", ""),
        )


def from_category_tree(folder: Path) -> Iterator[MeshSource]:
    """category/*.ext (already +z up, front -y)."""
    for cat in sorted(p for p in folder.iterdir() if p.is_dir()):
        for f in sorted(cat.iterdir()):
            if _is_mesh(f):
                yield MeshSource(f, f.stem, cat.name)


def from_modelnet(folder: Path) -> Iterator[MeshSource]:
    """category/{train,test}/*.off; the split is kept as the subtype."""
    for cat in sorted(p for p in folder.iterdir() if p.is_dir()):
        for split in ("train", "test"):
            for f in sorted((cat / split).glob("*.off")) if (cat / split).is_dir() else []:
                yield MeshSource(f, f.stem, cat.name, subtype=f"modelnet {split}", rotation=IDENTITY)


def from_shapenet(folder: Path) -> Iterator[MeshSource]:
    """synset/model/models/model_normalized.obj, +y up and front -z."""
    for f in sorted(folder.glob("*/*/models/model_normalized.obj")):
        synset = f.parents[2].name
        yield MeshSource(
            f, f.parents[1].name, SHAPENET_SYNSETS.get(synset, synset), subtype=f"shapenet {synset}",
            rotation=SHAPENET_TO_LIBRARY,
        )


def from_pascal3d(folder: Path) -> Iterator[MeshSource]:
    """CAD/category/NN.off (PASCAL3D+'s frame is the contract's)."""
    cad = folder / "CAD" if (folder / "CAD").is_dir() else folder
    for cat in sorted(p for p in cad.iterdir() if p.is_dir()):
        for f in sorted(cat.glob("*.off")):
            yield MeshSource(f, f"{cat.name}_{f.stem}", cat.name, subtype="pascal3d+ cad", rotation=IDENTITY)


def detect_layout(folder: Path) -> str:
    folder = Path(folder)
    if not folder.is_dir():
        raise MeshError(f"not a folder: {folder}")
    if (folder / "MANIFEST.json").is_file():
        return "manifest"
    if next(folder.glob("*/*/models/model_normalized.obj"), None) is not None:
        return "shapenet"
    if next(folder.glob("*/train/*.off"), None) is not None or next(folder.glob("*/test/*.off"), None) is not None:
        return "modelnet"
    if folder.name == "CAD" or (folder / "CAD").is_dir():
        return "pascal3d"
    return "tree"


LAYOUTS: dict[str, Callable[[Path], Iterator[MeshSource]]] = {
    "manifest": from_manifest,
    "tree": from_category_tree,
    "modelnet": from_modelnet,
    "shapenet": from_shapenet,
    "pascal3d": from_pascal3d,
}


@dataclass
class ImportReport:
    added: list[int] = field(default_factory=list)
    existing: list[int] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        return f"{len(self.added)} added, {len(self.existing)} already present, {len(self.errors)} rejected"


def import_folder(
    library: ShapeLibrary,
    folder: Path,
    layout: str | None = None,
    categories: set[str] | None = None,
    progress: bool = True,
) -> ImportReport:
    """Add every mesh of a folder; a broken file is reported, not fatal."""
    folder = Path(folder)
    layout = layout or detect_layout(folder)
    if layout not in LAYOUTS:
        raise MeshError(f"unknown layout {layout!r}: one of {', '.join(LAYOUTS)}")
    sources = [s for s in LAYOUTS[layout](folder) if categories is None or s.category in categories]
    report = ImportReport()
    for src in tqdm(sources, desc=f"import {folder.name} ({layout})", unit="mesh", disable=not progress):
        try:
            res = library.add(
                src.path, name=src.name, category=src.category, subtype=src.subtype, rotation=src.rotation,
                license=src.license, attribution=src.attribution, origin=str(src.path),
            )
        except (MeshError, OSError) as exc:
            report.errors.append((str(src.path), str(exc)))
            continue
        (report.added if res.created else report.existing).append(res.shape.id)
    return report
