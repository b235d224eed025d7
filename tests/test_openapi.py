"""The OpenAPI schema (drf-spectacular): valid with no warnings, complete, served with an offline
Swagger UI, and a schemathesis sweep of the live WSGI app against it finds no 5xx but 503/504."""

from __future__ import annotations

import collections
import json
import re

import hypothesis
import pytest
import schemathesis
import yaml
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections, transaction
from django.urls import URLPattern, URLResolver, get_resolver
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    ensure_resource_availability,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    use_after_free,
)
from schemathesis.core.failures import FailureGroup
from schemathesis.openapi.checks import JsonSchemaError

from accounts.authcache import cache_clear
from batches.services import batch_create, file_create
from embeddings.hotcache import hot_cache_reset
from embeddings.inputs import EmbedOptions
from embeddings.jobs import job_create
from embeddings.registry import DEFAULT_MODEL
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
                # An upload (the Batch API's POST /v1/files, as OpenAI's) is a form with the file; every other body JSON.
                body_types = {"multipart/form-data"} if path == "/v1/files" else {"application/json"}
                assert set(op["requestBody"]["content"]) == body_types, where
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


@pytest.mark.django_db
def test_a_provider_secret_that_cannot_travel_in_a_header_is_a_400(alice, jwt_for, settings):
    """Found by the stateful walk below: a provider created with a non-ASCII api_key (or a literal
    header value) was stored, then every call to it, /test included, was a 500 (httpx cannot
    encode the Authorization header)."""
    settings.PROVIDER_ALLOWED_HOSTS = ["127.0.0.1:9"]
    api = jwt_for(alice)
    base = {"name": "uni", "preset": "openai", "model": "text-embedding-3-small",
            "endpoint": "http://127.0.0.1:9/v1/embeddings"}
    for body, param in (({**base, "api_key": "sk-\u043a\u043b\u044e\u0447"}, "api_key"),
                        ({**base, "api_key": "sk-ok", "headers": {"X-Team": "\u00e9quipe"}}, "headers")):
        answer = api.post("/v1/providers", body, format="json")
        assert answer.status_code == 400, answer.content
        assert answer.json()["error"]["param"] == param and "ASCII" in answer.json()["error"]["message"]
    created = api.post("/v1/providers", {**base, "api_key": "sk-ascii-0000"}, format="json")
    assert created.status_code == 201
    patched = api.patch(f"/v1/providers/{created.json()['id']}", {"api_key": "sk-\u00fc"}, format="json")
    assert patched.status_code == 400 and patched.json()["error"]["param"] == "api_key"


# --- schemathesis: every operation, bounded, deterministic --------------------------------------
# schemathesis.pytest's lazy `from_fixture(...).parametrize()` reads pytest internals that pytest 9
# removed (Function._nodeid), so each operation runs its own Hypothesis test here instead.
#
# Each answer is checked against the schema, not only for "no 5xx": its status code is one the
# operation declares, its Content-Type is declared for that status, its body matches the declared
# schema and its declared headers are present. An authenticated operation runs once per credential
# it accepts (an API key, a JWT), and must be seen answering something other than 401/403.


def no_unexpected_server_error(ctx, response, case):
    """schemathesis' not_a_server_error, but 503/504 are the SPEC's answers (checked like any other)."""
    if response.status_code >= 500 and response.status_code not in ALLOWED_5XX:
        raise AssertionError(f"{case.operation.label} answered {response.status_code}: {response.text[:300]}")


CHECKS = [no_unexpected_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]
AUTH_REFUSED = {401, 403}


def _credentials(op: dict) -> list[str]:
    schemes = {name for requirement in op.get("security") or [] for name in requirement}
    return [c for c, scheme in (("key", "ApiKeyAuth"), ("jwt", "JWTAuth")) if scheme in schemes] or ["none"]


def _operation_ids() -> list[str]:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return [f"{m.upper()} {p} [{c}]" for p, item in schema["paths"].items() for m, op in item.items()
            if m in METHODS for c in _credentials(op)]


