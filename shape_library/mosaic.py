"""A contact sheet of grid renderings, so a person can see what the index holds."""
from __future__ import annotations

import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

from .grid import DEFAULT_GRID
from .importers import import_folder
from .library import ShapeLibrary

DEFAULT_SHAPES = ("airliner", "jet_fighter", "sailboat", "sedan", "pickup", "bus")


def grid_mosaic(out: Path, shape_names=None, library_path=None, cell: int = 96, columns: int = 12) -> Path:
    """One row per shape: `columns` grid poses spread over azimuth, at two elevations."""
    from .procedural import write_default_library
    from .render import Renderer, crop_square, grey_on_white, mask_box

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = Path(library_path) if library_path else write_default_library(tmp / "default").parent
        lib = ShapeLibrary(tmp / "var")
        import_folder(lib, folder, progress=False)
        shapes = lib.shapes()
        wanted = list(shape_names or DEFAULT_SHAPES)
        chosen = [s for n in wanted for s in shapes if s.name == n] or shapes[: len(wanted)]
        grid = DEFAULT_GRID
        # poses: azimuth bins spread round the circle, elevation bins 6 and 7 (~8 and ~25 deg), theta bin 5 (0)
        picks = [grid.index(i * grid.n_azimuth // (columns // 2), j, 5) for j in (6, 7) for i in range(columns // 2)]
        label_h = 14
        sheet = Image.new("RGB", (cell * columns, (cell + label_h) * len(chosen)), "white")
        draw = ImageDraw.Draw(sheet)
        with Renderer(128) as r:
            mesh_cache = {}
            for row, s in enumerate(chosen):
                mesh = mesh_cache.setdefault(s.id, lib.mesh(s.id))
                y = row * (cell + label_h)
                draw.text((2, y + 1), f"{s.category} / {s.name}", fill=(0, 0, 0))
                for col, idx in enumerate(picks):
                    a, e, t = grid.poses(idx)
                    res = r.render(mesh, float(a), float(e), float(t))
                    crop, _ = crop_square(grey_on_white(res.shading, res.mask), mask_box(res.mask), cell, 0.08, fill=(255,))
                    sheet.paste(crop, (col * cell, y + label_h))
                    draw.text((col * cell + 2, y + label_h + cell - 11), f"#{idx} a{a:.0f} e{e:.0f}", fill=(120, 0, 0))
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(out)
    return out
