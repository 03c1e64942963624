"""The embedded executor (`make run`): the API killed mid-batch and started again finishes the job,
every item recorded exactly once."""
import signal
import subprocess
import sys
import time

import trimesh

from conftest import marked_box
from test_workers_redis import REPO, Cluster, _assert_exactly_once


def test_api_killed_mid_batch_resumes_on_restart(tmp_path):
    (tmp_path / "lib" / "misc").mkdir(parents=True)
    marked_box().export(tmp_path / "lib" / "misc" / "marked_box.ply")
    trimesh.creation.cone(0.5, 1.2).export(tmp_path / "lib" / "misc" / "cone.ply")
    c = Cluster(tmp_path)
    c.env.pop("REDIS_URL")
    c.env["SHAPESEARCH_JOB_EXECUTOR"] = "thread"
    subprocess.run([sys.executable, "-m", "shape_library.cli", "bootstrap"], cwd=REPO, env=c.env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    api = [sys.executable, "-m", "uvicorn", "service.app:app", "--host", "127.0.0.1", "--port", str(c.api_port)]
    try:
        c.start("api", api)
        c.wait_for(lambda: c.api("GET", "/healthz").status_code == 200, 120, "api")
        jid = c.submit(20)
        deadline = time.time() + 120
        while c.job(jid)["progress"]["done"] < 3 and time.time() < deadline:
            time.sleep(0.05)
        before = c.job(jid)["progress"]["done"]
        c.kill("api", signal.SIGKILL)
        c.start("api", api)
        c.wait_for(lambda: c.api("GET", "/healthz").status_code == 200, 120, "api")
        body = c.wait_job(jid)
        _assert_exactly_once(body, 20)
        assert 3 <= before < 20
    finally:
        c.stop()
