"""The OpenAPI schema (drf-spectacular): valid with no warnings, complete, served with an offline
Swagger UI, and a schemathesis sweep of the live WSGI app against it finds no 5xx but 503/504."""

from __future__ import annotations

import json
import re

import hypothesis
import pytest
import schemathesis
import yaml
from django.core.management import call_command
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.urls import URLPattern, URLResolver, get_resolver
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from embeddings.registry import DEFAULT_MODEL
from embeddings.services import EmbedOptions, job_create
from providers.services import provider_create

# 503 (no worker serves the model here, or the queue is full) and 504 (wait ran out) are the
# SPEC's answers when a dependency is missing; anything else 5xx is a bug.
ALLOWED_5XX = {503, 504}
EXTERNAL_ASSET = re.compile(r"(?:src|href)=[\"']?(?:https?:)?//", re.I)
METHODS = ("get", "post", "put", "patch", "delete")
MAX_EXAMPLES = 20  # per operation, positive and negative cases together


@pytest.fixture
def openapi():
    return SchemaGenerator().get_schema(request=None, public=True)


def _routes(patterns, prefix: str = ""):
    """(OpenAPI path, view class) for every DRF route; Django's <conv:name> becomes {name}."""
    for p in patterns:
        route = prefix + str(p.pattern)
        if isinstance(p, URLResolver):
            yield from _routes(p.url_patterns, route)
        elif isinstance(p, URLPattern) and hasattr(p.callback, "cls"):
            yield "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route), p.callback.cls


def v1_routes():
    return [(path, cls) for path, cls in _routes(get_resolver().url_patterns) if path.startswith("/v1/")]


def test_it_generates_a_valid_schema_without_warnings(tmp_path):
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    schema = yaml.safe_load(out.read_text())
    assert schema["openapi"].startswith("3.")
    assert set(schema["components"]["securitySchemes"]) == {"ApiKeyAuth", "JWTAuth"}


def test_it_documents_every_v1_route_with_its_methods(openapi):
    routes = v1_routes()
    assert len(routes) >= 15
    for path, cls in routes:
        assert path in openapi["paths"], f"{path} ({cls.__name__}) is not in the schema"
        methods = {m for m in METHODS if hasattr(cls, m)}
        assert methods == set(openapi["paths"][path]) & set(METHODS), path


