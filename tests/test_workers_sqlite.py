"""The embedded Celery default: kombu's SQLAlchemy transport on SQLite, no broker server at all."""
from test_workers_redis import Cluster, _assert_exactly_once


def test_celery_over_a_sqlite_broker_runs_a_batch(tmp_path):
    c = Cluster.prepared(tmp_path, REDIS_URL=None, SHAPESEARCH_JOB_EXECUTOR="celery")
    try:
        c.start_worker("w1")
        c.start_api()
        body = c.wait_job(c.submit(4))
        _assert_exactly_once(body, 4)
        assert {r["worker"].split("@")[0] for r in body["results"]} == {"w1"}
        assert (tmp_path / "var" / "broker.sqlite").is_file()
    finally:
        c.stop()
