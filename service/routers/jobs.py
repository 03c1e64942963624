"""Batch jobs: queue many images (or re-index the library), watch progress, download results."""
from __future__ import annotations

import csv
import io
import json
import uuid

from fastapi import APIRouter, Depends, File, Form, Header, HTTPException, Query, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from shape_library.bootstrap import library_from_settings
from shape_library.settings import get_settings
from worker import dispatch
from worker.store import NewItem, open_store

from ..job_inputs import InputWriter
from ..schemas import ErrorOut, JobId
from ..security import caller, key_store
from ..uploads import parse_ids

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


class Progress(BaseModel):
    done: int
    failed: int
    cancelled: int = 0
    total: int
    fraction: float = Field(description="finished items / total")


class ItemOut(BaseModel):
    index: int
    name: str
    status: str = Field(description="queued, running, done, failed or cancelled")
    attempts: int
    worker: str | None = None
    result: dict | None = None
    error: str | None = None


class JobOut(BaseModel):
    job_id: str
    kind: str
    status: str = Field(description="queued, running, done, failed or cancelled")
    progress: Progress
    params: dict = {}
    owner: str | None = Field(None, description="name of the API key that submitted it")
    skipped: list[str] = Field([], description="uploaded files that were not images, with the reason")
    error: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    results: list[ItemOut] | None = Field(None, description="per item, in upload order (GET /v1/jobs/{id})")

    model_config = {"json_schema_extra": {"examples": [{
        "job_id": "3f2c...", "kind": "search", "status": "running",
        "progress": {"done": 120, "failed": 1, "cancelled": 0, "total": 1000, "fraction": 0.121},
        "params": {"top_k": 5}, "skipped": ["notes.txt: not a JPEG, PNG or WebP image"],
        "created_at": "2026-11-24T10:00:00+00:00", "started_at": "2026-11-24T10:00:01+00:00", "finished_at": None,
        "results": [{"index": 0, "name": "cars/0001.jpg", "status": "done", "attempts": 1, "worker": "host:123",
                     "result": {"matches": [{"shape_id": 3, "category": "car", "name": "sedan", "azimuth": 40.0,
                                             "elevation": 10.0, "theta": 0.0, "score": 8.1, "pose_index": 900}],
                                "no_match": False}, "error": None}],
    }]}}


def _store():
    return open_store(get_settings().jobs_url)


def _job_or_404(job_id: str):
    job = _store().get(job_id)
    if job is None:
        raise HTTPException(404, f"no job with id {job_id}")
    return job


def _items_out(job_id: str, offset: int, limit: int | None) -> list[ItemOut]:
    return [ItemOut(index=it.idx, name=it.name, status=it.status, attempts=it.attempts, worker=it.worker,
                    result=json.loads(it.result) if it.result else None, error=it.error)
            for it in _store().items(job_id, offset, limit)]


def _validated_params(kind: str, category: str | None, shape_ids: str | None, top_k: int, refine: bool,
                      boxes: str | None, tag_filter: bool = False, prior: bool | None = None) -> tuple[dict, dict]:
    if kind not in ("search", "index", "reindex"):
        raise HTTPException(422, f"kind must be 'search', 'index' or 'reindex', not {kind!r}")
    if not 1 <= top_k <= 100:
        raise HTTPException(422, "top_k must be between 1 and 100")
    library = library_from_settings(get_settings())
    if category and category not in library.catalog.categories():
        raise HTTPException(422, f"unknown category {category!r}; known: {', '.join(library.catalog.categories())}")
    box_map = {}
    if boxes:
        try:
            box_map = json.loads(boxes)
        except json.JSONDecodeError:
            raise HTTPException(422, "boxes must be a JSON object mapping file names to 'x0,y0,x1,y1'") from None
        if not isinstance(box_map, dict) or not all(isinstance(v, str) for v in box_map.values()):
            raise HTTPException(422, "boxes must be a JSON object mapping file names to 'x0,y0,x1,y1'")
    params = {"category": category or None, "shape_ids": parse_ids(shape_ids), "top_k": top_k, "refine": refine}
    if tag_filter:
        params["tag_filter"] = True
    if prior is not None:
        params["prior"] = prior
    return params, box_map