def test_every_operation_declares_its_responses_and_errors(openapi):
    data_plane = {"/v1/embeddings", "/v1/embed", "/v1/embed/batch", "/v1/jobs", "/v1/jobs/{job_id}",
                  "/v1/jobs/{job_id}/results", "/v1/jobs/{job_id}/cancel"}
    for path, item in openapi["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            where = f"{method.upper()} {path}"
            codes = set(op["responses"])
            assert op.get("operationId") and op.get("summary"), where
            assert any(c.startswith("2") for c in codes), where
            if not path.startswith("/v1/"):
                continue
            authenticated = any(s for s in op.get("security", []))
            if authenticated:
                assert {"401", "403"} <= codes, where
            if "requestBody" in op or any(p["in"] == "query" for p in op.get("parameters", [])):
                assert "400" in codes, where
            if "requestBody" in op:
                assert "413" in codes, where
                assert set(op["requestBody"]["content"]) == {"application/json"}, where
            if any(p["in"] == "path" for p in op.get("parameters", [])):
                assert "404" in codes, where
            if path in data_plane:
                assert "429" in codes, where
                assert {"Retry-After", "X-RateLimit-Remaining"} <= set(op["responses"]["429"]["headers"]), where
            for code in codes - {c for c in codes if c.startswith("2")}:
                body = op["responses"][code]["content"]["application/json"]
                assert body["schema"] == {"$ref": "#/components/schemas/Error"}, where
                assert body.get("examples"), f"{where} {code} has no example"
            success = op["responses"][min(c for c in codes if c.startswith("2"))]
            assert "content" in success and any(
                m.get("examples") for m in success["content"].values()), f"{where}: no example answer"


def test_key_and_provider_management_is_documented_as_jwt_only(openapi):
    for path, item in openapi["paths"].items():
        if path.startswith(("/v1/keys", "/v1/providers", "/v1/cache")):
            for method, op in item.items():
                assert op["security"] == [{"JWTAuth": []}], f"{method} {path}"
    assert openapi["paths"]["/v1/embeddings"]["post"]["security"] == [{"ApiKeyAuth": []}, {"JWTAuth": []}]
    assert openapi["paths"]["/v1/auth/login"]["post"].get("security") in ([{}], [], None)


@pytest.mark.django_db
def test_the_schema_is_served_as_yaml_and_json_without_credentials(client):
    yaml_answer = client.get("/api/schema")
    assert yaml_answer.status_code == 200
    assert "/v1/embeddings" in yaml.safe_load(yaml_answer.content)["paths"]
    # A stale or wrong token does not lock anyone out of the docs.
    json_answer = client.get("/api/schema", HTTP_ACCEPT="application/json", HTTP_AUTHORIZATION="Bearer nope")
    assert json_answer.status_code == 200
    assert json.loads(json_answer.content)["info"]["title"] == "Embedding platform API"


@pytest.mark.django_db
def test_swagger_ui_is_served_with_no_cdn(client):
    page = client.get("/api/docs")
    assert page.status_code == 200
    assert page["Content-Type"].startswith("text/html")
    html = page.content.decode()
    assert not EXTERNAL_ASSET.search(html), "Swagger UI must load nothing from the internet"
    assert "/api/schema" in html
    assets = re.findall(r"(?:src|href)=\"(/static/[^\"]+)\"", html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    for asset in assets:
        answer = client.get(asset)
        assert answer.status_code == 200, asset
        assert b"".join(answer.streaming_content), asset


@pytest.mark.django_db
def test_login_without_remote_addr_is_answered_not_a_500(client, redis_db, alice):
    """Found by the sweep below: django-ratelimit's "ip" key raised KeyError (500) when the WSGI
    host sets no REMOTE_ADDR (a unix socket behind a proxy)."""
    body = {"email": "alice@example.com", "password": "correct horse battery"}
    for remote_addr in ("", None):  # the test client always sets one; a real host may not
        answer = client.post("/v1/auth/login", body, content_type="application/json", REMOTE_ADDR=remote_addr)
        assert answer.status_code == 200, answer.content


# --- schemathesis: every operation, bounded, deterministic --------------------------------------
# schemathesis.pytest's lazy `from_fixture(...).parametrize()` reads pytest internals that pytest 9
# removed (Function._nodeid), so each operation runs its own Hypothesis test here instead.

def _operation_ids() -> list[str]:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return [f"{m.upper()} {p}" for p, item in schema["paths"].items() for m in item if m in METHODS]


@pytest.fixture
def sweep(settings, redis_db, alice, jwt_for):
    """The live WSGI app on the tests' DB and Redis, alice's credentials per operation, and ids
    of a real job and provider of hers (half the cases of an operation with an id use them).

    No embedding worker runs, so a cache miss answers 503 at once (and sync waits are short);
    the provider points at a closed local port, so its upstream calls fail at once.
    """
    settings.SYNC_WAIT_SECONDS = 0.2
    settings.LOGIN_RATE_IP = settings.LOGIN_RATE_EMAIL = settings.LOGIN_RATE_IP_EMAIL = "1000/m"
    settings.SIGNUP_RATE_IP = "1000/m"
    settings.PROVIDER_ALLOWED_HOSTS = ["127.0.0.1:9"]
    settings.PROVIDER_MAX_RETRIES = 0
    job = job_create(tenant=alice.tenant, texts=["one", "two"], options=EmbedOptions(model=DEFAULT_MODEL))
    provider = provider_create(tenant=alice.tenant, name="sweep", preset="openai", model="text-embedding-3-small",
                               endpoint="http://127.0.0.1:9/v1/embeddings", api_key="sk-sweep-secret-0000")
    known_ids = {"job_id": str(job.pk), "provider_id": provider.pk}
    jwt = jwt_for(alice)._credentials["HTTP_AUTHORIZATION"]

    def auth(operation) -> dict:
        jwt_only = operation.definition.raw.get("security") == [{"JWTAuth": []}]
        return {"Authorization": jwt if jwt_only else f"Bearer {alice.key}"}

    # As Django's test client does: the WSGI handler would close the test's DB connection (and
    # its transaction) after every request.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        schema = schemathesis.openapi.from_wsgi("/api/schema", get_wsgi_application(),
                                                headers={"Accept": "application/json"})
        yield schema, auth, known_ids
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.mark.django_db
@pytest.mark.parametrize("label", _operation_ids())
def test_no_input_gets_a_server_error(label, sweep):
    schema, auth, known_ids = sweep
    method, path = label.split(" ", 1)
    operation = schema[path][method]
    headers = auth(operation)
    ids = {name: value for name, value in known_ids.items() if f"{{{name}}}" in path}
    cases = st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in GenerationMode),
                      *([operation.as_strategy(path_parameters=ids)] if ids else []))

    @hypothesis.given(case=cases)
    @hypothesis.settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
                         phases=[Phase.explicit, Phase.generate, Phase.shrink],
                         suppress_health_check=list(HealthCheck))
    def run(case):
        response = case.call(headers=headers)
        if response.status_code not in ALLOWED_5XX:
            case.validate_response(response, checks=[not_a_server_error])

    run()
