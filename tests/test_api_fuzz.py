"""Fuzz every operation of the OpenAPI schema (schemathesis): no input may produce a server error.

503 is allowed only as the documented "busy / model missing" answer, with a detail."""
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402

from shape_library import settings as _settings  # noqa: E402

ENV = {"SHAPESEARCH_INDEX_ON_START": "false", "SHAPESEARCH_DEFAULT_LIBRARY": "false",
       "SHAPESEARCH_RATE_LIMIT_PER_MINUTE": "0", "SHAPESEARCH_JOB_EXECUTOR": "thread"}


def _schema():
    """App and schema built once under the fuzz settings (loading the schema runs the app's start-up,
    which must not index anything), leaving the environment as it was."""
    import tempfile

    from service.app import create_app

    with pytest.MonkeyPatch.context() as mp:
        for k, v in ENV.items():
            mp.setenv(k, v)
        mp.setenv("SHAPESEARCH_DATA_DIR", tempfile.mkdtemp(prefix="shapesearch-fuzz-"))
        _settings.get_settings.cache_clear()
        loaded = schemathesis.openapi.from_asgi("/openapi.json", create_app())
    _settings.get_settings.cache_clear()
    return loaded


schema = _schema()


@pytest.fixture(autouse=True)
def fuzz_env(data_dir, monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr("worker.dispatch.submit", lambda pairs: None)  # jobs stay queued: no rendering while fuzzing
    _settings.get_settings.cache_clear()
    yield
    _settings.get_settings.cache_clear()


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_makes_a_server_error(case):
    response = case.call()
    assert response.status_code < 500 or response.status_code == 503, (case.method, case.path, response.status_code, response.text[:300])
    if response.status_code >= 400:
        ctype = response.headers.get("content-type", "")
        ctype = ctype[0] if isinstance(ctype, list) else ctype
        if ctype.startswith("application/json"):
            assert response.json().get("detail"), response.text[:300]
