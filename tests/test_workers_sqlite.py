"""The embedded Celery default: kombu's SQLAlchemy transport on SQLite, no broker server at all."""
import subprocess
import sys

import trimesh

from conftest import marked_box
from test_workers_redis import REPO, Cluster, _assert_exactly_once


def test_celery_over_a_sqlite_broker_runs_a_batch(tmp_path):
    (tmp_path / "lib" / "misc").mkdir(parents=True)
    marked_box().export(tmp_path / "lib" / "misc" / "marked_box.ply")
    trimesh.creation.cone(0.5, 1.2).export(tmp_path / "lib" / "misc" / "cone.ply")
    c = Cluster(tmp_path)
    c.env.pop("REDIS_URL")
    c.env["SHAPESEARCH_JOB_EXECUTOR"] = "celery"
    subprocess.run([sys.executable, "-m", "shape_library.cli", "bootstrap"], cwd=REPO, env=c.env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    try:
        c.start_worker("w1")
        c.start("api", [sys.executable, "-m", "uvicorn", "service.app:app", "--host", "127.0.0.1", "--port", str(c.api_port)])
        c.wait_for(lambda: c.api("GET", "/healthz").status_code == 200, 120, "api")
        body = c.wait_job(c.submit(4))
        _assert_exactly_once(body, 4)
        assert {r["worker"].split("@")[0] for r in body["results"]} == {"w1"}
        assert (tmp_path / "var" / "broker.sqlite").is_file()
    finally:
        c.stop()
