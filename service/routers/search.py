from __future__ import annotations

import base64

from fastapi import APIRouter, File, Form, HTTPException, Response, UploadFile
from pydantic import BaseModel, Field

from shape_library.settings import get_settings
from shape_library import warm_engine

from ..engine import engine_lock, get_engine
from ..security import heavy
from ..schemas import ErrorOut
from ..uploads import decode_image, parse_bbox, parse_ids, read_upload

router = APIRouter(prefix="/v1/search", tags=["search"])


class MatchOut(BaseModel):
    shape_id: int
    category: str
    name: str
    azimuth: float = Field(description="degrees, [0, 360)")
    elevation: float = Field(description="degrees, [-90, 90]")
    theta: float = Field(description="in-plane rotation, degrees, [-180, 180)")
    score: float = Field(description="predicted geodesic distance to the photo's pose, degrees (smaller is better), never "
                         "below 0; the order of the matches. With the viewpoint prior, the weighted mean of the matcher's "
                         "estimate and the prior's")
    raw_score: float | None = Field(None, description="`score` unclamped: a regressed distance can be negative for close "
                                    "matches, so it orders matches whose `score` ties at 0")
    matcher_score: float | None = Field(None, description="the matching network's own estimate, degrees, unclamped "
                                        "(what the no-match threshold is compared with)")
    prior_deg: float | None = Field(None, description="the S1 viewpoint prior's estimate: rotation away from its prediction, "
                                    "or from the prediction's front/back flip plus a fixed cost; null when the prior was not used")
    prior_weight: float | None = Field(None, description="the prior's weight w in score = (matcher_score + w * prior_deg) / (1 + w): "
                                       "the configured weight times the S1 confidence to the configured power; null without the prior")
    pose_index: int | None = Field(None, description="grid pose index, null when refined off the grid")
    overlay_png: str | None = Field(None, description="data URL of this match blended onto the photo (overlay=true)")


class SearchOut(BaseModel):
    matches: list[MatchOut]
    no_match: bool = Field(description="true when even the best match scores worse than the calibrated threshold, "
                           "or when the tagger finds none of the library's categories in the photo")
    no_match_threshold: float | None = None
    no_match_reason: str | None = Field(None, description="'score' or 'tagger' when no_match is true")
    category_probability: float | None = Field(
        None, description="the tagger's largest category probability (when it was consulted); below its threshold means none")
    bundle: list[int] | None = Field(None, description="the shapes the search was restricted to by the hedged bundle")
    tag_filter: list[str] | None = Field(None, description="the categories searched when tag_filter was asked for")
    timing_ms: dict[str, float]
    candidates: int
    stage: str = Field("exhaustive", description="'exhaustive' (every candidate scored) or 'ann' (FAISS top-N re-ranked exactly)")
    photo_box: list[float] = Field(description="square box of the photo the network saw, pixels")
    overlay_png: str | None = Field(None, description="data URL of the best match blended onto the photo (overlay=true)")
    indexed_shapes: int | None = Field(None, description="shapes of the asked scope (category, shape_ids) whose views are "
                                       "indexed: the matches come from these only")
    library_shapes: int | None = Field(None, description="shapes of the asked scope in the library; more than "
                                       "indexed_shapes while the view index builds")
    notice: str | None = Field(None, description="why the answer may be incomplete (some shapes of the scope not indexed yet)")

    model_config = {"json_schema_extra": {"examples": [{
        "matches": [{"shape_id": 12, "category": "car", "name": "sedan", "azimuth": 42.1, "elevation": 8.2, "theta": 0.0,
                     "score": 6.3, "raw_score": 6.3, "matcher_score": 8.1, "prior_deg": 4.5, "prior_weight": 1.0, "pose_index": 1234}],
        "no_match": False, "no_match_threshold": 41.0, "timing_ms": {"photo_stream": 3.1, "ranking": 14.2, "refinement": 120.5, "total": 140.0},
        "candidates": 60984, "photo_box": [10, 20, 200, 210], "overlay_png": None}]}}


