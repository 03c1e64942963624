"""The load script against a real server: overload turns into 503/429 with Retry-After, never 5xx or timeouts."""
from service.load import run
from test_workers_redis import Cluster


def test_concurrent_clients_past_capacity_get_503_with_retry_after(tmp_path):
    c = Cluster.prepared(tmp_path, REDIS_URL=None, SHAPESEARCH_JOB_EXECUTOR="thread", SHAPESEARCH_MAX_INFLIGHT_SEARCHES="1")
    try:
        c.start_api()
        out = run(f"http://127.0.0.1:{c.api_port}", clients=6, requests=60, seconds=90, jobs_every=6)
    finally:
        c.stop()
    assert out["requests"] == 60 and not out["client_errors"], out
    assert out["server_errors_5xx"] == 0 and out["overload_without_retry_after"] == 0, out
    assert out["status"].get("503", 0) > 0, out        # capacity 1 with 6 clients: some are turned away at once
    assert out["ok"] >= 10 and out["status"].get("202", 0) >= 1, out