@router.post("", status_code=202, response_model=JobOut,
             responses={404: {"model": ErrorOut}, 413: {"model": ErrorOut}, 422: {"model": ErrorOut}},
             summary="Queue a batch: several `image` parts or one zip `archive` (kind=search), or re-index the library")
async def create_job(
    image: list[UploadFile] | None = File(None, description="JPEG, PNG or WebP photos"),
    archive: UploadFile | None = File(None, description="a zip of photos (folders allowed)"),
    kind: str = Form("search", description="search (photos), index (shape_ids), reindex (the whole library)"),
    category: str | None = Form(None),
    shape_ids: str | None = Form(None, description="search among these shapes; for kind=index, the shapes to index"),
    top_k: int = Form(5),
    refine: bool = Form(True),
    boxes: str | None = Form(None, description='JSON object {"file name": "x0,y0,x1,y1"}'),
    tag_filter: bool = Form(False, description="as in POST /v1/search: without a category, search only the "
                            "categories the tagger finds in each photo"),
    prior: bool | None = Form(None, description="as in POST /v1/search: the S1 viewpoint prior; default: the server's"),
    idempotency_key: str | None = Header(None, description="repeat a submission safely: the same key returns the same job"),
    owner: str | None = Depends(caller),
) -> JSONResponse:
    settings = get_settings()
    jobs = _store()
    if idempotency_key and (existing := jobs.by_idempotency_key(idempotency_key)):
        return JSONResponse(JobOut(**jobs.describe(jobs.get(existing))).model_dump(), status_code=200)
    params, box_map = _validated_params(kind, category, shape_ids, top_k, refine, boxes, tag_filter, prior)
    job_id = uuid.uuid4().hex
    if kind in ("index", "reindex"):
        if owner is None and key_store().enabled():
            raise HTTPException(401, f"a {kind} job needs an API key (header X-API-Key)", headers={"WWW-Authenticate": "ApiKey"})
        if image or archive:
            raise HTTPException(422, f"a {kind} job takes no files")
        library = library_from_settings(settings)
        if kind == "index":
            if not params["shape_ids"]:
                raise HTTPException(422, "kind=index needs shape_ids")
            missing = [i for i in params["shape_ids"] if library.get(i) is None]
            if missing:
                raise HTTPException(404, f"no shapes with ids {missing}")
            ids = params["shape_ids"]
        else:
            ids = [s.id for s in library.shapes()]
        new_items = [NewItem(name=library.get(i).name, input=str(i)) for i in ids]
        job_id, _ = jobs.create(kind, new_items, {}, idempotency_key=idempotency_key, job_id=job_id, owner=owner)
        dispatch.submit([(job_id, i) for i in range(len(new_items))])
        return JSONResponse(JobOut(**jobs.describe(jobs.get(job_id))).model_dump(), status_code=202)

    if not image and archive is None:
        raise HTTPException(422, "send one or more 'image' parts or one 'archive' (zip)")
    writer = InputWriter(settings.jobs_dir / job_id, settings.max_job_items, settings.max_upload_bytes)
    try:
        for part in image or []:
            data = await part.read(settings.max_upload_bytes + 1)
            await run_in_threadpool(writer.add, part.filename or f"image-{len(writer.out.names)}", data)
        if archive is not None:
            size = archive.size if archive.size is not None else 0
            if size > settings.max_archive_bytes:
                raise HTTPException(413, f"archive is larger than the limit of {settings.max_archive_bytes} bytes")
            await run_in_threadpool(writer.add_zip, archive.file, settings.max_archive_bytes)
        if not writer.out.files:
            detail = "no images in the upload"
            if writer.out.skipped:
                detail += ": " + "; ".join(writer.out.skipped[:10])
            raise HTTPException(422, detail)
        new_items = [NewItem(name=n, input=f, params={"bbox": box_map[n]} if n in box_map else None)
                     for n, f in zip(writer.out.names, writer.out.files)]
        job_id, created = jobs.create("search", new_items, params, skipped=writer.out.skipped,
                                      idempotency_key=idempotency_key, job_id=job_id, owner=owner)
    except BaseException:
        writer.discard()
        raise
    if not created:  # a concurrent request with the same key created it first
        writer.discard()
    else:
        dispatch.submit([(job_id, i) for i in range(len(new_items))])
    return JSONResponse(JobOut(**jobs.describe(jobs.get(job_id))).model_dump(), status_code=202 if created else 200)


