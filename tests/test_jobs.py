"""The job store, the item driver and the embedded executor; the jobs API with a real search at the end."""
import csv
import io
import json
import threading
import time
import zipfile

import numpy as np
import pytest
import trimesh
from fastapi.testclient import TestClient
from PIL import Image

from conftest import marked_box
from worker import items
from worker.store import JobStore, NewItem


@pytest.fixture()
def store(tmp_path):
    return JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}")


def _png(color=(200, 120, 60), size=(96, 80)) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", size, (255, 255, 255))
    img.paste(Image.new("RGB", (size[0] // 2, size[1] // 2), color), (size[0] // 4, size[1] // 4))
    img.save(buf, "PNG")
    return buf.getvalue()


# The store -----------------------------------------------------------------------------
def test_claim_is_exclusive_and_the_result_is_recorded_once(store):
    jid, created = store.create("search", [NewItem("a.png", "000000.png"), NewItem("b.png", "000001.png")])
    assert created and store.get(jid).status == "queued"
    t1 = store.claim(jid, 0, "w1", lease_s=60)
    assert t1 == 1 and store.get(jid).status == "running"
    assert store.claim(jid, 0, "w2", lease_s=60) is None          # a duplicate delivery while w1 works
    assert store.finish(jid, 0, t1, result={"x": 1})
    assert store.claim(jid, 0, "w2", lease_s=60) is None          # done items are never redone
    assert not store.finish(jid, 0, t1, result={"x": 2})         # nor recorded twice
    assert json.loads(store.item(jid, 0).result) == {"x": 1}
    t = store.claim(jid, 1, "w1", lease_s=60)
    store.finish(jid, 1, t, error="bad image")
    job = store.get(jid)
    assert job.status == "done" and job.finished_at is not None
    assert store.counts(jid) == {"done": 1, "failed": 1}


def test_an_expired_lease_lets_another_worker_take_over_and_only_the_new_claim_records(store):
    jid, _ = store.create("search", [NewItem("a.png", "a")])
    stale = store.claim(jid, 0, "dead-worker", lease_s=0.01)
    time.sleep(0.05)
    fresh = store.claim(jid, 0, "w2", lease_s=60)
    assert fresh == stale + 1
    assert not store.finish(jid, 0, stale, result={"who": "dead"})
    assert store.finish(jid, 0, fresh, result={"who": "w2"})
    item = store.item(jid, 0)
    assert json.loads(item.result) == {"who": "w2"} and item.worker == "w2" and item.attempts == 2


def test_stale_items_are_found_for_resending(store):
    jid, _ = store.create("search", [NewItem("a", "a"), NewItem("b", "b"), NewItem("c", "c")])
    store.claim(jid, 0, "w", lease_s=0.01)
    store.claim(jid, 1, "w", lease_s=600)
    time.sleep(0.05)
    assert store.stale_items(requeue_after_s=600) == [(jid, 0)]       # running past its lease
    assert store.item(jid, 0).status == "queued"                       # the lost claim is void
    assert store.stale_items(requeue_after_s=600) == []                # just re-sent: not again at once
    assert set(store.stale_items(requeue_after_s=0.0)) == {(jid, 0), (jid, 2)}  # queued too long


def test_cancel_drops_queued_items_and_is_final(store):
    jid, _ = store.create("search", [NewItem(str(i), str(i)) for i in range(4)])
    tok = store.claim(jid, 0, "w", 60)
    assert store.cancel(jid)
    assert store.get(jid).status == "cancelled" and store.counts(jid) == {"running": 1, "cancelled": 3}
    assert store.claim(jid, 1, "w", 60) is None
    assert store.finish(jid, 0, tok, result={})            # the running item still lands
    assert store.get(jid).status == "cancelled" and not store.cancel(jid)


def test_idempotency_key_returns_the_same_job(store):
    a, created_a = store.create("search", [NewItem("a", "a")], idempotency_key="k1")
    b, created_b = store.create("search", [NewItem("a", "a")], idempotency_key="k1")
    assert a == b and created_a and not created_b


def test_an_uncounted_release_gives_the_claim_back_without_using_an_attempt(store):
    jid, _ = store.create("search", [NewItem("a", "a")])
    t = store.claim(jid, 0, "w", 60)
    assert store.release(jid, 0, t, "waiting for the view index", counted=False)
    item = store.item(jid, 0)
    assert item.status == "queued" and item.attempts == 0 and "waiting" in item.error
    assert not store.release(jid, 0, t, "again", counted=False)      # that claim is gone
    assert store.claim(jid, 0, "w", 60) == 1                          # the next try is still the first


# The driver and the embedded executor ---------------------------------------------------------
@pytest.fixture()
def job_env(data_dir, monkeypatch):
    from shape_library import settings

    settings.get_settings.cache_clear()
    yield items.store()


def _run_executor(store, jid, threads: int = 1):
    """Start the embedded executor, wait for the job to finish, stop it; the finished job."""
    from worker.thread_executor import ThreadExecutor

    ex = ThreadExecutor(threads=threads)
    ex.start()                     # picks the queued items up from the store by itself
    try:
        return _wait(store, jid)
    finally:
        ex.stop()


def _wait(store, jid, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if store.get(jid).status in ("done", "failed", "cancelled"):
            return store.get(jid)
        time.sleep(0.05)
    raise AssertionError(f"job {jid} still {store.get(jid).status}: {store.counts(jid)}")


def test_transient_errors_are_retried_with_backoff_and_bad_input_fails_at_once(job_env, monkeypatch):
    from shape_library.images import InputRejected

    calls: dict[int, int] = {}

    def flaky(job, item):
        calls[item.idx] = calls.get(item.idx, 0) + 1
        if item.idx == 0 and calls[0] < 3:
            raise OSError("disk hiccup")
        if item.idx == 1:
            raise InputRejected(415, "not an image")
        if item.idx == 2:
            raise RuntimeError("always broken")
        return {"ok": item.idx}

    monkeypatch.setitem(items.HANDLERS, "search", flaky)
    monkeypatch.setattr(items, "backoff", lambda attempt: 0.01)
    jid, _ = job_env.create("search", [NewItem(str(i), str(i)) for i in range(4)])
    job = _run_executor(job_env, jid, threads=2)
    got = {it.idx: it for it in job_env.items(jid)}
    assert job.status == "done"
    assert got[0].status == "done" and got[0].attempts == 3 and calls[0] == 3
    assert got[1].status == "failed" and got[1].attempts == 1 and "not an image" in got[1].error
    assert got[2].status == "failed" and got[2].attempts == 3 and "after 3 attempts" in got[2].error
    assert got[3].status == "done" and json.loads(got[3].result) == {"ok": 3}


def test_an_item_waiting_for_the_index_is_tried_again_without_using_its_attempts(job_env, monkeypatch):
    calls = []

    def waits(job, item):
        calls.append(item.idx)
        if len(calls) <= 5:           # more waits than job_max_attempts (3) allows failures
            raise items.NotReady(0.01, "waiting for the view index: 1 of 2 shapes searchable so far")
        return {"ok": True}

    monkeypatch.setitem(items.HANDLERS, "search", waits)
    jid, _ = job_env.create("search", [NewItem("a", "a")])
    job = _run_executor(job_env, jid, threads=1)
    item = job_env.item(jid, 0)
    assert job.status == "done" and item.status == "done" and item.attempts == 1 and len(calls) == 6


def test_a_restarted_executor_finishes_what_a_crashed_one_left(job_env, monkeypatch):
    """Items left running or queued by a process that died are all done exactly once after a restart."""
    seen = []
    lock = threading.Lock()

    def record(job, item):
        with lock:
            seen.append(item.idx)
        return {"idx": item.idx}

    monkeypatch.setitem(items.HANDLERS, "search", record)
    jid, _ = job_env.create("search", [NewItem(str(i), str(i)) for i in range(6)])
    t = job_env.claim(jid, 0, "crashed", 600)
    job_env.finish(jid, 0, t, result={"idx": 0})   # finished before the crash
    job_env.claim(jid, 1, "crashed", 600)          # in flight when the process died
    job = _run_executor(job_env, jid, threads=1)
    assert job.status == "done" and sorted(seen) == [1, 2, 3, 4, 5]
    assert [json.loads(it.result)["idx"] for it in job_env.items(jid)] == list(range(6))


# The API -----------------------------------------------------------------------------------
@pytest.fixture()
def api(data_dir, monkeypatch):
    from shape_library import settings, warm_engine
    from worker import dispatch

    monkeypatch.setenv("SHAPESEARCH_DEFAULT_LIBRARY", "false")
    monkeypatch.setenv("SHAPESEARCH_RENDER_SIZE", "64")
    settings.get_settings.cache_clear()
    warm_engine.reset_engine()
    from service.app import create_app

    with TestClient(create_app()) as client:
        yield client
    dispatch.stop()
    warm_engine.reset_engine()


def _metric(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def _poll(client, jid, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        body = client.get(f"/v1/jobs/{jid}").json()
        if body["status"] in ("done", "failed", "cancelled"):
            return body
        time.sleep(0.3)
    raise AssertionError(body)


def test_batch_upload_checks_every_file_and_the_zip(api):
    r = api.post("/v1/jobs", files=[("image", ("x.png", b"not an image", "image/png"))])
    assert r.status_code == 422 and "x.png: not a JPEG, PNG or WebP image" in r.json()["detail"]
    r = api.post("/v1/jobs", files={"archive": ("a.zip", b"PK\x03\x04garbage", "application/zip")})
    assert r.status_code == 422 and "zip" in r.json()["detail"]
    r = api.post("/v1/jobs", data={"kind": "search"})
    assert r.status_code == 422 and "image" in r.json()["detail"]
    r = api.post("/v1/jobs", data={"kind": "mine-bitcoin"}, files=[("image", ("a.png", _png(), "image/png"))])
    assert r.status_code == 422 and "kind" in r.json()["detail"]
    r = api.post("/v1/jobs", data={"boxes": "[1,2]"}, files=[("image", ("a.png", _png(), "image/png"))])
    assert r.status_code == 422 and "boxes" in r.json()["detail"]

    zb = io.BytesIO()
    with zipfile.ZipFile(zb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("cars/one.png", _png())
        z.writestr("../../etc/evil.png", _png())
        z.writestr("__MACOSX/cars/._one.png", b"resource fork")
        z.writestr("notes.txt", "hello")
        z.writestr("huge.png", b"\0" * (3 * 2**20))   # compresses to almost nothing: a small bomb
    import os

    os.environ["SHAPESEARCH_MAX_UPLOAD_BYTES"] = str(2**20)
    from shape_library import settings

    settings.get_settings.cache_clear()
    try:
        r = api.post("/v1/jobs", files={"archive": ("batch.zip", zb.getvalue(), "application/zip")})
    finally:
        del os.environ["SHAPESEARCH_MAX_UPLOAD_BYTES"]
        settings.get_settings.cache_clear()
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["progress"]["total"] == 1
    skipped = " | ".join(body["skipped"])
    assert "../../etc/evil.png: unsafe path" in skipped and "notes.txt: not a JPEG" in skipped
    assert "huge.png: larger than" in skipped and "__MACOSX" not in skipped
    assert api.get("/v1/jobs/0123").status_code == 404


def test_search_batch_end_to_end_with_results_downloads_and_metrics(api, tmp_path, monkeypatch):
    # A mesh upload becomes an indexing job; the batch then searches the indexed shape for real.
    buf = io.BytesIO()
    marked_box().export(buf, file_type="ply")
    r = api.post("/v1/shapes", files={"mesh": ("box.ply", buf.getvalue())}, data={"name": "marked box", "category": "misc"})
    assert r.status_code == 201, r.text
    shape = r.json()
    assert shape["created"] and shape["job_id"]
    index_job = _poll(api, shape["job_id"])
    assert index_job["status"] == "done" and index_job["results"][0]["result"]["views"] == 2541
    assert api.get("/v1/shapes").json()[0]["indexed"] is True
    again = api.post("/v1/shapes", files={"mesh": ("box.ply", buf.getvalue())}, data={"name": "x", "category": "misc"})
    assert again.status_code == 200 and again.json()["created"] is False and again.json()["job_id"] is None

    posted_before = _metric(api.get("/metrics").text, 'shapesearch_http_requests_total{method="POST",route="/v1/jobs",status="202"}')
    files = [("image", (f"p{i}.png", _png((40 * i, 90, 200)), "image/png")) for i in range(3)]
    files.append(("image", ("readme.txt", b"hello", "text/plain")))
    r = api.post("/v1/jobs", files=files, data={"top_k": "2", "boxes": json.dumps({"p1.png": "10,10,80,70"})},
                 headers={"Idempotency-Key": "batch-1"})
    assert r.status_code == 202, r.text
    jid = r.json()["job_id"]
    assert r.json()["skipped"] == ["readme.txt: not a JPEG, PNG or WebP image"]
    same = api.post("/v1/jobs", files=files, headers={"Idempotency-Key": "batch-1"})
    assert same.status_code == 200 and same.json()["job_id"] == jid
    body = _poll(api, jid)
    assert body["status"] == "done" and body["progress"] == {"done": 3, "failed": 0, "cancelled": 0, "total": 3, "fraction": 1.0}
    assert [it["name"] for it in body["results"]] == ["p0.png", "p1.png", "p2.png"]
    for it in body["results"]:
        assert it["attempts"] == 1 and len(it["result"]["matches"]) == 2
        assert it["result"]["matches"][0]["shape_id"] == shape["id"]
    assert body["results"][1]["result"]["bbox"] == [10, 10, 80, 70]
    assert body["started_at"] and body["finished_at"]

    csv_text = api.get(f"/v1/jobs/{jid}/results.csv").text.splitlines()
    assert csv_text[0].startswith("index,name,status") and len(csv_text) == 1 + 3 * 2
    rows = list(csv.DictReader(csv_text))
    assert all(float(r["score"]) == max(0.0, float(r["raw_score"])) for r in rows)
    assert all(r["prior_deg"] == r["prior_weight"] == "" for r in rows)   # "misc" has no viewpoint head: no prior
    assert api.get(f"/v1/jobs/{jid}/results.json").json()["results"][2]["name"] == "p2.png"
    assert api.delete(f"/v1/jobs/{jid}").status_code == 409
    assert any(j["job_id"] == jid for j in api.get("/v1/jobs").json())

    metrics = api.get("/metrics").text
    assert _metric(metrics, 'shapesearch_http_requests_total{method="POST",route="/v1/jobs",status="202"}') == posted_before + 1
    assert _metric(metrics, 'shapesearch_http_request_seconds_count{method="POST",route="/v1/shapes"}') >= 2
    assert 'shapesearch_jobs{state="done"} 2.0' in metrics and "shapesearch_queue_depth 0.0" in metrics
    assert "shapesearch_index_views 2541.0" in metrics
    assert 'route="/v1/jobs/{job_id}"' in metrics and jid not in metrics

    # tag_filter travels with the job; "misc" is outside the tagger's vocabulary, so it is always searched
    r = api.post("/v1/jobs", files=files[:1], data={"top_k": "1", "tag_filter": "true"})
    tagged = _poll(api, r.json()["job_id"])
    assert tagged["status"] == "done" and tagged["params"]["tag_filter"] is True
    result = tagged["results"][0]["result"]
    assert "tag_filter" in result and result["tag_filter"] in (None, ["misc"])
    assert result["matches"][0]["shape_id"] == shape["id"]

    # Coverage: with every shape indexed the answer says so; a shape not indexed yet makes a search say it
    # saw only part of the library, and a batch item wait for it (without using its attempts).
    photo = [("image", ("p.png", _png(), "image/png"))]
    r = api.post("/v1/search", files=photo, data={"top_k": "1"}).json()
    assert (r["indexed_shapes"], r["library_shapes"], r["notice"]) == (1, 1, None)
    from shape_library.bootstrap import library_from_settings
    from shape_library.catalog import IndexStatus

    f = tmp_path / "late.ply"
    trimesh.creation.icosphere(1).export(f)
    lib = library_from_settings()
    late = lib.add(f, name="late sphere", category="misc").shape.id     # in the catalog, no views yet
    r = api.post("/v1/search", files=photo, data={"top_k": "1"}).json()
    assert (r["indexed_shapes"], r["library_shapes"]) == (1, 2) and "only 1 of the 2 shapes" in r["notice"]
    assert r["matches"][0]["shape_id"] == shape["id"]
    monkeypatch.setattr(items, "INDEX_POLL_S", 0.2)
    jid = api.post("/v1/jobs", files=photo, data={"top_k": "1"}).json()["job_id"]
    time.sleep(1.5)
    waiting = api.get(f"/v1/jobs/{jid}").json()
    assert waiting["status"] != "done" and waiting["results"][0]["attempts"] == 0
    assert "waiting for the view index" in waiting["results"][0]["error"]
    lib.set_status(late, IndexStatus.failed)          # it will not come: answer from what is indexed, and say so
    body = _poll(api, jid)
    assert body["status"] == "done" and body["results"][0]["attempts"] == 1
    assert "1 failed to index" in body["results"][0]["result"]["notice"]
    rows = list(csv.DictReader(api.get(f"/v1/jobs/{jid}/results.csv").text.splitlines()))
    assert "1 failed to index" in rows[0]["notice"]
    assert api.delete(f"/v1/shapes/{late}").status_code == 200

    thumb = api.get(f"/v1/shapes/{shape['id']}/thumbnail.png")
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).size == (160, 160)
    grey = np.asarray(Image.open(io.BytesIO(thumb.content)).convert("L"))
    assert 0.02 < (grey < 255).mean() < 0.9 and grey.min() < 200  # the shape, darker than its white ground
    assert api.delete(f"/v1/shapes/{shape['id']}").status_code == 200
    assert api.get("/v1/shapes").json() == [] and api.delete(f"/v1/shapes/{shape['id']}").status_code == 404


def test_cancelling_a_job_stops_its_queued_items(api, monkeypatch):
    gate = threading.Event()

    def slow(job, item):
        gate.wait(10)
        return {"idx": item.idx}

    monkeypatch.setitem(items.HANDLERS, "search", slow)
    r = api.post("/v1/jobs", files=[("image", (f"p{i}.png", _png(), "image/png")) for i in range(5)])
    jid = r.json()["job_id"]
    deadline = time.time() + 10
    while api.get(f"/v1/jobs/{jid}").json()["status"] != "running" and time.time() < deadline:
        time.sleep(0.05)
    c = api.delete(f"/v1/jobs/{jid}")
    assert c.status_code == 200 and c.json()["status"] == "cancelled"
    gate.set()
    time.sleep(0.5)
    body = api.get(f"/v1/jobs/{jid}").json()
    assert body["status"] == "cancelled" and body["progress"]["cancelled"] == 4 and body["progress"]["done"] == 1
