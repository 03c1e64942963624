"""The load script against a real server: overload turns into 503/429 with Retry-After, never 5xx or timeouts."""
import subprocess
import sys

import trimesh

from conftest import marked_box
from service.load import run
from test_workers_redis import REPO, Cluster


def test_concurrent_clients_past_capacity_get_503_with_retry_after(tmp_path):
    (tmp_path / "lib" / "misc").mkdir(parents=True)
    marked_box().export(tmp_path / "lib" / "misc" / "marked_box.ply")
    trimesh.creation.cone(0.5, 1.2).export(tmp_path / "lib" / "misc" / "cone.ply")
    c = Cluster(tmp_path)
    c.env.pop("REDIS_URL")
    c.env.update({"SHAPESEARCH_JOB_EXECUTOR": "thread", "SHAPESEARCH_MAX_INFLIGHT_SEARCHES": "1"})
    subprocess.run([sys.executable, "-m", "shape_library.cli", "bootstrap"], cwd=REPO, env=c.env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    try:
        c.start("api", [sys.executable, "-m", "uvicorn", "service.app:app", "--host", "127.0.0.1", "--port", str(c.api_port)])
        c.wait_for(lambda: c.api("GET", "/healthz").status_code == 200, 120, "api")
        out = run(f"http://127.0.0.1:{c.api_port}", clients=6, requests=60, seconds=90, jobs_every=6)
    finally:
        c.stop()
    assert out["requests"] == 60 and not out["client_errors"], out
    assert out["server_errors_5xx"] == 0 and out["overload_without_retry_after"] == 0, out
    assert out["status"].get("503", 0) > 0, out        # capacity 1 with 6 clients: some are turned away at once
    assert out["ok"] >= 10 and out["status"].get("202", 0) >= 1, out
