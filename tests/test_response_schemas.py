"""Every endpoint's real answers against the published schema (/api/schema), with no field more or
less: a view whose body drifts from its definition (embedplatform/responses.py) fails here.

The schema is the one the app serves, closed for this check: every object an answer may hold gets
`additionalProperties: false` and all its properties required (our answers always carry every key,
null where there is nothing). The calls go through schemathesis to the live WSGI app, whose checks
(status code, Content-Type, body schema) are the conformance sweep's in tests/test_openapi.py; here
each operation is called with real data, the embedding endpoints served by a real drain loop on the
real model, and each success status it documents must be seen.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import get_type_hints

import jsonschema
import pytest
import schemathesis
from rest_framework import serializers
from schemathesis.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup
from schemathesis.openapi.checks import JsonSchemaError
from schemathesis.specs.openapi.converter import to_json_schema

from batches import responses as batch_responses
from embeddings import responses as embedding_responses
from embeddings.registry import DEFAULT_MODEL
from embeddings.serializers import Job
from embedplatform.responses import shape_serializer
from tests.fakes.provider_server import FakeProvider
from tests.test_openapi import live_app  # noqa: F401 (a fixture: the WSGI app on the test's database)

CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance, response_headers_conformance]
SECRET = "sk-schema-0123456789abcdWXYZ"
PASSWORD = "correct horse battery"
SHAPES = (Job, embedding_responses.EmbeddingsResponse, embedding_responses.EmbedResponse,
          embedding_responses.EmbedBatchResponse, embedding_responses.JobList, embedding_responses.JobResults,
          embedding_responses.RerankResponse, batch_responses.FileObject, batch_responses.FileList,
          batch_responses.FileDeleted, batch_responses.Batch, batch_responses.BatchList)


def closed(raw: dict) -> dict:
    """A copy of the schema in which every object schema a response can reach (inline or through
    $ref) takes no property it does not declare and requires all it declares."""
    raw = json.loads(json.dumps(raw))
    components = raw["components"]["schemas"]
    seen: set[str] = set()

    def close(node) -> None:
        if isinstance(node, list):
            for item in node:
                close(item)
        if not isinstance(node, dict):
            return
        ref = node.get("$ref", "")
        if ref.startswith("#/components/schemas/") and ref not in seen:
            seen.add(ref)
            close(components[ref.rsplit("/", 1)[1]])
        if isinstance(node.get("properties"), dict) and "additionalProperties" not in node:
            node["additionalProperties"] = False
            node["required"] = sorted(node["properties"])
        for key, value in node.items():
            if key not in ("example", "examples", "default", "enum"):
                close(value)

    for item in raw["paths"].values():
        for operation in item.values():
            if isinstance(operation, dict):
                for response in operation.get("responses", {}).values():
                    for media in response.get("content", {}).values():
                        close(media.get("schema"))
    return raw


def json_schema(raw: dict, schema: dict, *, response: bool) -> dict:
    """An OpenAPI 3.0 schema of `raw` as JSON Schema (schemathesis' converter: `nullable` becomes a
    null type, readOnly / writeOnly fields drop out of the side that does not see them), with the
    components its $refs point to."""
    components = {name: to_json_schema(component, "nullable", is_response_schema=response)
                  for name, component in raw["components"]["schemas"].items()}
    return {**to_json_schema(schema, "nullable", is_response_schema=response), "components": {"schemas": components}}


class Api:
    """Calls operations of the closed schema, checks each answer, and records what it has seen."""

    def __init__(self, schema):
        self.schema = schema
        self.seen: set[tuple[str, str, str, str]] = set()

    def __call__(self, method: str, route: str, status: int, *, token: str | None = None, body=None,
                 path: dict | None = None, query: dict | None = None, media_type: str = "application/json"):
        kwargs = {"body": body, "media_type": media_type} if body is not None else {}
        case = self.schema[route][method].Case(path_parameters=path, query=query, **kwargs)
        response = case.call(headers={"Authorization": f"Bearer {token}"} if token else {})
        assert response.status_code == status, f"{method} {route}: {response.status_code} {response.text[:500]}"
        case.validate_response(response, checks=CHECKS)
        media = response.headers["content-type"][0].split(";")[0]
        self.seen.add((method.upper(), route, str(status), media))
        return response

    def documented_successes(self) -> set[tuple[str, str, str, str]]:
        return {(method.upper(), path, status, media)
                for path, item in self.schema.raw_schema["paths"].items()
                for method, operation in item.items() if isinstance(operation, dict)
                for status, response in operation["responses"].items() if status.startswith("2")
                for media in response.get("content", {})}


@pytest.fixture
def published(live_app):  # noqa: F811
    served = schemathesis.openapi.from_wsgi("/api/schema", live_app, headers={"Accept": "application/json"})
    schema = schemathesis.openapi.from_dict(closed(served.raw_schema))
    schema.app, schema.location = served.app, served.location
    return schema


@pytest.fixture
def upstream(settings):
    server = FakeProvider(expected_key=SECRET)
    settings.PROVIDER_ALLOWED_HOSTS = [server.host]
    yield server
    server.close()


def _job_done(api, job_id: str, token: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api("get", "/v1/jobs/{job_id}", 200, token=token, path={"job_id": job_id}).json()
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def test_every_endpoint_answers_as_the_published_schema_says(published, alice, drainer, upstream, settings):
    api = Api(published)
    key = alice.key
    settings.HEALTH_CACHE_SECONDS = 0  # checked now, with the drain loop up
    api("get", "/health/live", 200)
    api("get", "/health/ready", 200)

    # accounts
    api("post", "/v1/auth/signup", 201, body={"email": "dora@example.com", "password": PASSWORD, "tenant_name": "D"})
    tokens = api("post", "/v1/auth/login", 200, body={"email": "alice@example.com", "password": PASSWORD}).json()
    jwt = api("post", "/v1/auth/refresh", 200, body={"refresh": tokens["refresh"]}).json()["access"]
    created = api("post", "/v1/keys", 201, token=jwt, body={"name": "ci"}).json()
    api("get", "/v1/keys", 200, token=jwt)
    api("delete", "/v1/keys/{prefix}", 200, token=jwt, path={"prefix": created["prefix"]})
    api("get", "/v1/webhook-secret", 200, token=jwt)

    # embeddings: misses served by the drain loop, then hits; floats and base64
    texts = [f"schema check {i} {uuid.uuid4().hex[:8]}" for i in range(3)]
    api("get", "/v1/models", 200, token=key)
    api("get", "/v1/models/{model_id}", 200, token=key, path={"model_id": DEFAULT_MODEL})
    api("post", "/v1/embeddings", 200, token=key, body={"model": DEFAULT_MODEL, "input": texts[:2]})
    api("post", "/v1/embeddings", 200, token=key,
        body={"model": DEFAULT_MODEL, "input": texts[0], "encoding_format": "base64"})
    api("post", "/v1/embed", 200, token=key, body={"text": texts[2]})
    api("post", "/v1/embed/batch", 200, token=key, body={"texts": texts, "encoding_format": "base64"})
    api("post", "/v1/embed", 202, token=key, body={"text": f"a job at once {uuid.uuid4().hex}", "wait": 0})
    api("post", "/v1/embed/batch", 202, token=key, body={"texts": [f"a job at once {uuid.uuid4().hex}"], "wait": 0})

    # rerank, by the embedding model's cosine (the drain loop serves it): documents back or not
    api("post", "/v1/rerank", 200, token=key,
        body={"model": DEFAULT_MODEL, "query": "schema check", "documents": texts, "return_documents": True})
    api("post", "/v2/rerank", 200, token=key,
        body={"model": DEFAULT_MODEL, "query": "schema check", "documents": [{"text": t} for t in texts], "top_n": 1})

    # jobs
    job = api("post", "/v1/jobs", 202, token=key, body={"texts": [*texts, f"job only {uuid.uuid4().hex}"]}).json()
    api("get", "/v1/jobs", 200, token=key, query={"limit": 2})
    assert _job_done(api, job["id"], key)["status"] == "succeeded"
    for query in ({"limit": 2}, {"encoding_format": "base64"}):
        api("get", "/v1/jobs/{job_id}/results", 200, token=key, path={"job_id": job["id"]}, query=query)
    stream = api("get", "/v1/jobs/{job_id}/results", 200, token=key, path={"job_id": job["id"]},
                 query={"format": "jsonl"})
    item = json_schema(published.raw_schema, {"$ref": "#/components/schemas/JobResultItem"}, response=True)
    lines = [json.loads(line) for line in stream.content.splitlines()]
    assert len(lines) == 4
    for line in lines:
        jsonschema.validate(line, item)
    api("post", "/v1/jobs/{job_id}/cancel", 200, token=key, path={"job_id": job["id"]})
    api("get", "/v1/jobs/{job_id}", 404, token=key, path={"job_id": str(uuid.uuid4())})  # the error envelope
    api("get", "/v1/usage", 200, token=key, query={"from": "2020-01-01"})

    # providers (BYOK), against the fake upstream
    provider = api("post", "/v1/providers", 201, token=jwt,
                   body={"name": "up", "preset": "openai", "endpoint": upstream.url(), "api_key": SECRET,
                         "model": "text-embedding-3-small"}).json()
    path = {"provider_id": provider["id"]}
    api("get", "/v1/models", 200, token=key)  # with its byok model
    api("get", "/v1/models/{model_id}", 200, token=key, path={"model_id": "up/text-embedding-3-small"})
    api("get", "/v1/providers", 200, token=jwt)
    api("get", "/v1/providers/{provider_id}", 200, token=jwt, path=path)
    api("patch", "/v1/providers/{provider_id}", 200, token=jwt, path=path, body={"max_inputs": 8})
    assert api("post", "/v1/providers/{provider_id}/test", 200, token=jwt, path=path, body={}).json()["ok"]
    api("delete", "/v1/providers/{provider_id}", 200, token=jwt, path=path)

    api("delete", "/v1/cache", 200, token=jwt, body={"texts": texts[:1]})

    # the Batch API: an upload (multipart, as the OpenAI SDK sends it), a batch run by the drain loop
    # to its output and error files, a cancelled one, pages, a deleted file
    requests = b"".join(json.dumps(line).encode() + b"\n" for line in (
        {"custom_id": "ok", "method": "POST", "url": "/v1/embeddings", "body": {"model": DEFAULT_MODEL, "input": texts}},
        {"custom_id": "bad", "method": "POST", "url": "/v1/embeddings", "body": {"model": DEFAULT_MODEL}},
    ))
    file = api("post", "/v1/files", 200, token=key, body={"file": requests, "purpose": "batch"},
               media_type="multipart/form-data").json()
    api("get", "/v1/files/{file_id}", 200, token=key, path={"file_id": file["id"]})
    api("get", "/v1/files/{file_id}/content", 200, token=key, path={"file_id": file["id"]})
    body = {"input_file_id": file["id"], "endpoint": "/v1/embeddings", "completion_window": "24h"}
    batch = api("post", "/v1/batches", 200, token=key, body={**body, "metadata": {"k": "v"}}).json()
    deadline = time.monotonic() + 60
    while batch["status"] not in ("completed", "failed") and time.monotonic() < deadline:
        time.sleep(0.05)
        batch = api("get", "/v1/batches/{batch_id}", 200, token=key, path={"batch_id": batch["id"]}).json()
    assert batch["status"] == "completed" and batch["usage"] and batch["error_file_id"], batch
    api("get", "/v1/files/{file_id}/content", 200, token=key, path={"file_id": batch["output_file_id"]})
    failed = api("post", "/v1/batches", 200, token=key, body=body | {"input_file_id": api(
        "post", "/v1/files", 200, token=key, body={"file": b"[]\n", "purpose": "batch"},
        media_type="multipart/form-data").json()["id"]}).json()
    assert failed["status"] == "failed" and failed["errors"]["data"], failed
    cancelled = api("post", "/v1/batches", 200, token=key, body={**body}).json()
    api("post", "/v1/batches/{batch_id}/cancel", 200, token=key, path={"batch_id": cancelled["id"]})
    api("get", "/v1/batches", 200, token=key, query={"limit": 2})
    api("get", "/v1/files", 200, token=key, query={"purpose": "batch_output"})
    api("delete", "/v1/files/{file_id}", 200, token=key, path={"file_id": file["id"]})

    missing = api.documented_successes() - api.seen
    assert not missing, f"documented success answers this test never checked: {sorted(missing)}"


@pytest.mark.django_db
def test_a_field_the_definition_lacks_fails_the_check(published, alice, redis_db, monkeypatch):
    """Guards the check above against passing vacuously: an answer with a field added or renamed
    behind its definition's back, from a serializer-built view and from a shape-built one."""
    from embeddings import views

    api = Api(published)
    api("get", "/v1/models", 200, token=alice.key)
    api("get", "/v1/jobs", 200, token=alice.key)

    class Renamed(views.ModelListSerializer):
        class Model(embedding_responses.ModelSerializer):
            dimensions = None
            dims = serializers.IntegerField()

        data = Model(many=True)

    job_list_body = views.job_list_body
    monkeypatch.setattr(views, "ModelListSerializer", Renamed)
    monkeypatch.setattr(views, "job_list_body", lambda *a: {**job_list_body(*a), "extra": 1})
    for path, names in (("/v1/models", {"dims", "dimensions"}), ("/v1/jobs", {"extra"})):
        with pytest.raises(FailureGroup) as failed:
            api("get", path, 200, token=alice.key)
        messages = " ".join(str(e) for e in failed.value.exceptions if isinstance(e, JsonSchemaError))
        assert all(name in messages for name in names), messages


@pytest.mark.django_db
def test_every_documented_example_matches_its_schema(published):
    """The examples are written by hand: each request and response example must still fit its
    body's schema (a response's closed, as above), so an example never shows a field an answer
    does not have."""
    raw = published.raw_schema
    checked = []
    for path, item in raw["paths"].items():
        for method, operation in item.items():
            if not isinstance(operation, dict):
                continue
            bodies = [(media, False) for media in operation.get("requestBody", {}).get("content", {}).values()]
            bodies += [(media, True) for answer in operation["responses"].values()
                       for media in answer.get("content", {}).values()]
            for media, response in bodies:
                schema = json_schema(raw, media["schema"], response=response)
                examples = {name: e["value"] for name, e in media.get("examples", {}).items()}
                if "example" in media:
                    examples["example"] = media["example"]
                for name, value in examples.items():
                    where = f"{method.upper()} {path} example {name!r}"
                    errors = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(value)]
                    assert not errors, f"{where}: {errors}"
                    checked.append(where)
    assert len(checked) > 50, checked


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.__name__)
def test_a_shape_and_its_schema_serializer_have_the_same_fields(shape):
    serializer = shape_serializer(shape)()
    assert list(serializer.fields) == list(get_type_hints(shape))
