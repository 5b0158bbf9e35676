"""Schemathesis over the whole OpenAPI schema, in-process: zero 5xx and zero schema violations.

Every check runs but one: "schema-valid request accepted". A request can fit the schema and still be
wrong for this checkpoint and index (an embedding of the wrong dimension, a code >= K, an unknown
cursor); those get a documented 4xx, which is the behaviour we want.

Bounded (a few examples per operation) to stay fast; `benchmarks/fuzz_api.py` runs a longer pass.
"""

from __future__ import annotations

import shutil

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from semid.service.api.app import create_app
from semid.service.api.settings import ServiceSettings
from semid.service.api.state import ServiceState
from semid.service.assign import assign_catalog

EXAMPLES = 15


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory, tiny_checkpoint, tiny_catalog_file):
    index = tmp_path_factory.mktemp("fuzz") / "idx"
    assign_catalog(checkpoint=tiny_checkpoint, catalog=tiny_catalog_file, index_dir=index, keep_columns=("title",))
    settings = ServiceSettings(index_dir=index, max_batch=64, max_page=200, max_body_bytes=1 << 20)
    app = create_app(settings, state=ServiceState.load(settings))
    yield app
    shutil.rmtree(index, ignore_errors=True)


def _operations(app) -> list:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.slow
def test_api_conforms_to_its_schema(fuzz_app):
    operations = _operations(fuzz_app)
    assert len(operations) >= 10  # every /v1 route and the health routes are in the schema
    calls = {"n": 0}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case) -> None:
            response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
            calls["n"] += 1
            assert response.status_code < 500, (case.method, case.path, response.text)

        check()
    assert calls["n"] >= len(operations)
