"""`shapesearch` command line: import meshes, build the index, render mosaics, serve."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _cmd_import(args) -> int:
    from .bootstrap import library_from_settings
    from .importers import import_folder

    library = library_from_settings()
    report = import_folder(library, Path(args.folder), layout=args.layout, categories=set(args.category) if args.category else None)
    print(report.summary())
    for path, err in report.errors:
        print(f"rejected {path}: {err}", file=sys.stderr)
    return 0


def _cmd_list(args) -> int:
    from .bootstrap import library_from_settings

    for s in library_from_settings().shapes(args.category):
        print(f"{s.id:5d}  {s.category:10s}  {s.name:32s}  {s.faces:7d} faces  {s.index_status}")
    return 0


def _cmd_default_library(args) -> int:
    from .procedural import write_default_library

    print(write_default_library(Path(args.out)))
    return 0


def _cmd_bootstrap(args) -> int:
    from .bootstrap import bootstrap

    lib = bootstrap(build_index=not args.no_index)
    print(f"{len(lib.shapes())} shapes ready")
    return 0


def _cmd_grid_mosaic(args) -> int:
    from .mosaic import grid_mosaic

    print(grid_mosaic(Path(args.out), shape_names=args.shape, library_path=args.library))
    return 0


def _cmd_serve(args) -> int:
    import uvicorn

    from .bootstrap import bootstrap
    from .settings import get_settings

    import os

    if args.no_index:
        os.environ["SHAPESEARCH_INDEX_ON_START"] = "false"
        get_settings.cache_clear()
    settings = get_settings()
    # The library is ready before the first request; the index builds in the background (see /healthz).
    bootstrap(settings, build_index=False)
    uvicorn.run("service.app:app", host=args.host or settings.host, port=args.port or settings.port, log_level="info")
    return 0


def _cmd_worker(args) -> int:
    """A Celery worker process: one item at a time (GL and torch stay in one thread); scale by processes."""
    from worker.celery_app import app

    name = args.name or "worker@%h"  # %h: the host (the container in compose), what the healthcheck pings
    app.worker_main(["worker", "-P", "solo", "-n", name, "-Q", "shapesearch", "-l", args.loglevel,
                     "--without-gossip", "--without-mingle"])
    return 0


def _cmd_api_key(args) -> int:
    from service.security import key_store

    store = key_store()
    if args.action == "add":
        print(store.add(args.name))
        print(f"# key {args.name!r} stored hashed in {store.path}; this is the only time it is shown", file=sys.stderr)
    elif args.action == "remove":
        if not store.remove(args.name):
            print(f"no key named {args.name!r}", file=sys.stderr)
            return 1
    else:
        for r in store.records():
            print(r.name)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="shapesearch", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("import", help="import a mesh folder (MANIFEST.json, category/*.ext, ModelNet, ShapeNetCore, PASCAL3D+)")
    s.add_argument("folder")
    s.add_argument("--layout", choices=["manifest", "tree", "modelnet", "shapenet", "pascal3d"], help="default: detected")
    s.add_argument("--category", action="append", help="only these categories (repeatable)")
    s.set_defaults(fn=_cmd_import)

    s = sub.add_parser("list", help="list the catalog")
    s.add_argument("--category")
    s.set_defaults(fn=_cmd_list)

    s = sub.add_parser("api-key", help="add, remove or list API keys (stored hashed) for the write endpoints")
    s.add_argument("action", choices=["add", "remove", "list"])
    s.add_argument("name", nargs="?", default="")
    s.set_defaults(fn=_cmd_api_key)

    s = sub.add_parser("worker", help="a Celery worker (broker: REDIS_URL, else SQLite in the data folder)")
    s.add_argument("--name", help="node name (default: worker@<host>)")
    s.add_argument("--loglevel", default="info")
    s.set_defaults(fn=_cmd_worker)

    s = sub.add_parser("default-library", help="write the generated default library (glb + MANIFEST.json)")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=_cmd_default_library)

    s = sub.add_parser("bootstrap", help="default library, configured library and view index, as on first start")
    s.add_argument("--no-index", action="store_true")
    s.set_defaults(fn=_cmd_bootstrap)

    s = sub.add_parser("grid-mosaic", help="PNG of grid renderings (one row per shape)")
    s.add_argument("--out", default="docs/grid_mosaic.png")
    s.add_argument("--shape", action="append", help="shape names (default: one per category)")
    s.add_argument("--library", help="mesh folder to draw shapes from (default: the generated library)")
    s.set_defaults(fn=_cmd_grid_mosaic)

    s = sub.add_parser("serve", help="prepare the library and index, then serve the API")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--no-index", action="store_true", help="skip building the view index")
    s.set_defaults(fn=_cmd_serve)

    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
