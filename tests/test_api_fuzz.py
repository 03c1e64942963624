"""Fuzz every operation of the OpenAPI schema (schemathesis): no input may produce a server error.

503 is allowed only as the documented "busy / model missing" answer, with a detail."""
import os

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402


def _app(tmp):
    os.environ.update({"SHAPESEARCH_DATA_DIR": str(tmp), "SHAPESEARCH_INDEX_ON_START": "false",
                       "SHAPESEARCH_DEFAULT_LIBRARY": "false", "SHAPESEARCH_RATE_LIMIT_PER_MINUTE": "0",
                       "SHAPESEARCH_JOB_EXECUTOR": "thread"})
    from shape_library import library, settings as s

    s.get_settings.cache_clear()
    library.open_library.cache_clear()
    from service.app import create_app

    return create_app()


import tempfile  # noqa: E402

_TMP = tempfile.mkdtemp(prefix="shapesearch-fuzz-")
schema = schemathesis.openapi.from_asgi("/openapi.json", _app(_TMP))


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