def _bundle_ids(img, box, tradeoff: float) -> list[int]:
    """Shapes of the DARTS bundle at `tradeoff` that this library holds."""
    from .hierarchy import _shape_ids

    pred = warm_engine.get_bundle_predictor()
    if pred is None:
        raise HTTPException(503, f"hierarchy weights not found at {get_settings().hierarchy_weights}")
    probs = warm_engine.class_probabilities(pred.model, img, box)
    ids = _shape_ids(pred.bundles(probs, tradeoff, "darts")[0].labels)
    if not ids:
        raise HTTPException(422, "the hedged bundle holds no shape of this library; search without bundle_tradeoff")
    return ids


def _nothing_searchable(category: str | None) -> str:
    """Why a search had no candidate at all: an answer of 'no match' would blame the photo."""
    from service import indexing

    st = indexing.status()
    what = f"no shape of category {category!r}" if category else "no shape"
    if st["state"] in ("importing", "building"):
        return f"{what} is searchable yet: the view index is building ({st['done']} of {st['total']} shapes done); retry shortly"
    if st["state"] == "failed":
        return f"{what} is searchable: the view index build failed ({st['error']}); see /healthz"
    return f"{what} is indexed yet: add meshes with POST /v1/shapes and let their indexing jobs finish"


def _no_candidate(user_ids: bool, bundle: bool, category: str | None) -> str:
    """Why a search restricted to some shapes had nothing to score, naming the restriction the caller made."""
    of = f" of category {category!r}" if category else ""
    if user_ids and bundle:
        return f"none of shape_ids in the hedged bundle is an indexed shape{of}"
    if user_ids:
        return f"none of shape_ids is an indexed shape{of}"
    return f"none of the hedged bundle's shapes is an indexed shape{of}"


def _run(image_bytes: bytes, bbox, category, shape_ids, top_k: int, refine: bool, prior: bool | None = None,
         bundle_tradeoff: float | None = None, consult_tagger: bool = True, tag_filter: bool = False):
    settings = get_settings()
    if not 1 <= top_k <= 100:
        raise HTTPException(422, "top_k must be between 1 and 100")
    if bundle_tradeoff is not None and not 0.0 <= bundle_tradeoff <= 1.0:
        raise HTTPException(422, f"bundle_tradeoff must be in [0, 1], got {bundle_tradeoff}")
    img = decode_image(image_bytes, settings.max_image_pixels)
    box = parse_bbox(bbox, img)
    ids = user_ids = parse_ids(shape_ids)
    engine = get_engine()
    if category and category not in engine.library.catalog.categories():
        raise HTTPException(422, f"unknown category {category!r}; known: {', '.join(engine.library.catalog.categories())}")
    bundle = None
    if bundle_tradeoff is not None:
        with heavy():
            bundle = _bundle_ids(img, box, bundle_tradeoff)
        ids = bundle if ids is None else [i for i in ids if i in set(bundle)]
        if not ids:
            raise HTTPException(422, "none of shape_ids is in the hedged bundle")
    searched_cats = None
    if tag_filter and not category:
        with heavy():
            ids, searched_cats = warm_engine.tag_filtered_ids(engine.searchable_shapes(), img, box, ids)
    with heavy(), engine_lock:
        result = warm_engine.search(engine, img, box, category or None, ids, top_k, refine, prior)
    if result.candidates == 0:
        if ids is None:
            raise HTTPException(503, _nothing_searchable(category), headers={"Retry-After": "15"})
        raise HTTPException(422, _no_candidate(user_ids is not None, bundle is not None, category))
    none, top = False, None
    if consult_tagger:
        with heavy():
            none, top = warm_engine.tagger_verdict(engine.library, img, box, category, ids)
    return engine, img, result, (none, top, bundle, searched_cats, engine.coverage(category or None, user_ids))