@router.get("", response_model=list[JobOut], summary="Recent jobs, newest first (without results)")
def list_jobs(limit: int = Query(20, ge=1, le=500)) -> list[JobOut]:
    jobs = _store()
    return [JobOut(**jobs.describe(j)) for j in jobs.jobs(limit)]


@router.get("/{job_id}", response_model=JobOut, responses={404: {"model": ErrorOut}},
            summary="Status, progress and per-item results")
def get_job(job_id: JobId, offset: int = Query(0, ge=0), limit: int = Query(1000, ge=1, le=10_000)) -> JobOut:
    job = _job_or_404(job_id)
    return JobOut(**_store().describe(job), results=_items_out(job_id, offset, limit))


@router.delete("/{job_id}", response_model=JobOut,
               responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}, 404: {"model": ErrorOut}, 409: {"model": ErrorOut}},
               summary="Cancel: queued items are dropped, running ones finish")
def cancel_job(job_id: JobId, who: str | None = Depends(caller)) -> JobOut:
    job = _job_or_404(job_id)
    if key_store().enabled():
        if who is None:
            raise HTTPException(401, "cancelling needs an API key (header X-API-Key)", headers={"WWW-Authenticate": "ApiKey"})
        if job.owner is not None and job.owner != who:
            raise HTTPException(403, f"job {job_id} belongs to another key")
    if not _store().cancel(job_id):
        raise HTTPException(409, f"job {job_id} is already {job.status}")
    return JobOut(**_store().describe(_store().get(job_id)))


@router.get("/{job_id}/results.json", summary="All results as a JSON download")
def results_json(job_id: JobId) -> Response:
    job = _job_or_404(job_id)
    body = {**_store().describe(job), "results": [i.model_dump() for i in _items_out(job_id, 0, None)]}
    return Response(json.dumps(body, indent=1), media_type="application/json",
                    headers={"Content-Disposition": f'attachment; filename="job-{job_id}.json"'})


def _num(v) -> str:
    return "" if v is None else f"{v:.3f}"


CSV_FIELDS = ["index", "name", "status", "error", "rank", "shape_id", "category", "shape_name",
              "azimuth", "elevation", "theta", "score", "raw_score", "matcher_score", "prior_deg", "prior_weight", "no_match", "notice"]


@router.get("/{job_id}/results.csv", summary="All results as CSV: one row per item and match")
def results_csv(job_id: JobId) -> Response:
    job = _job_or_404(job_id)
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_FIELDS)
    w.writeheader()
    for it in _items_out(job_id, 0, None):
        base = {"index": it.index, "name": it.name, "status": it.status, "error": it.error or ""}
        matches = (it.result or {}).get("matches") if job.kind == "search" else None
        if not matches:
            w.writerow(base)
            continue
        for rank, m in enumerate(matches):
            w.writerow({**base, "rank": rank, "shape_id": m["shape_id"], "category": m["category"],
                        "shape_name": m["name"], "azimuth": f"{m['azimuth']:.2f}", "elevation": f"{m['elevation']:.2f}",
                        "theta": f"{m['theta']:.2f}", "score": f"{m['score']:.3f}",
                        "raw_score": _num(m.get("raw_score")),
                        "matcher_score": _num(m.get("matcher_score")), "prior_deg": _num(m.get("prior_deg")),
                        "prior_weight": _num(m.get("prior_weight")),
                        "no_match": it.result.get("no_match"), "notice": it.result.get("notice") or ""})
    return Response(buf.getvalue(), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="job-{job_id}.csv"'})
