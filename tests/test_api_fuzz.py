"""Property-based fuzzing of the jobs API from its own OpenAPI schema (schemathesis over the ASGI app,
the key gate and chat router included): whatever a client sends, no route answers with a 5xx, which the
openai client would retry as if the server were down, and every refusal is in OpenAI's error body."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings


def test_no_route_answers_with_a_server_error(tmp_path):
    from tunesmith.api.app import create_api_app
    from tunesmith.workspace import Workspace

    app = create_api_app(Workspace.from_env(tmp_path / "home"), max_upload=64 * 1024)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15  # files, jobs (and their events, checkpoints, cancel, pause, resume), models, health

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def answers_without_a_server_error(case):
            response = case.call()
            assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}"
            if response.status_code >= 400:
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}, response.text[:300]

        answers_without_a_server_error()