@pytest.fixture
def live_app():
    """The live WSGI app, sharing the test's DB transaction.

    As Django's test client does: the WSGI handler would otherwise close the test's DB connection
    (and its transaction) after every request."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield get_wsgi_application()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def fuzz_settings(settings):
    """No embedding worker runs, so a cache miss answers 503 at once (and sync waits are short);
    providers may only point at a closed local port, so upstream calls fail at once; throttles
    are lifted (each is tested where it lives), so they do not hide the operations behind 429s."""
    settings.SYNC_WAIT_SECONDS = 0.2
    settings.LOGIN_RATE_IP = settings.LOGIN_RATE_EMAIL = settings.LOGIN_RATE_IP_EMAIL = "1000/m"
    settings.SIGNUP_RATE_IP = "1000/m"
    settings.PROVIDER_TEST_RATE = "1000/m"
    settings.PROVIDER_ALLOWED_HOSTS = ["127.0.0.1:9"]
    settings.PROVIDER_MAX_RETRIES = 0
    return settings


@pytest.fixture
def sweep(fuzz_settings, redis_db, alice, jwt_for, live_app):
    """The schema of the live app, alice's credentials by name, and ids of a real job, provider
    and key of hers (half the cases of an operation with an id use them)."""
    job = job_create(tenant=alice.tenant, texts=["one", "two"], options=EmbedOptions(model=DEFAULT_MODEL))
    provider = provider_create(tenant=alice.tenant, name="sweep", preset="openai", model="text-embedding-3-small",
                               endpoint="http://127.0.0.1:9/v1/embeddings", api_key="sk-sweep-secret-0000")
    upload = SimpleUploadedFile("sweep.jsonl", b'{"custom_id": "a", "url": "/v1/embeddings", "body": {"input": "x", '
                                                 b'"model": "all-MiniLM-L6-v2"}}\n')
    file = file_create(tenant=alice.tenant, upload=upload, purpose="batch")
    batch = batch_create(tenant=alice.tenant, input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h")
    known_ids = {"job_id": str(job.pk), "provider_id": provider.pk, "prefix": alice.api_key.prefix,
                 "file_id": file.id, "batch_id": batch.id}
    credentials = {"key": {"Authorization": f"Bearer {alice.key}"},
                   "jwt": {"Authorization": jwt_for(alice)._credentials["HTTP_AUTHORIZATION"]},
                   "none": {}}
    schema = schemathesis.openapi.from_wsgi("/api/schema", live_app, headers={"Accept": "application/json"})
    return schema, credentials, known_ids


@pytest.mark.django_db
@pytest.mark.parametrize("label", _operation_ids())
def test_every_answer_matches_the_schema(label, sweep):
    schema, credentials, known_ids = sweep
    method, path, credential = re.fullmatch(r"(\w+) (\S+) \[(\w+)\]", label).groups()
    operation = schema[path][method]
    headers = credentials[credential]
    ids = {name: value for name, value in known_ids.items() if f"{{{name}}}" in path}
    cases = st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in GenerationMode),
                      *([operation.as_strategy(path_parameters=ids)] if ids else []))
    statuses: list[int] = []

    @hypothesis.given(case=cases)
    @hypothesis.settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
                         phases=[Phase.explicit, Phase.generate, Phase.shrink],
                         suppress_health_check=list(HealthCheck))
    def run(case):
        response = case.call(headers=headers)
        statuses.append(response.status_code)
        case.validate_response(response, checks=CHECKS)

    run()
    if credential != "none":
        assert set(statuses) - AUTH_REFUSED, f"{label}: only ever answered {sorted(set(statuses))}"


def test_the_conformance_checks_catch_an_answer_off_its_schema(sweep):
    """Guards the sweep above against passing vacuously: the same checks fail an answer that does
    not match its declared schema (here: GET /v1/models with a field the schema is told to require)."""
    schema, credentials, _ = sweep
    raw = json.loads(json.dumps(schema.raw_schema))
    model_list = raw["components"]["schemas"]["ModelList"]
    model_list["required"] = [*model_list.get("required", []), "no_such_field"]
    altered = schemathesis.openapi.from_dict(raw)
    altered.app, altered.location = schema.app, schema.location
    case = altered["/v1/models"]["GET"].Case()
    response = case.call(headers=credentials["key"])
    assert response.status_code == 200
    with pytest.raises(FailureGroup) as failed:
        case.validate_response(response, checks=CHECKS)
    assert any(isinstance(e, JsonSchemaError) and "no_such_field" in str(e) for e in failed.value.exceptions)


# --- stateful: the OpenAPI links (embedplatform/openapi_links.py) followed with real credentials ---
LOCAL_UPSTREAM = "http://127.0.0.1:9/v1/embeddings"  # the one upstream fuzz_settings allows (closed)
STATEFUL_SCENARIOS = 20
STATEFUL_STEPS = 20
# Plus: a deleted key or provider is gone (use_after_free), a created one can be read (ensure_resource_availability).
STATEFUL_CHECKS = [*CHECKS, use_after_free, ensure_resource_availability]
# The chain and what its links lead to (the list operations are left to the sweep above).
FLOW_OPERATIONS = ("auth_signup", "auth_login", "auth_refresh", "keys_create", "keys_revoke", "providers_create",
                   "providers_retrieve", "providers_update", "providers_test", "providers_delete")


def test_every_documented_link_is_in_the_schema(openapi):
    from embedplatform.openapi_links import LINKS

    ops = {op["operationId"]: op for item in openapi["paths"].values() for op in item.values()}
    for (source, status), links in LINKS.items():
        assert set(links) <= set(ops[source]["responses"][status].get("links", {})), (source, status)
        for link in links.values():
            assert link["operationId"] in ops


@pytest.mark.django_db
def test_linked_flows_hold_up_with_real_credentials(fuzz_settings, redis_db, tiers, live_app):
    """Hypothesis walks the links: sign-up -> login -> keys / providers -> the created key or
    provider. Each step carries the credential its operation accepts, from the scenario's latest
    sign-up (API key) or login/refresh (access token); every answer is checked against the schema.
    The walk must reach each step of the chain with a success.

    Each scenario starts from the same state (a savepoint rolled back, the tests' Redis DB
    emptied, the in-process caches too), so the same choices meet the same answers: Hypothesis requires it, and a failure
    replays as it happened."""
    schema = schemathesis.openapi.from_wsgi("/api/schema", live_app, headers={"Accept": "application/json"})
    flows = schema.include(operation_id=list(FLOW_OPERATIONS))
    seen: collections.Counter[tuple[str, int]] = collections.Counter()

    class Flows(flows.as_state_machine()):
        def setup(self):
            self.api_key = self.access = None
            self.savepoint = transaction.savepoint()
            redis_db.flushdb()
            cache_clear()
            hot_cache_reset()

        def teardown(self):
            transaction.savepoint_rollback(self.savepoint)
            super().teardown()

        def before_call(self, case):
            # The stateless sweep fuzzes these fields; here a sign-up must succeed (a password the
            # validators take) and a provider must mostly be creatable (a preset, its key, the one
            # allowed upstream) for the walk to go on.
            if not isinstance(case.body, dict):
                return
            if case.operation.label == "POST /v1/auth/signup":
                case.body.update(email="walker@example.com", password="walk the links 0123")
            elif case.operation.label == "POST /v1/providers":
                case.body.update(preset="openai", endpoint=LOCAL_UPSTREAM, api_key="sk-walk-0000")

        def get_call_kwargs(self, case):
            accepted = _credentials(case.operation.definition.raw)
            token = self.api_key if "key" in accepted and self.api_key else self.access if "jwt" in accepted else None
            return {"headers": {"Authorization": f"Bearer {token}"}} if token else {}

        def after_call(self, response, case):
            super().after_call(response, case)
            seen[(case.operation.label, response.status_code)] += 1
            if response.status_code < 300:
                body = response.json()
                if case.path == "/v1/auth/signup":
                    self.api_key = body["api_key"]
                elif case.path in ("/v1/auth/login", "/v1/auth/refresh"):
                    self.access = body["access"]

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            case.validate_response(response, checks=STATEFUL_CHECKS, recorder=self.recorder)

    Flows.run(settings=hypothesis.settings(
        max_examples=STATEFUL_SCENARIOS, stateful_step_count=STATEFUL_STEPS,
        derandomize=True, deadline=None,
        database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck)))
    walked = sorted(seen.items())
    for step in (("POST /v1/auth/signup", 201), ("POST /v1/auth/login", 200), ("POST /v1/keys", 201),
                 ("DELETE /v1/keys/{prefix}", 200), ("POST /v1/providers", 201)):
        assert seen[step], f"the walk never reached {step}: {walked}"
    by_id = {(label, status) for label, status in seen if "{provider_id}" in label and 200 <= status < 300}
    assert by_id, f"no operation on a created provider succeeded: {walked}"