@router.post("", response_model=SearchOut, responses={413: {"model": ErrorOut}, 415: {"model": ErrorOut}, 422: {"model": ErrorOut}, 503: {"model": ErrorOut}},
             summary="Rank every (shape, pose) of the library against a photo")
async def search(
    image: UploadFile | None = File(None, description="JPEG, PNG or WebP photo"),
    bbox: str | None = Form(None, description="x0,y0,x1,y1 in pixels; the whole image when absent"),
    category: str | None = Form(None, description="only shapes of this category"),
    shape_ids: str | None = Form(None, description="comma-separated shape ids to search among"),
    top_k: int = Form(5),
    refine: bool = Form(True, description="evaluate finer poses around the best grid poses"),
    overlay: bool = Form(False, description="also return, per match, the overlay PNG as a data URL"),
    prior: bool | None = Form(None, description="use the S1 viewpoint prediction: rank by the weighted mean of the "
                              "matcher's estimate and the candidate's rotation away from the prediction (see prior_weight) "
                              "and score only the grid poses near it, as the server's settings say; default: on where the viewpoint model knows every category searched"),
    bundle_tradeoff: float | None = Form(None, description="restrict the search to the shapes of the hedged Vec2Bundle "
                                         "answer (DARTS) at this trade-off in [0, 1]; 0 = one shape, 1 = all"),
    tag_filter: bool = Form(False, description="without a category, search only the categories the tagger finds in "
                            "the photo (and those outside its vocabulary); docs/eval_label_search.md"),
) -> SearchOut:
    data = await read_upload(image, get_settings().max_upload_bytes)
    from starlette.concurrency import run_in_threadpool

    engine, img, result, (tag_none, tag_top, bundle, searched_cats, cov) = await run_in_threadpool(
        _run, data, bbox, category, shape_ids, top_k, refine, prior, bundle_tradeoff, True, tag_filter)
    matches = [MatchOut(**m.as_dict()) for m in result.matches]
    if overlay:
        def draw() -> list[str]:
            with engine_lock:
                return ["data:image/png;base64," + base64.b64encode(engine.overlay(img, result, r)).decode()
                        for r in range(len(matches))]

        for m, png in zip(matches, await run_in_threadpool(draw)):
            m.overlay_png = png
    png = matches[0].overlay_png if matches else None
    reason = "tagger" if tag_none else ("score" if result.no_match else None)
    return SearchOut(matches=matches, no_match=result.no_match or tag_none, no_match_reason=reason,
                     category_probability=tag_top, bundle=bundle, tag_filter=searched_cats,
                     no_match_threshold=engine.no_match_threshold_deg, timing_ms=result.timing_ms, candidates=result.candidates,
                     stage=result.stage, photo_box=[float(v) for v in result.photo_box], overlay_png=png,
                     indexed_shapes=cov.indexed, library_shapes=cov.total, notice=cov.notice())


@router.post("/overlay.png", response_class=Response, responses={200: {"content": {"image/png": {}}}, 422: {"model": ErrorOut}},
             summary="The best match rendered in its pose and blended onto the photo")
async def search_overlay(
    image: UploadFile | None = File(None),
    bbox: str | None = Form(None),
    category: str | None = Form(None),
    shape_ids: str | None = Form(None),
    rank: int = Form(0, description="which match to draw, 0 = best"),
) -> Response:
    data = await read_upload(image, get_settings().max_upload_bytes)
    from starlette.concurrency import run_in_threadpool

    engine, img, result, _ = await run_in_threadpool(_run, data, bbox, category, shape_ids, max(5, rank + 1), True, None,
                                                     None, False)
    if not 0 <= rank < len(result.matches):
        raise HTTPException(422, f"rank must be between 0 and {len(result.matches) - 1}")
    with engine_lock:
        png = engine.overlay(img, result, rank)
    return Response(png, media_type="image/png")
