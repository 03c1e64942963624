"""Index build benchmark: what adding shapes costs on this machine, rendering in one process and in a pool.

    python -m models.bench_index bench --library ../shared/shape_library --shapes 16 --workers 0

Per shape: its 2,541 views rendered (one process, this machine's GL: llvmpipe on a CPU machine,
the GPU through EGL where one is present) and their rendering-stream codes computed on the
torch device the service would use. Then `--shapes` shapes indexed through `ViewIndex.sync` with
`--workers` processes (0: one per core but one), the way a large library is built. Each machine
gets its own row of the table in docs/benchmarks.md (rows of other machines are kept), so CPU
and GPU figures sit side by side.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from . import matching  # noqa: F401  (registers the model)
from .reports import replace_block

HEADER = ("| machine | GL renderer | torch device | one process: render s/shape | views/s | codes s/shape (device) "
          "| pool: workers | shapes | s/shape | views/s |\n|---|---|---|---|---|---|---|---|---|---|\n")


def gl_renderer_name() -> str:
    from shape_library.render import gl_renderer_name as name

    try:
        return name()
    except Exception:  # the name is a label, not a measurement
        return os.environ.get("PYOPENGL_PLATFORM", "?")


def machine_name(device: str) -> str:
    cores = os.cpu_count()
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)} + {cores} CPU cores"
    return f"{platform.machine()} CPU, {cores} cores"


def merge_rows(old_block: str, row: str, machine: str) -> str:
    """The table with this machine's row replaced (or added), other machines' rows kept."""
    rows = [ln for ln in old_block.splitlines() if ln.startswith("| ") and not ln.startswith("| machine")
            and not ln.startswith(f"| {machine} |")]
    return HEADER + "".join(r + "\n" for r in rows) + row + "\n"


def run(args) -> str:
    from shape_library.importers import import_folder
    from shape_library.index import ViewIndex, ViewIndexConfig, render_crops
    from shape_library.library import ShapeLibrary
    from shape_library.render import Renderer
    from shape_library.settings import get_settings
    from shape_library.features import crops_to_tensor

    device = args.device or get_settings().torch_device()
    workers = args.workers or max(1, (os.cpu_count() or 2) - 1)
    cfg = ViewIndexConfig()
    poses = cfg.grid.poses().astype(np.float32)
    model, _ = checkpoint.load(args.weights, device)
    with tempfile.TemporaryDirectory() as tmp:
        library = ShapeLibrary(Path(tmp) / "lib")
        if args.library:
            import_folder(library, args.library, progress=False)
        shapes = library.shapes()[: args.shapes]
        if not shapes:
            raise SystemExit("no shapes: give --library a folder of meshes")
        for s in library.shapes()[args.shapes:]:
            library.remove(s.id)
        # one process, one shape: render, then codes
        mesh = library.mesh(shapes[0].id)
        with Renderer(cfg.canvas) as r:
            render_crops(r, mesh, poses[:16], cfg)  # warm: context, shaders, buffers
            t0 = time.perf_counter()
            crops, _ = render_crops(r, mesh, poses, cfg)
            t_render = time.perf_counter() - t0
        with torch.no_grad():
            x = crops_to_tensor(crops).to(device)
            model.render_codes(x[:256])
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for i in range(0, len(x), 256):
                model.render_codes(x[i:i + 256]).cpu()
            t_codes = time.perf_counter() - t0
        # the pool, over all shapes
        index = ViewIndex(Path(tmp) / "index", library, cfg)
        t0 = time.perf_counter()
        built = index.sync(progress=not args.quiet, workers=workers)
        t_pool = time.perf_counter() - t0
    n = len(built)
    machine = machine_name(device)
    row = (f"| {machine} | {args.gl or gl_renderer_name()} | {device} | {t_render:.1f} | {len(poses) / t_render:.0f} | "
           f"{t_codes:.2f} | {workers} | {n} | {t_pool / n:.2f} | {n * len(poses) / t_pool:.0f} |")
    out = args.out
    old = out.read_text() if out.is_file() else ""
    m = re.search(r"<!-- bench-index -->\n(.*?)<!-- /bench-index -->", old, re.S)
    table = merge_rows(m.group(1) if m else "", row, machine)
    block = ("## Index build (render + codes per shape)\n\n"
             f"Produced by `python -m models.bench_index bench` ({len(poses):,} views per shape, {cfg.canvas} px canvas; "
             "the pool builds a fresh index of the first `--shapes` meshes of `--library`, the time includes starting "
             "the processes). One row per machine it ran on.\n\n" + table)
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("")
    replace_block("bench-index", block, out)
    if args.readme:
        replace_block("bench-index", block, args.readme)
    print(block)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.bench_index", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cmd", choices=["bench"])
    p.add_argument("--library", type=Path, help="folder of meshes to index (e.g. ../shared/shape_library)")
    p.add_argument("--shapes", type=int, default=16)
    p.add_argument("--workers", type=int, default=0, help="pool processes (0: one per core but one)")
    p.add_argument("--weights", type=Path, default=checkpoint.WEIGHTS_DIR / "matching.pt")
    p.add_argument("--device", default=None)
    p.add_argument("--gl", default=None, help="label of the GL renderer for the table (default: asked from GL)")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    p.add_argument("--readme", type=Path, default=Path("README.md"))
    p.add_argument("--quiet", action="store_true")
    run(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
