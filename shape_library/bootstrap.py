"""First-start work: the default library, the configured mesh folder, the view index."""
from __future__ import annotations

import logging

from .importers import import_folder
from .index import ViewIndex, ViewIndexConfig
from .library import ShapeLibrary, open_library
from .settings import Settings, get_settings

log = logging.getLogger(__name__)


def library_from_settings(settings: Settings | None = None) -> ShapeLibrary:
    settings = settings or get_settings()
    return open_library(str(settings.data_dir), settings.max_faces)


def ensure_default_library(settings: Settings, library: ShapeLibrary, progress: bool = True) -> None:
    """Generate the project's own shapes (deterministic) and import them once."""
    from .procedural import write_default_library

    folder = settings.default_library_dir
    if not (folder / "MANIFEST.json").is_file():
        write_default_library(folder)
    report = import_folder(library, folder, layout="manifest", progress=progress)
    log.info("default library: %s", report.summary())


def bootstrap(settings: Settings | None = None, build_index: bool = True, progress: bool = True) -> ShapeLibrary:
    settings = settings or get_settings()
    library = library_from_settings(settings)
    if settings.default_library:
        ensure_default_library(settings, library, progress)
    if settings.library is not None:
        report = import_folder(library, settings.library, progress=progress)
        log.info("%s: %s", settings.library, report.summary())
        for path, err in report.errors:
            log.warning("rejected %s: %s", path, err)
    if build_index:
        build_index_and_codes(settings, view_index_from_settings(settings, library), progress=progress)
    return library


def view_index_from_settings(settings: Settings, library: ShapeLibrary) -> ViewIndex:
    return ViewIndex(settings.index_dir, library, ViewIndexConfig(canvas=settings.render_size))


def feature_index_from_settings(settings: Settings, views: ViewIndex, weights=None):
    """(model, FeatureIndex) for the matching weights, or None when the weights are absent."""
    weights = weights or settings.matching_weights
    if not weights.is_file():
        return None
    from models import checkpoint
    from models import matching  # noqa: F401

    from .features import FeatureIndex

    device = settings.torch_device()
    model, _ = checkpoint.load(weights, device)
    return model, FeatureIndex(views, model, checkpoint.file_hash(weights), device=device)


def build_index_and_codes(settings: Settings, views: ViewIndex, on_shape=None, progress: bool = True) -> None:
    """Render missing views and compute each shape's codes as soon as its views exist, so a search
    during a long first build finds the codes on disk instead of computing them in the request."""
    parts = feature_index_from_settings(settings, views)
    if parts is None:
        log.warning("no matching weights at %s: search is unavailable", settings.matching_weights)

    first = [True]

    def shape_done(done: int, total: int) -> None:
        # Called once before rendering (codes of the shapes already rendered, with a progress bar)
        # and after each shape (its codes; the others are cached).
        if parts is not None:
            parts[1].sync([s.id for s in views.library.shapes() if views.has(s.id)], progress=progress and first[0])
        first[0] = False
        if on_shape:
            on_shape(done, total)

    views.sync(progress=progress, on_shape=shape_done, workers=settings.index_worker_count())
