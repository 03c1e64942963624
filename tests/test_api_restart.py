"""The embedded executor (`make run`): the API killed mid-batch and started again finishes the job,
every item recorded exactly once."""
import signal
import time

from test_workers_redis import Cluster, _assert_exactly_once


def test_api_killed_mid_batch_resumes_on_restart(tmp_path):
    c = Cluster.prepared(tmp_path, REDIS_URL=None, SHAPESEARCH_JOB_EXECUTOR="thread")
    try:
        c.start_api()
        jid = c.submit(20)
        deadline = time.time() + 120
        while c.job(jid)["progress"]["done"] < 3 and time.time() < deadline:
            time.sleep(0.05)
        before = c.job(jid)["progress"]["done"]
        c.kill("api", signal.SIGKILL)
        c.start_api()
        body = c.wait_job(jid)
        _assert_exactly_once(body, 20)
        assert 3 <= before < 20
    finally:
        c.stop()
